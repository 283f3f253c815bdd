"""One experiment run: data -> model -> fit -> evaluate -> record, as one MLflow run.

This is the only module that knows both the model and the tracking side; it wires ``data``,
``models``, ``optim``, ``profiling``, ``evaluation``, ``recording`` and ``tracking`` together.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bilstm_exp.analysis import reports
from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.data import batching
from bilstm_exp.data.prepare import PreparedData, check, prepare
from bilstm_exp.data.vocabulary import PAD_ID
from bilstm_exp.errors import ConfigError
from bilstm_exp.models import build as models
from bilstm_exp.models import embeddings, optim, reuse, xla_cache
from bilstm_exp.models.fast_lstm import pad_batches
from bilstm_exp.serving import model as serving
from bilstm_exp.tracking import store, system_metrics
from bilstm_exp.tracking.callback import MLflowLogger
from bilstm_exp.tracking.session import Session
from bilstm_exp.training import checkpoints, distribute, profiling, progress, recording, summary
from bilstm_exp.training.evaluation import Evaluation, evaluate, lengths_of


@dataclass
class RunResult:
    run_id: str
    metrics: dict[str, float]  # the final (non-per-epoch) metrics logged to MLflow
    history: dict[str, list[float]]  # Keras History: per-epoch logs, incl. profiling keys
    model_uri: str | None  # the logged pyfunc model
    classifier: serving.TextClassifier | None  # the trained model, raw text in (None: a multi_worker non-chief)
    prepared: PreparedData
    kept_offline: tuple[str, str] | None = None  # (URI, run id) of the offline store, if the server went down
    evaluation: Evaluation | None = None  # the test split's predictions (a CV's per-class and per-length accuracy)


def configure_tensorflow(config: ExperimentConfig) -> None:
    distribute.strategy(config)  # training.strategy: MultiWorkerMirroredStrategy must come before any TF op
    xla_cache.enable()  # compiled XLA programs kept across processes (models/xla_cache.py); its probe is a TF op
    set_random_seed(config.seed)
    if config.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.training.mixed_precision else "float32")


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)`` (Python, NumPy, Keras and TensorFlow), less one side effect when
    TensorFlow already has ``seed``, as every later fold and sweep job of a process does: TensorFlow's
    ``set_seed`` also clears its eager caches, every function it has instantiated included, and a kept
    model's next fold (models/reuse.py) then paid 0.3 s to instantiate its train step again. TensorFlow's
    part is then done as ``set_seed`` does it in eager mode (the generator of the seeds of ops that take
    none, restarted from ``seed``) without the clearing: this project's random ops hold no state in a kernel
    to reset (Keras's are stateless, seeded by its seed generators; tf.data's take their own seeds)."""
    from tensorflow.python.eager import context

    eager = context.context()
    if not (context.executing_eagerly() and getattr(eager, "_seed", None) == seed and hasattr(eager, "_rng")):
        keras.utils.set_random_seed(seed)
        return
    set_seed = tf.random.set_seed
    tf.random.set_seed = lambda value: setattr(eager, "_rng", random.Random(value))
    try:
        keras.utils.set_random_seed(seed)
    finally:
        tf.random.set_seed = set_seed


def datasets(config: ExperimentConfig, prepared: PreparedData) -> dict[str, tf.data.Dataset]:
    """Train (shuffled), val and test pipelines, bucketed alike (:func:`buckets`)."""
    cfg, bounds = config.data, buckets(config, prepared)
    return distribute.shard(config, {  # multi_worker: this worker's batches, as many as every other worker's
        name: batching.make_dataset(prepared.splits[name], prepared.labels[name], distribute.replica_batch_size(config),
                                    padding=cfg.padding, max_length=cfg.max_length, **bounds,
                                    shuffle=name == "train", seed=config.seed)
        for name in ("train", "val", "test")
    })


def buckets(config: ExperimentConfig, prepared: PreparedData) -> dict[str, Any]:
    """data.padding=bucket: ``boundaries`` at quantiles of the lengths of all the run's texts (train, val and
    test) and the ``longest`` of them, which closes the last bucket. Every split then pads to the same widths,
    and so does every fold of a cross-validation (a fold's three splits are all the fold set's texts): one
    compiled loop per width serves them all, where each split's or fold's own quantiles would differ by a
    token or two and compile again. Lengths alone, no labels: a width only changes padding, which the model masks."""
    if config.data.padding != "bucket":
        return {"boundaries": None, "longest": None}
    lengths = lengths_of(prepared)
    return {"boundaries": batching.bucket_boundaries(lengths, config.data.num_buckets),
            "longest": int(lengths.max()) if len(lengths) else None}


def train_padding(config: ExperimentConfig, prepared: PreparedData, pipelines: dict) -> batching.PaddingStats:
    """The training pipeline's padding and batches per epoch, from the lengths (no pass over the data);
    multi_worker: counted in this worker's shard."""
    if distribute.cluster(config) is not None:
        return batching.padding_stats(pipelines["train"])
    return batching.planned_padding(lengths_of(prepared, "train"), config.training.batch_size,
                                    padding=config.data.padding, max_length=config.data.max_length,
                                    **buckets(config, prepared))


def compile_model(config: ExperimentConfig, prepared: PreparedData, steps_per_epoch: int,
                  model: keras.Model | None = None, vectors: embeddings.Vectors | None = None) -> keras.Model:
    """Compile ``model`` (default: the configured architecture, freshly built, its embedding started from
    ``vectors`` or else from model.pretrained_embeddings) with the configured optimizer, loss and metrics:
    binary cross-entropy with accuracy and AUC for two classes, sparse categorical cross-entropy with
    accuracy for more (either with training.label_smoothing: models.build.loss)."""
    if model is None:
        vectors = vectors or embeddings.for_run(config.model, prepared, seed=config.seed)
        rows = max(prepared.embedding_rows or 0, len(prepared.vocab))  # a fold's: its fold set's largest vocabulary
        model = models.build(config.model, rows, prepared.num_classes,
                             embedding_matrix=embeddings.with_rows(vectors.matrix, rows))
    optimizer = optim.build(config.optimizer, config.clipping, steps_per_epoch, config.training.epochs)
    if prepared.num_classes == 2:
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    loss = models.loss(prepared.num_classes, config.training.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                  steps_per_execution=distribute.steps_per_execution(config))
    if not distribute.active(config):  # built here, not in fit's first trace (TensorFlow traces a function that
        model.optimizer.build(model.trainable_variables)  # creates variables twice); a strategy's fit builds it
    fast_cpu = (config.model.kernel == "fast" and not config.training.mixed_precision
                and not tf.config.list_physical_devices("GPU") and not distribute.active(config))
    if isinstance(model, models.TelemetryModel):  # model.kernel=fast on a CPU: one XLA launch per update
        model.xla_optimizer_step = fast_cpu
    # one XLA compile per bucket length, not per batch size (fast_lstm's docstring)
    pad_batches(model, config.training.batch_size if fast_cpu else None)
    return model


class AttentionProbe(keras.callbacks.Callback):
    """Adds ``attention/entropy`` (mean entropy in nats of the attention over real tokens, on a
    fixed validation batch) to each epoch's logs: low values mean sharply focused attention."""

    def __init__(self, token_ids: np.ndarray):
        super().__init__()
        self.token_ids = token_ids

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        weights = np.asarray(models.attention_model(self.model).predict_on_batch(self.token_ids))
        if logs is not None:
            logs["attention/entropy"] = reports.entropy(weights, self.token_ids != PAD_ID)


def run(config: ExperimentConfig, *, root: Path, overrides: list[str] | None = None,
        prepared: PreparedData | None = None, parent_run_id: str | None = None,
        extra_tags: dict[str, str] | None = None, run_name: str | None = None,
        vectors: embeddings.Vectors | None = None, kept: reuse.KeptModel | None = None) -> RunResult:
    """Train and evaluate one configuration and record it as one MLflow run (``run_name``: a fold's;
    ``vectors``: the embedding's start, already made for ``prepared``, as a cross-validation does ahead;
    ``kept``: the previous fold's compiled model, trained from this run's fresh start where it matches).

    Checks run cheapest first: the data a user handed over, then the store (a down server fails
    fast), then what a resume needs, all before any run exists. ``prepared`` skips data preparation
    (the DVC train stage passes what `prepare` wrote); ``parent_run_id`` nests the run under a sweep's.
    """
    if not distribute.is_chief(config):  # training.strategy=multi_worker (TF_CONFIG checked here): a worker
        return _train_worker(config, prepared)  # trains its shard and records nothing; the chief records
    checked = None if prepared else check(config.data)  # bad data fails here, before the store is opened
    experiment_id = store.setup(config.tracking, root)
    prepared = prepared or prepare(config.data, checked=checked)
    checkpointer = checkpoints.for_config(config, root)  # training.resume: fails here, before training
    store.check_resumable(checkpointer.run_id)  # the run to resume is in the store and not FINISHED
    checkpointer.check_data(prepared.md5())
    vectors = _embedding_start(config, prepared, vectors)

    with system_metrics.sampling(config.tracking.system_metrics, config.tracking.system_metrics_interval_s), \
            Session.start(experiment_id, run_name=run_name or recording.run_name(config),
                          tags=_tags(config, overrides or [], {**(extra_tags or {}), **vectors.tags}),
                          parent_run_id=parent_run_id,
                          run_id=checkpointer.run_id) as session, \
            tempfile.TemporaryDirectory(prefix="bilstm-exp-") as tmp:
        folder = Path(tmp)
        _begin(session, checkpointer, config, overrides or [], prepared, folder)
        model, pipelines, padding, build_s = _build(config, prepared, vectors, kept)
        session.log_params({"derived.trainable_params": int(model.count_params())})
        profiler = profiling.EpochProfiler(len(prepared.labels["train"]), padding.real_tokens)
        history = _fit(config, model, pipelines, prepared, profiler, session, checkpointer, folder)
        classifier = _classifier(model, prepared)
        evaluation = evaluate(classifier, prepared)
        kept = _log_kept_weights(config, session, classifier, prepared, history)  # final val/*, best/epoch
        metrics = {**evaluation.metrics, **_data_metrics(prepared, padding), "time/model_build_s": build_s,
                   **vectors.metrics, **_cost_metrics(config, model, prepared, profiler, classifier, history)}
        session.log_metrics(metrics)
        metrics.update(kept)
        session.settle()  # a server down since some epoch: deliver what is buffered, or continue offline
        model_uri = session.resilient(lambda: recording.results(session, config, classifier, prepared, evaluation,
                                                                history, metrics, folder))
    checkpointer.delete()  # the run is FINISHED: nothing left to resume
    kept_offline = (session.offline_uri, session.offline_run_id) if session.offline_uri else None  # set by its end
    return RunResult(session.run_id, metrics, history, model_uri, classifier, prepared, kept_offline, evaluation)


def _embedding_start(config: ExperimentConfig, prepared: PreparedData,
                     ready: embeddings.Vectors | None = None) -> embeddings.Vectors:
    """model.pretrained_embeddings (an unreadable file fails before a run exists), else word2vec on the
    training split (model.self_trained_vectors): seconds to minutes on a large corpus, so it is announced."""
    if embeddings.trains_its_own(config.model):
        summary.say(f"{summary.PREFIX} word vectors: word2vec on the {len(prepared.texts['train']):,} training "
                    "texts (model.self_trained_vectors)")
    return ready or embeddings.for_run(config.model, prepared, seed=config.seed)


def _begin(session: Session, checkpointer: checkpoints.Checkpointer, config: ExperimentConfig, overrides: list[str],
           prepared: PreparedData, folder: Path) -> None:
    """Bind the checkpoints to the run; record what the run is (or that it resumes one)."""
    checkpointer.bind(session.run_id)
    if checkpointer.resuming:
        session.log_tags({"resumed_from_epoch": str(checkpointer.initial_epoch)})
    else:
        session.resilient(lambda: recording.header(session, config, overrides, prepared, folder))


def _build(config: ExperimentConfig, prepared: PreparedData, vectors: embeddings.Vectors,
           kept: reuse.KeptModel | None = None):
    """TensorFlow configured, the tf.data pipelines, their padding, the compiled model and its build time
    (``kept``, without a distribution strategy: the kept model, started as the fresh one, where they match)."""
    configure_tensorflow(config)
    pipelines = datasets(config, prepared)
    padding = train_padding(config, prepared, pipelines)
    start = time.perf_counter()
    with distribute.scope(config):
        model = compile_model(config, prepared, padding.batches, vectors=vectors)
    if kept is not None and not distribute.active(config):
        model = kept.adopt(model, repr(config))
    return model, pipelines, padding, time.perf_counter() - start


def _classifier(model: keras.Model, prepared: PreparedData) -> serving.TextClassifier:
    """The trained model as it is served: raw text in."""
    return serving.TextClassifier().setup(models.inference_model(model), prepared.vocab, {
        "class_names": prepared.class_names, "max_length": prepared.max_length, "truncating": prepared.truncating})


def _data_metrics(prepared: PreparedData, padding: batching.PaddingStats) -> dict[str, float]:
    """Preparation time, padding and (a file source) the bad rows skipped."""
    skipped = {"data/skipped_rows": prepared.stats["skipped_rows"]} if "skipped_rows" in prepared.stats else {}
    return {**skipped, "time/data_prepare_s": prepared.prepare_s or 0.0, "data/padding_fraction": padding.fraction}


def _fit(config: ExperimentConfig, model: keras.Model, pipelines: dict[str, tf.data.Dataset],
         prepared: PreparedData, profiler: profiling.EpochProfiler, session: Session,
         checkpointer: checkpoints.Checkpointer, folder: Path) -> dict[str, list[float]]:
    """``model.fit`` from the checkpointed epoch on; returns every epoch's logs (resumed ones included)."""
    checkpointer.restore(model)  # resuming: weights and optimizer state of the last finished epoch
    if not checkpointer.fit_done:
        callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), profiler]
        if recording.has_attention(model) and config.training.strategy != "multi_worker":  # chief-only collectives
            callbacks.append(AttentionProbe(serving.pad_right(prepared.splits["val"][:64])))
        stopping = _stopping(config, prepared)
        callbacks += [stopping] if stopping else []
        # last: log the epoch (with what the callbacks before added) and checkpoint it, signals held meanwhile
        callbacks += checkpointer.callbacks(MLflowLogger(session), stopping)
        callbacks += profiling.trace_callbacks(config.profiling, folder / "profile")
        callbacks += progress.callbacks(config.training, config.training.epochs)  # one short line per epoch
        if config.training.strategy == "multi_worker":  # saving alone would wait in a collective for the workers
            checkpointer.save = lambda *args, **kwargs: None  # the epochs' logs are still kept (history)
        train, val = distribute.fit_inputs(config, model, pipelines)
        with distribute.fitting(config):  # multi_worker: a dead peer ends the run FAILED (worker_lost)
            model.fit(train, validation_data=val, epochs=config.training.epochs,
                      initial_epoch=checkpointer.initial_epoch, callbacks=callbacks, shuffle=False,
                      verbose=progress.keras_verbose(config.training))
        if stopping is not None and stopping.stopped_epoch > 0 and config.training.early_stopping.enabled:
            print(summary.early_stop_line(stopping.stopped_epoch, stopping.best_epoch, stopping.wait,
                                          config.training.monitor, config.training.restore_best_weights), flush=True)
    history = checkpointer.history
    if any(not np.isfinite(v) for v in history.get("loss", [])):
        checkpointer.delete()  # resuming would diverge again
        raise NonFiniteLoss("training loss became NaN or infinite; lower optimizer.learning_rate "
                            "or enable clipping, e.g. clipping=global_norm")
    return history


def _stopping(config: ExperimentConfig, prepared: PreparedData) -> keras.callbacks.EarlyStopping | None:
    """Early stopping on ``training.monitor``; it also keeps the best epoch's weights (restored at the
    end of ``fit``), with a patience no run reaches when early stopping is disabled."""
    training = config.training
    if training.monitor == "val/auc" and prepared.num_classes != 2:
        raise ConfigError(f"training.monitor: val/auc needs two classes, the data has {prepared.num_classes}. "
                          "Fix: training.monitor=val/loss or training.monitor=val/accuracy")
    if not (training.early_stopping.enabled or training.restore_best_weights):
        return None
    patience = training.early_stopping.patience if training.early_stopping.enabled else training.epochs + 1
    return keras.callbacks.EarlyStopping(monitor=keras_key(training.monitor), mode=training.monitor_mode,
                                         patience=patience, restore_best_weights=training.restore_best_weights)


def keras_key(metric: str) -> str:
    """val/loss -> val_loss: the Keras log key of an MLflow metric name."""
    return metric.replace("/", "_", 1)


def best_epoch(config: ExperimentConfig, history: dict[str, list[float]]) -> int | None:
    """The 0-based epoch with the best ``training.monitor`` (the first of ties, as early stopping picks)."""
    values = np.asarray(history.get(keras_key(config.training.monitor), []), dtype=float)
    if not len(values) or not np.isfinite(values).any():
        return None
    values = np.where(np.isfinite(values), values, np.inf if config.training.monitor_mode == "min" else -np.inf)
    return int(np.argmin(values) if config.training.monitor_mode == "min" else np.argmax(values))


def _log_kept_weights(config: ExperimentConfig, session: Session, classifier: serving.TextClassifier,
                      prepared: PreparedData, history: dict[str, list[float]]) -> dict[str, float]:
    """Evaluate the weights the run keeps (the best epoch's, restored) on the validation split and log
    them as the last step of ``val/*`` (step = epochs trained, one past the last epoch), so each
    ``val/*`` metric's latest value, and the registry's ``metric.val/*`` tags, describe the saved model.
    Also logs ``best/epoch`` (0-based, as the epoch steps)."""
    kept = evaluate(classifier, prepared, split="val").metrics
    best = best_epoch(config, history)
    if best is not None:
        kept["best/epoch"] = best
    session.log_metrics(kept, step=len(history.get("loss", [])))
    return kept


def _train_worker(config: ExperimentConfig, prepared: PreparedData | None) -> RunResult:
    """A non-chief multi_worker task: the chief's data, model and steps (every collective matched), no
    MLflow, checkpoints or evaluation: it writes nothing (bilstm_exp.training.distribute)."""
    prepared = prepared or prepare(config.data)
    configure_tensorflow(config)
    pipelines = datasets(config, prepared)
    with distribute.scope(config):
        model = compile_model(config, prepared, len(pipelines["train"]))
    stopping = _stopping(config, prepared)  # the chief's too, on the same (all-reduced) metrics
    train, val = distribute.fit_inputs(config, model, pipelines)
    with distribute.fitting(config):
        fitted = model.fit(train, validation_data=val, epochs=config.training.epochs, shuffle=False,
                           callbacks=[keras.callbacks.TerminateOnNaN()] + ([stopping] if stopping else []),
                           verbose=progress.keras_verbose(config.training))
    return RunResult("", {}, fitted.history, None, None, prepared)


def _cost_metrics(config: ExperimentConfig, model: keras.Model, prepared: PreparedData,
                  profiler: profiling.EpochProfiler, classifier: serving.TextClassifier,
                  history: dict[str, list[float]]) -> dict[str, float]:
    """Size, compile overhead, latency, FLOPs, throughput and memory of the trained model."""
    metrics = {"model/params": int(model.count_params()), "model/size_mb": profiling.model_size_mb(model),
               "epochs_trained": len(history["loss"])}
    overhead = profiler.first_epoch_overhead_s()
    if overhead is not None:
        metrics["time/first_epoch_overhead_s"] = overhead
    # the served model's speed: not for a cross-validation fold, whose model is not logged (fold_artifacts=small)
    served = prepared.fold is None or config.tracking.fold_artifacts == "full"
    if config.profiling.latency_samples and served:
        texts = prepared.texts["test"][: config.profiling.latency_samples]
        metrics.update(profiling.latency(lambda text: classifier.probabilities([text]), texts))
    # compute/* (FLOPs, achieved GFLOP/s, peak fraction) and throughput/predict_samples_per_s
    predict = classifier.probabilities if served else None
    metrics.update(profiling.cost_metrics(config.model, prepared, history, predict))
    metrics["memory/peak_rss_mb"] = profiling.peak_rss_mb()
    return metrics


def _tags(config: ExperimentConfig, overrides: list[str], extra: dict[str, str] | None) -> dict[str, str]:
    return {**(extra or {}), "architecture": config.model.name, "hydra_overrides": " ".join(overrides),
            "mlflow.note.content": f"{config.model.name} on {config.data.name} data, "
                                   f"{config.optimizer.name}, clipping={config.clipping.name}"}


class NonFiniteLoss(RuntimeError):
    failure_reason = "non_finite_loss"

