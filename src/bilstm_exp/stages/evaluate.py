"""The DVC evaluate stage: the trained model on the test split -> reports/evaluate/ (confusion, ROC,
precision-recall, accuracy by length), logged to the train stage's MLflow run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.errors import DataError, TrackingError
from bilstm_exp.stages.outputs import (
    EVALUATE_REPORTS,
    MODEL,
    TRAIN_REPORTS,
    load_prepared,
    staging,
    tracking_root,
    write_csv,
    write_json,
)


def load_classifier(model_dir: Path):
    from bilstm_exp.serving import model as serving

    if not (model_dir / "model.keras").is_file():
        raise DataError(f"{model_dir}/: no trained model. Fix: run `dvc repro train` first")
    return serving.TextClassifier.load(model_dir)


def evaluate_stage(config: ExperimentConfig) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from bilstm_exp.tracking import store
    from bilstm_exp.tracking.session import Session
    from bilstm_exp.training.evaluation import detailed

    train_metrics = TRAIN_REPORTS / "metrics.json"
    if not train_metrics.is_file():
        raise DataError(f"{train_metrics}: not found. Fix: run `dvc repro train` first")
    run_id = json.loads(train_metrics.read_text()).get("mlflow_run_id")
    if not run_id:
        raise DataError(f"{train_metrics}: no mlflow_run_id. Fix: re-run training with `dvc repro -f train`")
    classifier = load_classifier(MODEL)
    prepared = load_prepared()
    metrics, tables = detailed(classifier, prepared, config.data.num_buckets)

    root = tracking_root()
    store.setup(config.tracking, root)
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} (from {train_metrics}) is not in the tracking store "
                            f"{store.redact(store.resolve_uri(config.tracking, root))}. Fix: re-train into this "
                            "store with `dvc repro -f train`, or set tracking to the store that holds it") from None

    out = {"mlflow_run_id": run_id, **metrics}
    files = ("confusion.csv", "roc.csv", "precision_recall.csv", "length_buckets.csv", "metrics.json")
    with staging(*(EVALUATE_REPORTS / name for name in files)) as (confusion, roc, pr, buckets, metrics_json):
        write_csv(confusion, ["actual", "predicted"], tables["confusion"])
        write_csv(roc, ["fpr", "tpr", "threshold"], tables["roc"])
        write_csv(pr, ["recall", "precision", "threshold"], tables["precision_recall"])
        write_csv(buckets, ["length", "examples", "accuracy"], tables["length_buckets"])
        write_json(metrics_json, out)
        logged = {**metrics, **{f"test/accuracy_length_{row[0]}": row[2] for row in tables["length_buckets"]}}
        session = Session.attach(mlflow.get_tracking_uri(), run_id)  # the train stage's run, through a session
        session.log_batch(metrics=store.as_metrics(logged),
                          tags=store.as_tags({"dvc_evaluate_stage": os.environ.get("DVC_STAGE", "evaluate")}))
        for path in (confusion, roc, pr, buckets, metrics_json):
            session.log_artifacts(path, "evaluate")
    summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"evaluated on {metrics['test/examples']} test examples: {summary}; logged to MLflow run {run_id}")
