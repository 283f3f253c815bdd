"""One experiment run: data -> model -> fit -> evaluate, recorded in MLflow.

This is the only module that knows both the model and the tracking side; it wires
``data``, ``models``, ``optim``, ``profiling``, ``serving`` and ``tracking`` together.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
import yaml
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from bilstm_exp import checkpoints, models, optim, profiling, reports, serving, tracking
from bilstm_exp import data as data_mod
from bilstm_exp.config import ExperimentConfig, flatten, to_dict


@dataclass
class RunResult:
    run_id: str
    metrics: dict[str, float]  # the final (non-per-epoch) metrics logged to MLflow
    history: dict[str, list[float]]  # Keras History: per-epoch logs, incl. profiling keys
    model_uri: str | None  # the logged pyfunc model
    classifier: serving.TextClassifier  # the trained model, raw text in
    prepared: data_mod.PreparedData


def configure_tensorflow(config: ExperimentConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    if config.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.training.mixed_precision else "float32")


def datasets(config: ExperimentConfig, prepared: data_mod.PreparedData) -> dict[str, tf.data.Dataset]:
    """Train (shuffled), val and test pipelines with bucket boundaries from the training lengths."""
    cfg = config.data
    lengths = np.array([len(s) for s in prepared.splits["train"]])
    bounds = data_mod.bucket_boundaries(lengths, cfg.num_buckets) if cfg.padding == "bucket" else None
    return {
        name: data_mod.make_dataset(prepared.splits[name], prepared.labels[name], config.training.batch_size,
                                    padding=cfg.padding, max_length=cfg.max_length, boundaries=bounds,
                                    shuffle=name == "train", seed=config.seed)
        for name in ("train", "val", "test")
    }


def compile_model(config: ExperimentConfig, prepared: data_mod.PreparedData, steps_per_epoch: int) -> keras.Model:
    model = models.build(config.model, len(prepared.vocab), prepared.num_classes)
    optimizer = optim.build(config.optimizer, config.clipping, steps_per_epoch, config.training.epochs)
    if prepared.num_classes == 2:
        loss, metrics = "binary_crossentropy", [keras.metrics.BinaryAccuracy(name="accuracy"),
                                                keras.metrics.AUC(name="auc")]
    else:
        loss, metrics = "sparse_categorical_crossentropy", [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                  steps_per_execution=config.training.steps_per_execution)
    return model


@dataclass
class Evaluation:
    metrics: dict[str, float]
    y_true: np.ndarray
    y_pred: np.ndarray
    probabilities: np.ndarray


def evaluate(classifier: serving.TextClassifier, prepared: data_mod.PreparedData) -> Evaluation:
    """Test metrics from the raw test texts, exactly as the served model sees them:
    test/loss, test/accuracy and test/auc (two classes) or test/macro_f1 (more)."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    y = prepared.labels["test"]
    probs = classifier.probabilities(prepared.texts["test"])
    pred = probs.argmax(axis=1)
    labels = list(range(prepared.num_classes))
    out = {"test/loss": float(log_loss(y, np.clip(probs, 1e-7, 1 - 1e-7), labels=labels)),
           "test/accuracy": float(accuracy_score(y, pred))}
    if prepared.num_classes == 2:
        out["test/auc"] = float(roc_auc_score(y, probs[:, 1])) if len(set(y)) == 2 else float("nan")
    else:
        out["test/macro_f1"] = float(f1_score(y, pred, average="macro", labels=labels))
    return Evaluation(out, y, pred, probs)


class AttentionProbe(keras.callbacks.Callback):
    """Adds ``attention/entropy`` (mean entropy in nats of the attention over real tokens, on a
    fixed validation batch) to each epoch's logs: low values mean sharply focused attention."""

    def __init__(self, token_ids: np.ndarray):
        super().__init__()
        self.token_ids = token_ids

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        weights = np.asarray(models.attention_model(self.model).predict_on_batch(self.token_ids))
        if logs is not None:
            logs["attention/entropy"] = reports.entropy(weights, self.token_ids != data_mod.PAD_ID)


def attention_examples(model: keras.Model, prepared: data_mod.PreparedData, evaluation: Evaluation,
                       count: int = 4) -> list[dict[str, Any]]:
    """Attention over the tokens of the ``count`` shortest test texts (fixed for a data split)."""
    order = np.argsort([len(s) for s in prepared.splits["test"]], kind="stable")[:count]
    ids = serving.pad_right([prepared.splits["test"][i] for i in order])
    weights = np.asarray(models.attention_model(model).predict_on_batch(ids))
    words = ["<pad>", "<unk>", *prepared.vocab.words]
    return [{"tokens": [words[t] for t in prepared.splits["test"][i]],
             "weights": [round(float(w), 5) for w in weights[row, : len(prepared.splits["test"][i])]],
             "label": prepared.class_names[evaluation.y_true[i]],
             "prediction": prepared.class_names[evaluation.y_pred[i]]}
            for row, i in enumerate(order)]


def _log_artifacts(model: keras.Model, prepared: data_mod.PreparedData, evaluation: Evaluation,
                   history: dict[str, list[float]], folder: Path) -> None:
    """Curves, confusion matrix, classification report, vocabulary and (attention) the heatmap."""
    folder.mkdir()
    names = prepared.class_names
    reports.training_curves(history, folder / "training_curves.png")
    reports.confusion_matrix(evaluation.y_true, evaluation.y_pred, names, folder / "confusion_matrix.png")
    reports.classification_report(evaluation.y_true, evaluation.y_pred, names, folder / "classification_report.txt")
    (folder / "vocab.json").write_text(prepared.vocab.to_json())
    mlflow.log_artifacts(str(folder), "reports")
    if "attention" in [layer.name for layer in model.layers]:
        attention = folder / "attention"
        attention.mkdir()
        reports.attention_heatmap(attention_examples(model, prepared, evaluation), attention)
        mlflow.log_artifacts(str(attention), "attention")


def _callbacks(config: ExperimentConfig, profiler: profiling.EpochProfiler, model: keras.Model,
               prepared: data_mod.PreparedData,
               checkpointer: checkpoints.Checkpointer) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), profiler]
    if "attention" in [layer.name for layer in model.layers]:
        callbacks.append(AttentionProbe(serving.pad_right(prepared.splits["val"][:64])))
    stop = config.training.early_stopping
    if stop.enabled:
        mode = "min" if stop.monitor == "val_loss" else "max"
        callbacks.append(keras.callbacks.EarlyStopping(monitor=stop.monitor, patience=stop.patience, mode=mode,
                                                       restore_best_weights=True))
    # last: logs what the callbacks before it added, then checkpoints the epoch (signals held meanwhile)
    callbacks.append(checkpointer.callback(tracking.MLflowLogger(), callbacks))
    return callbacks


def _open_checkpointer(config: ExperimentConfig, root: Path) -> checkpoints.Checkpointer:
    """Epoch checkpoints in checkpoints/<run_id>/; with training.resume=true, the interrupted run's."""
    flat = {k: v for k, v in flatten(to_dict(config)).items() if not tracking.is_secret(k, v)}
    checkpointer = checkpoints.Checkpointer.open(root, flat, config.training.resume, config.training.resume_run_id)
    if checkpointer.resuming:
        tracking.check_resumable(checkpointer.run_id)
    return checkpointer


def _log_header(config: ExperimentConfig, overrides: list[str], prepared: data_mod.PreparedData,
                folder: Path) -> None:
    """What a new run records before training: params, config and overrides, data md5."""
    tracking.log_params(flatten(to_dict(config)))
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    mlflow.log_artifact(str(folder / "config.yaml"))
    mlflow.log_artifact(str(folder / "overrides.yaml"))
    tracking.log_tags({"data_md5": prepared.md5()})
    tracking.log_params({"derived.vocab_size": len(prepared.vocab), "derived.num_classes": prepared.num_classes,
                         "derived.train_examples": len(prepared.labels["train"]),
                         "derived.max_length": max(len(s) for s in prepared.splits["train"])})


def _record_results(config: ExperimentConfig, classifier: serving.TextClassifier, prepared: data_mod.PreparedData,
                    evaluation: Evaluation, history: dict[str, list[float]], metrics: dict[str, float],
                    folder: Path) -> str:
    """Artifacts and the model, in a fresh folder: repeatable if the server goes down meanwhile."""
    folder = Path(tempfile.mkdtemp(prefix="record-", dir=folder))
    if (folder.parent / "profile").is_dir():  # profiling=trace: a TensorBoard-readable profiler trace
        mlflow.log_artifacts(str(folder.parent / "profile"), "profile")
    _log_artifacts(classifier.model, prepared, evaluation, history, folder / "reports")
    return _log_model(config, classifier, prepared, metrics, folder / "model")


def _log_model(config: ExperimentConfig, classifier: serving.TextClassifier, prepared: data_mod.PreparedData,
               metrics: dict[str, float], folder: Path) -> str:
    """Log the raw-text pyfunc model; register it and decide on the champion alias."""
    import pandas as pd

    signature = ModelSignature(inputs=Schema([ColSpec("string")]),  # unnamed: a plain list of texts passes too
                               outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label")]))
    info = tracking.log_model(serving.TextClassifier(), artifacts=classifier.save(folder),
                              signature=signature, input_example=pd.DataFrame({"text": prepared.texts["test"][:2]}))
    if config.tracking.register_model:
        run_id = mlflow.active_run().info.run_id
        metrics = {**mlflow.get_run(run_id).data.metrics, **metrics}  # incl. the last epoch's val/*
        tracking.register(info.model_uri, config.tracking.registered_model_name, run_id, metrics,
                          config.tracking.champion_metric, config.tracking.champion_greater_is_better)
    return info.model_uri


def run(config: ExperimentConfig, *, root: Path, overrides: list[str] | None = None,
        prepared: data_mod.PreparedData | None = None, parent_run_id: str | None = None,
        extra_tags: dict[str, str] | None = None) -> RunResult:
    """Train and evaluate one configuration and record it as one MLflow run.

    The store is checked before any data is prepared, so a down server fails fast.
    ``prepared`` skips data preparation (the DVC train stage passes what `prepare` wrote);
    ``parent_run_id`` nests the run under a sweep's parent run.
    """
    experiment_id = tracking.setup(config.tracking, root)
    checkpointer = _open_checkpointer(config, root)  # training.resume: fails here, before data preparation
    overrides = overrides or []
    tags = {**(extra_tags or {}), "architecture": config.model.name, "hydra_overrides": " ".join(overrides),
            "mlflow.note.content": f"{config.model.name} on {config.data.name} data, "
                                   f"{config.optimizer.name}, clipping={config.clipping.name}"}
    run_name = f"{config.model.name}-{config.optimizer.name}-clip_{config.clipping.name}"
    start = time.perf_counter()
    if prepared is None:
        prepared = data_mod.prepare(config.data, config.seed)  # bad data fails here, before a run exists
    prepare_s = time.perf_counter() - start
    checkpointer.check_data(prepared.md5())

    with tracking.run(experiment_id, run_name=run_name, tags=tags, parent_run_id=parent_run_id,
                      run_id=checkpointer.run_id) as active, \
            tempfile.TemporaryDirectory(prefix="bilstm-exp-") as tmp:
        folder = Path(tmp)
        checkpointer.bind(active.info.run_id)
        if checkpointer.resuming:
            tracking.log_tags({"resumed_from_epoch": str(checkpointer.initial_epoch)})
        else:
            tracking.resilient(lambda: _log_header(config, overrides, prepared, folder))

        configure_tensorflow(config)
        pipelines = datasets(config, prepared)
        padding = data_mod.padding_stats(pipelines["train"])
        start = time.perf_counter()
        model = compile_model(config, prepared, padding.batches)
        build_s = time.perf_counter() - start
        params = int(model.count_params())
        tracking.log_params({"derived.trainable_params": params})

        profiler = profiling.EpochProfiler(len(prepared.labels["train"]), padding.real_tokens)
        checkpointer.restore(model)  # resuming: weights and optimizer state of the last finished epoch
        if not checkpointer.fit_done:
            model.fit(pipelines["train"], validation_data=pipelines["val"], epochs=config.training.epochs,
                      initial_epoch=checkpointer.initial_epoch,
                      callbacks=_callbacks(config, profiler, model, prepared, checkpointer)
                      + profiling.trace_callbacks(config.profiling, folder / "profile"), shuffle=False,
                      verbose=_verbose(config.training.verbose))
        history = checkpointer.history  # every epoch's logs, those before a resumption included
        if any(not np.isfinite(v) for v in history.get("loss", [])):
            checkpointer.delete()  # resuming would diverge again
            raise NonFiniteLoss("training loss became NaN or infinite; lower optimizer.learning_rate "
                                "or enable clipping, e.g. clipping=global_norm")

        classifier = serving.TextClassifier().setup(models.inference_model(model), prepared.vocab, {
            "class_names": prepared.class_names, "max_length": prepared.max_length,
            "truncating": prepared.truncating})
        evaluation = evaluate(classifier, prepared)
        metrics = dict(evaluation.metrics)
        metrics.update({
            "time/data_prepare_s": prepare_s, "time/model_build_s": build_s,
            "data/padding_fraction": padding.fraction, "model/params": params,
            "model/size_mb": profiling.model_size_mb(model), "epochs_trained": len(history["loss"]),
        })
        overhead = profiler.first_epoch_overhead_s()
        if overhead is not None:
            metrics["time/first_epoch_overhead_s"] = overhead
        if config.profiling.latency_samples:
            texts = prepared.texts["test"][: config.profiling.latency_samples]
            metrics.update(profiling.latency(lambda text: classifier.probabilities([text]), texts))
        # compute/* (FLOPs, achieved GFLOP/s, peak fraction) and throughput/predict_samples_per_s
        metrics.update(profiling.cost_metrics(config.model, prepared, history, classifier.probabilities))
        metrics["memory/peak_rss_mb"] = profiling.peak_rss_mb()
        tracking.log_metrics(metrics)
        tracking.settle()  # a server down since some epoch: deliver what is buffered, or continue offline
        model_uri = tracking.resilient(lambda: _record_results(config, classifier, prepared, evaluation, history,
                                                               metrics, folder))
        result = RunResult(checkpointer.run_id, metrics, history, model_uri, classifier, prepared)
    checkpointer.delete()  # the run is FINISHED: nothing left to resume
    return result


class NonFiniteLoss(RuntimeError):
    failure_reason = "non_finite_loss"


def _verbose(value: str) -> int:
    """auto: a progress bar on a terminal, one line per epoch in logs and CI."""
    if value == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(value)
