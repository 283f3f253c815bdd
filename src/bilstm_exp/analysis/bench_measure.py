"""The bench's measurements: each method of :class:`Bench` times one comparison on the same data.

``kernel_speedup`` (Keras LSTM vs FastLSTM train step), ``tracking_overhead`` (the full plugin vs bare
``model.fit``), ``peak_fraction`` (useful GFLOP/s over the matmul peak), ``bucketing_speedup`` (pad-to-max vs
bucketed), ``vs_baseline_speedup`` (what users write instead vs the default run), ``serving_latency_ratio``
(the registered pyfunc vs the bare forward pass) and ``grid`` (epoch time over length x batch size). Each
returns a dict with its ``ratio`` and the samples behind it. Imports TensorFlow when a Bench is made.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from bilstm_exp.analysis.bench_setup import (
    ARCHITECTURES,
    GRID_SAMPLES,
    KERNEL_SHAPES,
    Settings,
    alternate,
    compose_config,
    epoch_clock,
    log,
    median,
    ratio,
)


class Bench:
    """One prepared data set, its pipelines and a throw-away MLflow store, shared by every measurement
    (same data, same machine, one process)."""

    def __init__(self, settings: Settings, root: Path):
        import keras
        import mlflow

        from bilstm_exp.data import batching
        from bilstm_exp.data.prepare import prepare
        from bilstm_exp.tracking import store, system_metrics
        from bilstm_exp.tracking.callback import MLflowLogger
        from bilstm_exp.tracking.session import Session
        from bilstm_exp.training import profiling
        from bilstm_exp.training import runner as training

        self.keras, self.mlflow = keras, mlflow
        self.batching, self.profiling, self.training = batching, profiling, training
        self.MLflowLogger, self.Session, self.system_metrics = MLflowLogger, Session, system_metrics
        self.settings = settings
        self.root = root
        self.config = compose_config(settings.overrides)
        self.experiment_id = store.setup(self.config.tracking, root)
        log(f"preparing data ({settings.name})")
        self.prepared = prepare(self.config.data, self.config.seed)
        training.configure_tensorflow(self.config)
        self.pipes = training.datasets(self.config, self.prepared)
        self.stats = training.train_padding(self.config, self.prepared, self.pipes)
        self.samples = len(self.prepared.labels["train"])

    def describe(self) -> str:
        c, p = self.config, self.prepared
        lengths = [len(x) for x in p.splits["train"]]
        return (f"data={c.data.name} ({len(p.labels['train'])} training texts, median {np.median(lengths):.0f} "
                f"tokens, max {max(lengths)}, max_length {c.data.max_length}, {c.data.num_buckets} buckets), "
                f"model={c.model.name} (embedding {c.model.embedding_dim}, "
                f"{getattr(c.model, 'lstm_units', '?')} units per direction), batch size {c.training.batch_size}, "
                f"steps_per_execution {c.training.steps_per_execution}")

    def _plugin_model(self, config=None, steps=None):
        config = config or self.config
        return self.training.compile_model(config, self.prepared, steps or self.stats.batches)

    def _plugin_fit(self, model, dataset, callbacks, validation=None):
        """One timed epoch inside an MLflow run (as bilstm-exp trains: MLflow's system metrics sampled as
        ``tracking.system_metrics`` says, on by default). Returns (epoch_s, fit_s)."""
        clock = epoch_clock()
        tracking = self.config.tracking
        with self.system_metrics.sampling(tracking.system_metrics, tracking.system_metrics_interval_s), \
                self.Session.start(self.experiment_id, run_name="bench-plugin"):
            start = time.perf_counter()
            model.fit(dataset, validation_data=validation, epochs=1, verbose=0, shuffle=False,
                      callbacks=[clock, *callbacks])
            total = time.perf_counter() - start
        return clock, total

    # 1 + 4 -------------------------------------------------------------------------------
    def tracking_overhead(self) -> dict[str, Any]:
        log("tracking_overhead: full plugin vs bare model.fit")
        from bilstm_exp.models import build as models

        profiling = self.profiling
        full = self._plugin_model()
        bare = models.inference_model(self._plugin_model())
        bare.set_weights(full.get_weights())
        self.training.compile_model(self.config, self.prepared, self.stats.batches, model=bare)
        train = self.pipes["train"]

        def run_full():
            callbacks = [profiling.EpochProfiler(self.samples, self.stats.real_tokens), self.MLflowLogger()]
            return self._plugin_fit(full, train, callbacks)[0].last()

        def run_bare():
            clock = epoch_clock()
            bare.fit(train, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
            return clock.last()

        if self.settings.warm_up:
            run_full(), run_bare()  # tracing for every bucket shape
        times = alternate({"full": run_full, "bare": run_bare}, self.settings.reps)
        out = ratio(times["full"], times["bare"])
        self._steady_full_s = out["numerator_median_s"]
        return out

    def peak_fraction(self) -> dict[str, Any]:
        lengths = [len(s) for s in self.prepared.splits["train"]]
        flops = self.profiling.train_flops_per_token(self.config.model, self.prepared.num_classes,
                                                     float(np.mean(lengths)))
        tokens_per_s = self.stats.real_tokens / self._steady_full_s
        achieved = flops * tokens_per_s / 1e9
        peak = self.profiling.matmul_peak_gflops()
        return {"ratio": achieved / peak, "achieved_gflops": achieved, "matmul_peak_gflops": peak,
                "matmul_threads": self.profiling.matmul_threads(),
                "train_flops_per_token": flops, "real_tokens_per_s": tokens_per_s,
                "padding_fraction": self.stats.fraction}

    # 0 -----------------------------------------------------------------------------------
    def kernel_speedup(self) -> dict[str, Any]:
        """Train-step time of model.kernel=keras over model.kernel=fast (FastLSTM and the XLA optimizer
        step), the default model with the same initial weights, on full-length random batches."""
        log("kernel_speedup: keras LSTM vs FastLSTM train step")
        steps = max(3, self.settings.reps * 2)
        shapes = KERNEL_SHAPES if self.settings.name != "smoke" else ((8, 16),)
        out: dict[str, Any] = {"shapes": {}}
        for batch, length in shapes:
            rng = np.random.default_rng(0)
            x = rng.integers(2, len(self.prepared.vocab), size=(batch, length)).astype("int32")
            y = rng.integers(0, 2, size=(batch,)).astype("float32")
            arms = {}
            for kernel in ("keras", "fast"):
                config = compose_config([*self.settings.overrides, f"model.kernel={kernel}"])
                arms[kernel] = self.training.compile_model(config, self.prepared, 100)
            arms["fast"].set_weights(arms["keras"].get_weights())
            compile_s = {}
            for kernel, model in arms.items():  # the first step traces and compiles: timed apart
                start = time.perf_counter()
                model.train_on_batch(x, y)
                compile_s[kernel] = time.perf_counter() - start

            def step(model, x=x, y=y):
                def timed():
                    wall, cpu = time.perf_counter(), time.process_time()
                    model.train_on_batch(x, y)
                    return time.perf_counter() - wall, time.process_time() - cpu
                return timed

            times = alternate({kernel: step(model) for kernel, model in arms.items()}, steps)
            cell = ratio(times["keras"], times["fast"])
            cell["first_step_s"] = compile_s
            out["shapes"][f"B{batch}xT{length}"] = cell
        first = out["shapes"][next(iter(out["shapes"]))]
        out.update({"ratio": first["ratio"], "cpu_ratio": first.get("cpu_ratio"),
                    "keras_step_ms": 1000 * first["numerator_median_s"],
                    "fast_step_ms": 1000 * first["denominator_median_s"]})
        return out

    # 2 -----------------------------------------------------------------------------------
    def bucketing_speedup(self) -> dict[str, Any]:
        log("bucketing_speedup: pad-to-max vs bucketed, same initial weights")
        max_config = compose_config([*self.settings.overrides, "data.padding=max"])
        max_pipes = self.training.datasets(max_config, self.prepared)
        max_stats = self.training.train_padding(max_config, self.prepared, max_pipes)
        bucket_model = self._plugin_model()
        max_model = self._plugin_model(max_config, max_stats.batches)
        max_model.set_weights(bucket_model.get_weights())

        def arm(model, pipes, stats):
            def fit():
                callbacks = [self.profiling.EpochProfiler(self.samples, stats.real_tokens),
                             self.MLflowLogger()]
                return self._plugin_fit(model, pipes["train"], callbacks)[0].last()
            return fit

        epochs = max(2, self.settings.accuracy_epochs)
        # the first epoch of each traces (every bucket shape): not timed
        times = alternate({"max": arm(max_model, max_pipes, max_stats),
                            "bucket": arm(bucket_model, self.pipes, self.stats)}, epochs)
        out = ratio(times["max"][1:], times["bucket"][1:])
        acc = {}
        for name, model, pipes in (("max", max_model, max_pipes), ("bucket", bucket_model, self.pipes)):
            acc[name] = float(model.evaluate(pipes["test"], verbose=0, return_dict=True)["accuracy"])
        out.update({"epochs_trained": epochs, "test_accuracy_max": acc["max"], "test_accuracy_bucket": acc["bucket"],
                    "accuracy_gap_points": 100 * abs(acc["max"] - acc["bucket"]),
                    "padding_fraction_max": max_stats.fraction, "padding_fraction_bucket": self.stats.fraction,
                    "bucket_boundaries": self.training.buckets(self.config, self.prepared)["boundaries"]})
        return out

    # 3 -----------------------------------------------------------------------------------
    def vs_baseline_speedup(self) -> dict[str, Any]:
        log("vs_baseline_speedup: pad_sequences + mlflow.keras.autolog() vs bilstm-exp default")
        keras, mlflow = self.keras, self.mlflow
        cfg, prepared = self.config, self.prepared
        ours = self._plugin_model()
        ours_profiler = self.profiling.EpochProfiler(self.samples, self.stats.real_tokens)

        # what users write instead: left-padded NumPy arrays, the same layers, autolog
        x = keras.utils.pad_sequences(prepared.splits["train"], maxlen=cfg.data.max_length)
        x_val = keras.utils.pad_sequences(prepared.splits["val"], maxlen=cfg.data.max_length)
        y, y_val = prepared.labels["train"], prepared.labels["val"]
        baseline = self._baseline_model(x.shape[1])
        baseline.set_weights(ours.get_weights())
        baseline.compile(optimizer=keras.optimizers.Adam(cfg.optimizer.learning_rate), loss="binary_crossentropy",
                         metrics=["accuracy"])
        setup_s: dict[str, list[float]] = {"ours": [], "baseline": []}
        run_ids: dict[str, str] = {}

        def run_ours():
            # the default run's callbacks for model=basic (EarlyStopping, off here, costs nothing per step)
            callbacks = [keras.callbacks.TerminateOnNaN(), ours_profiler, self.MLflowLogger()]
            clock, total = self._plugin_fit(ours, self.pipes["train"], callbacks, self.pipes["val"])
            run_ids["ours"] = mlflow.last_active_run().info.run_id
            setup_s["ours"].append(total - clock.seconds[-1])
            return clock.last()

        def run_baseline():
            clock = epoch_clock()
            mlflow.set_experiment(experiment_id=self.experiment_id)
            mlflow.keras.autolog(silent=True)  # defaults: metrics, params, datasets, the model at fit end
            try:
                start = time.perf_counter()
                baseline.fit(x, y, batch_size=cfg.training.batch_size, epochs=1, validation_data=(x_val, y_val),
                             verbose=0, callbacks=[clock])
                total = time.perf_counter() - start
            finally:
                mlflow.keras.autolog(disable=True)
            run_ids["baseline"] = mlflow.last_active_run().info.run_id
            setup_s["baseline"].append(total - clock.seconds[-1])
            return clock.last()

        if self.settings.warm_up:
            run_ours(), run_baseline()  # tracing; the baseline's autolog infers its requirements (a subprocess)
        times = alternate({"baseline": run_baseline, "ours": run_ours}, self.settings.reps)
        out = ratio(times["baseline"], times["ours"])
        out["per_fit_outside_epoch_median_s"] = {k: median(v) for k, v in setup_s.items()}
        out["logged"] = {name: self._logged(run_id) for name, run_id in run_ids.items()}
        out["padding_fraction_baseline"] = float(np.mean(x == 0))
        out["padding_fraction_ours"] = self.stats.fraction
        return out

    def _baseline_model(self, length: int):
        keras = self.keras
        cfg = self.config.model
        return keras.Sequential([
            keras.Input(shape=(length,), dtype="int32"),
            keras.layers.Embedding(len(self.prepared.vocab), cfg.embedding_dim, mask_zero=True),
            keras.layers.Bidirectional(keras.layers.LSTM(cfg.lstm_units)),
            keras.layers.Dense(1, activation="sigmoid"),
        ])

    def _logged(self, run_id: str) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        run = client.get_run(run_id)
        artifacts = [a.path for a in client.list_artifacts(run_id)]
        models = client.search_logged_models(experiment_ids=[self.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'")
        return {"params": len(run.data.params), "metrics": sorted(run.data.metrics), "artifacts": artifacts,
                "logged_models": len(models)}

    # 5 -----------------------------------------------------------------------------------
    def serving_latency_ratio(self) -> dict[str, Any]:
        log("serving_latency_ratio: registered pyfunc vs bare compiled forward pass")
        import mlflow.pyfunc
        import pandas as pd
        import tensorflow as tf
        from mlflow.tracking import MlflowClient

        from bilstm_exp.serving.model import pad_right

        config = compose_config([*self.settings.overrides, "training.epochs=1", "profiling.latency_samples=0",
                          "tracking.registered_model_name=bench-serving"])
        result = self.training.run(config, root=self.root, prepared=self.prepared)
        version = max(int(v.version) for v in MlflowClient().search_model_versions("name='bench-serving'"))
        pyfunc = mlflow.pyfunc.load_model(f"models:/bench-serving/{version}")
        keras_model = pyfunc.unwrap_python_model().model
        vocab, meta = self.prepared.vocab, self.prepared
        forward = tf.function(lambda ids: keras_model(ids, training=False), reduce_retracing=True)
        texts = (self.prepared.texts["test"] * 10)[: self.settings.serving_texts]
        ids = [pad_right([vocab.encode(t, meta.max_length, meta.truncating)]) for t in texts]
        for text, tokens in list(zip(texts, ids, strict=True))[:5]:  # warm-up (and settle tf.function retracing)
            pyfunc.predict(pd.DataFrame({"text": [text]}))
            forward(tokens).numpy()
        times: dict[str, list[float]] = {"served": [], "bare": []}
        for i, (text, tokens) in enumerate(zip(texts, ids, strict=True)):
            calls = {"served": (pyfunc.predict, pd.DataFrame({"text": [text]})), "bare": (forward, tokens)}
            for name in ("served", "bare") if i % 2 == 0 else ("bare", "served"):
                fn, arg = calls[name]
                start = time.perf_counter()
                result_ = fn(arg)
                if name == "bare":
                    result_.numpy()
                times[name].append(time.perf_counter() - start)
        served, bare = times["served"], times["bare"]
        out = ratio(served, bare)
        out.update({"served_p50_ms": 1000 * out["numerator_median_s"],
                    "bare_p50_ms": 1000 * out["denominator_median_s"],
                    "model_uri": f"models:/bench-serving/{version}", "run_id": result.run_id})
        out["logged_by_bilstm_exp_run"] = self._logged(result.run_id)
        del out["numerator_s"], out["denominator_s"]
        return out

    # 6 -----------------------------------------------------------------------------------
    def grid(self) -> dict[str, Any]:
        import keras

        s = self.settings
        rng = np.random.default_rng(0)
        vocab = len(self.prepared.vocab)
        cells = []
        for arch in ARCHITECTURES:
            extra = [*s.grid_overrides.get("_all", []), *s.grid_overrides.get(arch, [])]
            config = compose_config([f"model={arch}", *extra])
            model = self.training.compile_model(config, self.prepared, 100)
            peak = self.profiling.matmul_peak_gflops()
            log(f"grid: {arch}")
            for length in s.grid_lengths:
                for batch in s.grid_batches:
                    x = rng.integers(2, vocab, size=(batch, length), dtype=np.int32)
                    y = rng.integers(0, 2, size=(batch,)).astype(np.int32)
                    model.train_on_batch(x, y)  # warm-up (tracing for a new shape)
                    steps = []
                    for _ in range(s.grid_steps):
                        start = time.perf_counter()
                        model.train_on_batch(x, y)
                        steps.append(time.perf_counter() - start)
                    step_s = median(steps)
                    flops = self.profiling.train_flops_per_token(config.model, 2, length)
                    gflops = flops * batch * length / step_s / 1e9
                    cells.append({"architecture": arch, "seq_length": length, "batch_size": batch,
                                  "step_ms": 1000 * step_s, "tokens_per_s": batch * length / step_s,
                                  "epoch_s_per_10k": step_s * math.ceil(GRID_SAMPLES / batch),
                                  "gflops": gflops, "peak_fraction": gflops / peak})
            keras.backend.clear_session()
        return {"samples_per_epoch": GRID_SAMPLES, "cells": cells}
