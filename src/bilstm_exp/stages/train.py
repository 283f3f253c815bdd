"""The DVC train stage: one tracked run on data/prepared/ -> artifacts/model/ (the files of the logged
pyfunc model) and reports/train/ (history, metrics with the MLflow run id). Imports TensorFlow only
after its inputs are checked."""

from __future__ import annotations

from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.errors import ConfigError
from bilstm_exp.stages.outputs import (
    MODEL,
    TRAIN_REPORTS,
    dvc_tags,
    load_prepared,
    staging,
    tracking_root,
    write_csv,
    write_json,
)


def train_stage(config: ExperimentConfig) -> None:
    from bilstm_exp.models import vector_files
    from bilstm_exp.training import summary

    vector_files.check(config.model)  # model.pretrained_embeddings readable and as wide, before TensorFlow
    summary.announce(config, tracking_root())  # the first line: where the run is recorded
    if config.data.folds:
        raise ConfigError(f"data.folds={config.data.folds}: the DVC pipeline trains one model on one split. Fix: run "
                          "cross-validation with `python -m bilstm_exp data.folds=K`, and set data.folds=null here")
    prepared = load_prepared()  # before TensorFlow is imported: a missing input fails in a second

    from bilstm_exp.tracking.callback import metric_name
    from bilstm_exp.training import runner as training

    root = tracking_root()
    result = training.run(config, root=root, prepared=prepared, extra_tags=dvc_tags("train"))
    history = result.history
    epochs = len(history.get("loss", []))
    last = {metric_name(k): float(v[-1]) for k, v in history.items() if v}
    kept = {k: float(v) for k, v in result.metrics.items() if k.startswith(("val/", "best/"))}  # the kept weights'
    metrics = {"mlflow_run_id": result.run_id, "epochs_trained": epochs,
               **{k: last[k] for k in sorted(last) if k.split("/")[0] == "train"}, **dict(sorted(kept.items())),
               **{k: result.metrics[k] for k in ("model/params", "model/size_mb") if k in result.metrics}}
    columns = [k for k in history if len(history[k]) == epochs]
    with staging(MODEL, TRAIN_REPORTS / "history.csv", TRAIN_REPORTS / "metrics.json") as (
            model_dir, history_csv, metrics_json):
        result.classifier.save(model_dir)  # the files the logged pyfunc model is made of
        write_csv(history_csv, ["epoch", *(metric_name(k).replace("/", "_") for k in columns)],
                   [[i + 1, *(history[k][i] for k in columns)] for i in range(epochs)])
        write_json(metrics_json, metrics)
    print(f"trained {epochs} epoch(s): MLflow run {result.run_id}; model -> {MODEL}/")
    summary.report_run(config, root, result.run_id, result.kept_offline)  # test metrics, champion, where
