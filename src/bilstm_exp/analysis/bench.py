"""`bilstm-exp bench`: cost ratios measured in one process, on one machine, on the same data.

    bilstm-exp bench                 # full run (~15 minutes on 2 CPU cores)
    bilstm-exp bench --quick         # a few minutes, smaller data and grid
    bilstm-exp bench --json out.json --out benchmarks

Writes ``RESULTS.md``, a JSON file and ``grid.png`` to ``--out`` (default ``benchmarks/``):

1. ``tracking_overhead``: steady-state epoch time of the full plugin (TelemetryModel train step,
   EpochProfiler, MLflowLogger in an MLflow run) over bare ``model.fit`` of a plain ``keras.Model``
   with the same initial weights, compile arguments, data and batches. Goal <= 1.03.
2. ``bucketing_speedup``: pad-to-max epoch time over length-bucketed, long-tailed lengths, with the
   test accuracy of both after the same epochs from the same initial weights. Goal >= 2.0, accuracy
   within one point.
3. ``vs_baseline_speedup``: what users write instead (``keras.utils.pad_sequences`` NumPy arrays,
   ``mlflow.keras.autolog()``, ``model.fit(x, y, validation_data=...)``) over the bilstm-exp default
   run (bucketed tf.data, full plugin, the default callbacks), epoch time incl. validation. Goal >= 1.5.
4. ``peak_fraction``: useful GFLOP/s (analytic FLOPs of real tokens only) of the default model's
   steady-state training over the dense float32 matmul peak of this machine. Goal >= 0.5.
5. ``serving_latency_ratio``: p50 latency of the registered pyfunc model on one raw text over the
   bare compiled Keras forward pass (a ``tf.function`` on already-tokenised ids). Goal <= 1.5.
6. ``grid``: training epoch time (per 10,000 samples) over sequence length x batch size for each
   architecture, as a table and a plot.

Fairness on a noisy machine: each comparison alternates its arms (A B, B A, A B, ...) after a
warm-up fit of each (tracing), and reports medians. An "epoch" is one ``fit(epochs=1)`` call timed
from ``on_epoch_begin`` to ``on_train_end``: training, validation and every callback's
``on_epoch_end`` (metric logging) are in; per-``fit`` set-up and autolog's end-of-fit model
logging are out (reported separately). TensorFlow is imported only when the bench runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HELP = "measure tracking overhead, bucketing, baseline speed-up, peak fraction, serving latency, cost grid"
GOALS = {"kernel_speedup": (">=", 2.0), "tracking_overhead": ("<=", 1.03), "bucketing_speedup": (">=", 2.0),
         "vs_baseline_speedup": (">=", 3.0), "peak_fraction": (">=", 0.3), "serving_latency_ratio": ("<=", 1.5)}
KERNEL_SHAPES = ((32, 150), (128, 150), (32, 400))  # (batch, length); the first is kernel_speedup
KEYS = (*GOALS, "grid")
GRID_SAMPLES = 10_000  # the grid reports seconds per epoch of this many samples


@dataclass
class Settings:
    name: str
    overrides: list[str]  # Hydra overrides on top of the default composition
    reps: int  # timed epochs per arm (alternating)
    accuracy_epochs: int  # epochs each bucketing arm trains before its test accuracy
    serving_texts: int
    grid_lengths: list[int]
    grid_batches: list[int]
    grid_steps: int  # timed train steps per grid cell (after one warm-up step)
    grid_overrides: dict[str, list[str]] = field(default_factory=dict)  # per architecture
    warm_up: bool = True  # an untimed first round of each A/B pair (tracing every shape)


ARCHITECTURES = ("basic", "attention", "stacked", "unidirectional")

PROFILES = {
    "full": Settings("full", [], reps=5, accuracy_epochs=5, serving_texts=100,
                     grid_lengths=[64, 128, 256, 512, 1024], grid_batches=[16, 32, 64, 128, 256, 512], grid_steps=1),
    "quick": Settings("quick", ["data.num_samples=1200"], reps=3, accuracy_epochs=3, serving_texts=40,
                      grid_lengths=[64, 256], grid_batches=[32, 128], grid_steps=1),
    # tests only: a tiny model on tiny data; the numbers mean nothing. Keras's kernel outside
    # kernel_speedup: the fast kernel compiles XLA code per batch shape, seconds a smoke need not spend
    "smoke": Settings("smoke", ["data.num_samples=160", "data.median_length=24", "data.max_length=48",
                                "data.num_buckets=3", "training.batch_size=16", "model.embedding_dim=8",
                                "model.lstm_units=8", "model.kernel=keras"],
                      reps=1, accuracy_epochs=2, serving_texts=5, grid_lengths=[16], grid_batches=[8],
                      grid_steps=1,
                      grid_overrides={"basic": ["model.lstm_units=8"], "unidirectional": ["model.lstm_units=8"],
                                      "attention": ["model.lstm_units=8", "model.attention_units=8"],
                                      "stacked": ["model.layer_sizes=[8,4]"],
                                      "_all": ["model.embedding_dim=8", "model.kernel=keras"]},
                      warm_up=False),
}


# --------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _config(overrides: list[str]):
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate

    return validate(compose(["training.verbose=0", "training.early_stopping.enabled=false", *overrides]))


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _epoch_clock():
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Wall and process CPU time from the first epoch's begin to train end (no batch hooks)."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._cpu)

        def last(self) -> tuple[float, float]:
            return self.seconds[-1], self.cpu_seconds[-1]

    return EpochClock()


def _alternate(arms: dict[str, Any], reps: int) -> dict[str, list[float]]:
    """Run each arm's callable ``reps`` times, alternating A B / B A; returns seconds per arm."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(arms[name]())
    return times


def _ratio(numerator: list, denominator: list) -> dict[str, Any]:
    """Ratio of medians (wall time). With (wall, cpu) samples also the process-CPU-time ratio, which
    other processes on a shared machine disturb far less than wall time."""
    wall_n = [x[0] if isinstance(x, tuple) else x for x in numerator]
    wall_d = [x[0] if isinstance(x, tuple) else x for x in denominator]
    num, den = _median(wall_n), _median(wall_d)
    out = {"ratio": num / den, "numerator_median_s": num, "denominator_median_s": den,
           "numerator_s": wall_n, "denominator_s": wall_d,
           "pairwise_median_ratio": _median([a / b for a, b in zip(wall_n, wall_d, strict=False)])}
    if numerator and isinstance(numerator[0], tuple):
        cpu_n, cpu_d = [x[1] for x in numerator], [x[1] for x in denominator]
        out.update({"cpu_ratio": _median(cpu_n) / _median(cpu_d), "numerator_cpu_s": cpu_n,
                    "denominator_cpu_s": cpu_d})
    return out


# --------------------------------------------------------------------------- the measurements


class Bench:
    def __init__(self, settings: Settings, root: Path):
        import keras
        import mlflow

        from bilstm_exp.data import batching
        from bilstm_exp.data.prepare import prepare
        from bilstm_exp.tracking import store
        from bilstm_exp.tracking.callback import MLflowLogger
        from bilstm_exp.tracking.session import Session
        from bilstm_exp.training import profiling
        from bilstm_exp.training import runner as training

        self.keras, self.mlflow = keras, mlflow
        self.batching, self.profiling, self.training = batching, profiling, training
        self.MLflowLogger, self.Session = MLflowLogger, Session
        self.settings = settings
        self.root = root
        self.config = _config(settings.overrides)
        self.experiment_id = store.setup(self.config.tracking, root)
        _log(f"preparing data ({settings.name})")
        self.prepared = prepare(self.config.data, self.config.seed)
        training.configure_tensorflow(self.config)
        self.pipes = training.datasets(self.config, self.prepared)
        self.stats = batching.padding_stats(self.pipes["train"])
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
        """One timed epoch inside an MLflow run (as bilstm-exp trains). Returns (epoch_s, fit_s)."""
        clock = _epoch_clock()
        with self.Session.start(self.experiment_id, run_name="bench-plugin"):
            start = time.perf_counter()
            model.fit(dataset, validation_data=validation, epochs=1, verbose=0, shuffle=False,
                      callbacks=[clock, *callbacks])
            total = time.perf_counter() - start
        return clock, total

    # 1 + 4 -------------------------------------------------------------------------------
    def tracking_overhead(self) -> dict[str, Any]:
        _log("tracking_overhead: full plugin vs bare model.fit")
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
            clock = _epoch_clock()
            bare.fit(train, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
            return clock.last()

        if self.settings.warm_up:
            run_full(), run_bare()  # tracing for every bucket shape
        times = _alternate({"full": run_full, "bare": run_bare}, self.settings.reps)
        out = _ratio(times["full"], times["bare"])
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
        _log("kernel_speedup: keras LSTM vs FastLSTM train step")
        steps = max(3, self.settings.reps * 2)
        shapes = KERNEL_SHAPES if self.settings.name != "smoke" else ((8, 16),)
        out: dict[str, Any] = {"shapes": {}}
        for batch, length in shapes:
            rng = np.random.default_rng(0)
            x = rng.integers(2, len(self.prepared.vocab), size=(batch, length)).astype("int32")
            y = rng.integers(0, 2, size=(batch,)).astype("float32")
            arms = {}
            for kernel in ("keras", "fast"):
                config = _config([*self.settings.overrides, f"model.kernel={kernel}"])
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

            times = _alternate({kernel: step(model) for kernel, model in arms.items()}, steps)
            cell = _ratio(times["keras"], times["fast"])
            cell["first_step_s"] = compile_s
            out["shapes"][f"B{batch}xT{length}"] = cell
        first = out["shapes"][next(iter(out["shapes"]))]
        out.update({"ratio": first["ratio"], "cpu_ratio": first.get("cpu_ratio"),
                    "keras_step_ms": 1000 * first["numerator_median_s"],
                    "fast_step_ms": 1000 * first["denominator_median_s"]})
        return out

    # 2 -----------------------------------------------------------------------------------
    def bucketing_speedup(self) -> dict[str, Any]:
        _log("bucketing_speedup: pad-to-max vs bucketed, same initial weights")
        max_config = _config([*self.settings.overrides, "data.padding=max"])
        max_pipes = self.training.datasets(max_config, self.prepared)
        max_stats = self.batching.padding_stats(max_pipes["train"])
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
        times = _alternate({"max": arm(max_model, max_pipes, max_stats),
                            "bucket": arm(bucket_model, self.pipes, self.stats)}, epochs)
        out = _ratio(times["max"][1:], times["bucket"][1:])
        acc = {}
        for name, model, pipes in (("max", max_model, max_pipes), ("bucket", bucket_model, self.pipes)):
            acc[name] = float(model.evaluate(pipes["test"], verbose=0, return_dict=True)["accuracy"])
        out.update({"epochs_trained": epochs, "test_accuracy_max": acc["max"], "test_accuracy_bucket": acc["bucket"],
                    "accuracy_gap_points": 100 * abs(acc["max"] - acc["bucket"]),
                    "padding_fraction_max": max_stats.fraction, "padding_fraction_bucket": self.stats.fraction,
                    "bucket_boundaries": self.batching.bucket_boundaries(
                        np.array([len(s) for s in self.prepared.splits["train"]]), self.config.data.num_buckets)})
        return out

    # 3 -----------------------------------------------------------------------------------
    def vs_baseline_speedup(self) -> dict[str, Any]:
        _log("vs_baseline_speedup: pad_sequences + mlflow.keras.autolog() vs bilstm-exp default")
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
            clock = _epoch_clock()
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
        times = _alternate({"baseline": run_baseline, "ours": run_ours}, self.settings.reps)
        out = _ratio(times["baseline"], times["ours"])
        out["per_fit_outside_epoch_median_s"] = {k: _median(v) for k, v in setup_s.items()}
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
        _log("serving_latency_ratio: registered pyfunc vs bare compiled forward pass")
        import mlflow.pyfunc
        import pandas as pd
        import tensorflow as tf
        from mlflow.tracking import MlflowClient

        from bilstm_exp.serving.model import pad_right

        config = _config([*self.settings.overrides, "training.epochs=1", "profiling.latency_samples=0",
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
        out = _ratio(served, bare)
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
            config = _config([f"model={arch}", *extra])
            model = self.training.compile_model(config, self.prepared, 100)
            peak = self.profiling.matmul_peak_gflops()
            _log(f"grid: {arch}")
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
                    step_s = _median(steps)
                    flops = self.profiling.train_flops_per_token(config.model, 2, length)
                    gflops = flops * batch * length / step_s / 1e9
                    cells.append({"architecture": arch, "seq_length": length, "batch_size": batch,
                                  "step_ms": 1000 * step_s, "tokens_per_s": batch * length / step_s,
                                  "epoch_s_per_10k": step_s * math.ceil(GRID_SAMPLES / batch),
                                  "gflops": gflops, "peak_fraction": gflops / peak})
            keras.backend.clear_session()
        return {"samples_per_epoch": GRID_SAMPLES, "cells": cells}


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    from bilstm_exp.training.profiling import machine as tf_machine

    info = tf_machine()
    info.pop("host", None)
    info.update({"python": platform.python_version(), "keras": version("keras"), "mlflow": version("mlflow"),
                 "platform": platform.platform()})
    return info


def verdict(key: str, value: float) -> str:
    op, goal = GOALS[key]
    met = value <= goal if op == "<=" else value >= goal
    if met:
        return "met"
    miss = (value / goal - 1) if op == "<=" else (1 - value / goal)
    return f"missed by {100 * miss:.0f}%"


def plot_grid(grid: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = grid["cells"]
    archs = [a for a in ARCHITECTURES if any(c["architecture"] == a for c in cells)]
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.8), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        mine = [c for c in cells if c["architecture"] == arch]
        for batch in sorted({c["batch_size"] for c in mine}):
            row = sorted((c for c in mine if c["batch_size"] == batch), key=lambda c: c["seq_length"])
            ax.plot([c["seq_length"] for c in row], [c["epoch_s_per_10k"] for c in row], marker="o",
                    label=f"batch {batch}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(arch)
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"training epoch seconds per {grid['samples_per_epoch']:,} samples")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid_tables(grid: dict[str, Any]) -> list[str]:
    lines = []
    cells = grid["cells"]
    for arch in ARCHITECTURES:
        mine = [c for c in cells if c["architecture"] == arch]
        if not mine:
            continue
        batches = sorted({c["batch_size"] for c in mine})
        lines += [f"**{arch}** (seconds per epoch of {grid['samples_per_epoch']:,} samples; "
                  "k tokens/s in brackets)", "",
                  "| length \\ batch | " + " | ".join(str(b) for b in batches) + " |",
                  "|---" * (len(batches) + 1) + "|"]
        for length in sorted({c["seq_length"] for c in mine}):
            row = {c["batch_size"]: c for c in mine if c["seq_length"] == length}
            lines.append(f"| {length} | " + " | ".join(
                f"{row[b]['epoch_s_per_10k']:.1f} ({row[b]['tokens_per_s'] / 1000:.0f})" for b in batches) + " |")
        lines.append("")
    return lines


def render(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    r = results
    lines = [
        "# bilstm-exp benchmark results", "",
        f"Generated by `bilstm-exp bench{' --' + s['name'] if s['name'] != 'full' else ''}` on "
        f"{results['date']}, in one process (total {results['total_s'] / 60:.1f} min).", "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"MLflow {m['mlflow']}, Python {m['python']} ({m['platform']}).", "",
        f"Configuration: the default composition{' with `' + ' '.join(s['overrides']) + '`' if s['overrides'] else ''}"
        f": {results['config']}. Each comparison alternates its arms ({s['reps']} timed epochs each after a "
        "warm-up) and reports medians.", "",
        "| measure | value | goal | verdict |", "|---|---|---|---|",
    ]
    for key, (op, goal) in GOALS.items():
        value = r[key]["ratio"]
        lines.append(f"| `{key}` | {value:.3f} | {op} {goal} | {verdict(key, value)} |")
    b, v, p, sv, t, k = (r["bucketing_speedup"], r["vs_baseline_speedup"], r["peak_fraction"],
                         r["serving_latency_ratio"], r["tracking_overhead"], r["kernel_speedup"])
    kernel_cells = "; ".join(f"{shape}: {c['ratio']:.2f} (CPU time {c.get('cpu_ratio', float('nan')):.2f}; first "
                             f"step {c['first_step_s']['keras']:.1f} s keras, {c['first_step_s']['fast']:.1f} s fast)"
                             for shape, c in k["shapes"].items())
    lines += [
        "", "## Details", "",
        f"- **kernel_speedup**: one train step of the default model with `model.kernel=keras` "
        f"({k['keras_step_ms']:.1f} ms) over `model.kernel=fast` ({k['fast_step_ms']:.1f} ms), same weights, "
        f"full-length random batches, median of alternating steps. Per shape (batch x length): {kernel_cells}.",
        f"- **tracking_overhead**: full plugin {t['numerator_median_s']:.3f} s/epoch vs bare `model.fit` "
        f"{t['denominator_median_s']:.3f} s/epoch (training only); median of per-pair ratios "
        f"{t['pairwise_median_ratio']:.3f}; process CPU time ratio {t['cpu_ratio']:.3f}. Samples (wall s): full "
        f"{_fmt(t['numerator_s'])}; bare {_fmt(t['denominator_s'])}.",
        f"- **bucketing_speedup**: pad-to-max {b['numerator_median_s']:.3f} s/epoch vs bucketed "
        f"{b['denominator_median_s']:.3f} s/epoch (CPU time ratio {b['cpu_ratio']:.3f}); padding fraction "
        f"{b['padding_fraction_max']:.3f} vs "
        f"{b['padding_fraction_bucket']:.3f} (boundaries {b['bucket_boundaries']}); test accuracy after "
        f"{b['epochs_trained']} epochs from the same initial weights: {b['test_accuracy_max']:.3f} (max) vs "
        f"{b['test_accuracy_bucket']:.3f} (bucket), a gap of {b['accuracy_gap_points']:.1f} points.",
        f"- **vs_baseline_speedup**: baseline {v['numerator_median_s']:.3f} s/epoch vs bilstm-exp default "
        f"{v['denominator_median_s']:.3f} s/epoch (training + validation + logging; CPU time ratio "
        f"{v['cpu_ratio']:.3f}); padding fraction "
        f"{v['padding_fraction_baseline']:.3f} vs {v['padding_fraction_ours']:.3f}. Per `fit` outside the "
        f"epoch: baseline {v['per_fit_outside_epoch_median_s']['baseline']:.2f} s (autolog: params, datasets, "
        f"model summary, model logged at fit end), bilstm-exp {v['per_fit_outside_epoch_median_s']['ours']:.2f} s.",
        f"  - baseline logged: {_fmt_logged(v['logged']['baseline'])}",
        f"  - bilstm-exp epoch loop logged: {_fmt_logged(v['logged']['ours'])}",
        f"  - a whole bilstm-exp run (`training.run`) logged: {_fmt_logged(sv['logged_by_bilstm_exp_run'])}",
        f"- **peak_fraction**: {p['achieved_gflops']:.1f} useful GFLOP/s ({p['real_tokens_per_s']:,.0f} real "
        f"tokens/s x {p['train_flops_per_token']:,.0f} training FLOPs per token) over a dense float32 matmul "
        f"peak of {p['matmul_peak_gflops']:.1f} GFLOP/s on {p.get('matmul_threads', '?')} threads (all cores, "
        f"measured at a quiet moment: `profiling.matmul_peak_gflops`). Best grid cell: {_best_cell(r['grid'])}.",
        f"- **serving_latency_ratio**: registered pyfunc p50 {sv['served_p50_ms']:.2f} ms on one raw text vs "
        f"bare `tf.function` forward pass p50 {sv['bare_p50_ms']:.2f} ms on its token ids.", "",
        "## Epoch time over sequence length and batch size", "",
        "Training steps (`train_on_batch`, the TelemetryModel step) on uniform-length random token ids, "
        "default sizes per architecture; one warm-up step per cell. Plot: `grid.png`.", "",
        *_grid_tables(r["grid"]),
    ]
    load = results.get("load_average_1min") or {}
    lines += ["## Machine load", "",
              f"1-minute load average at the start of each section ({m['cores']} cores; above the core count "
              "means other processes competed for the CPU and wall-time ratios are noisy; the process CPU "
              "time ratios are the steadier view): " + ", ".join(f"{k} {v}" for k, v in load.items()), ""]
    return "\n".join(lines)


def _best_cell(grid: dict[str, Any]) -> str:
    best = max(grid["cells"], key=lambda c: c["peak_fraction"])
    return (f"{best['architecture']}, length {best['seq_length']}, batch {best['batch_size']}: "
            f"{best['gflops']:.1f} GFLOP/s, peak fraction {best['peak_fraction']:.3f}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _fmt_logged(logged: dict[str, Any]) -> str:
    return (f"{logged['params']} params, {len(logged['metrics'])} metrics, artifacts "
            f"{', '.join(logged['artifacts']) or 'none'}, {logged['logged_models']} logged model(s)")


# --------------------------------------------------------------------------- entry


def run(settings: Settings, out_dir: Path, json_path: Path | None = None) -> dict[str, Any]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_uri = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    with tempfile.TemporaryDirectory(prefix="bilstm-exp-bench-") as tmp:
        bench = Bench(settings, Path(tmp))
        results: dict[str, Any] = {"machine": machine(), "settings": asdict(settings),
                                   "date": time.strftime("%Y-%m-%d %H:%M %Z")}
        load = results["load_average_1min"] = {}
        for key in ("kernel_speedup", "tracking_overhead", "peak_fraction", "bucketing_speedup",
                    "vs_baseline_speedup", "serving_latency_ratio", "grid"):
            load[key] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
            results[key] = getattr(bench, key)()
        results["config"] = bench.describe()
        mlflow.set_tracking_uri(previous_uri)
    results["total_s"] = time.perf_counter() - start
    results["summary"] = {key: {"value": results[key]["ratio"], "goal": f"{GOALS[key][0]} {GOALS[key][1]}",
                                "verdict": verdict(key, results[key]["ratio"])} for key in GOALS}
    json_path = json_path or out_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str))
    plot_grid(results["grid"], out_dir / "grid.png")
    (out_dir / "RESULTS.md").write_text(render(results))
    _log(f"wrote {out_dir / 'RESULTS.md'}, {json_path}, {out_dir / 'grid.png'}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes: less data, a smaller grid")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny, meaningless numbers
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default OUT/results.json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"),
                        help="folder for RESULTS.md, results.json and grid.png (default: benchmarks)")


def command(args: argparse.Namespace) -> None:
    settings = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    results = run(settings, args.out, args.json)
    for key, item in results["summary"].items():
        print(f"{key}\t{item['value']:.3f}\t{item['goal']}\t{item['verdict']}")
