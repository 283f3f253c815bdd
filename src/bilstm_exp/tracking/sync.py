"""`bilstm-exp sync`: upload runs kept offline (:mod:`bilstm_exp.tracking.offline`) to their server.

    bilstm-exp sync --from outputs/mlruns-offline/<run id> --to http://127.0.0.1:5000

uploads each run into the same server run (or a new run when the server no longer has it): missing
params, metric values not already there (so a second sync adds nothing), tags, artifacts, the logged
model, the registered model version with the champion decision, and finally the run's status. The run's
writes go through a :class:`~bilstm_exp.tracking.session.Session` attached to it (retried, buffered,
redacted as every run's are).

MLflow is imported where it is used: `bilstm-exp sync --help` answers at once. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bilstm_exp.errors import TrackingError
from bilstm_exp.tracking import store
from bilstm_exp.tracking.offline import (
    CHAMPION_TAG,
    FOLDER,
    GREATER_TAG,
    ORIGIN_TAG,
    PREFIX,
    REGISTER_TAG,
    SYNCED,
    TARGET_TAG,
    store_uri,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass
class SyncReport:
    run_id: str
    params: int = 0
    metric_values: int = 0
    artifacts: int = 0
    model_version: str | None = None


def sync(source: Path, target_uri: str | None = None) -> list[SyncReport]:
    """Upload every run in SOURCE (an offline run folder, or the folder holding several)."""
    folders = [source] if (source / "mlflow.db").is_file() else sorted(
        p for p in source.iterdir() if (p / "mlflow.db").is_file()) if source.is_dir() else []
    if not folders:
        raise TrackingError(f"{source}: no offline run (no mlflow.db in it or its subfolders). Fix: pass the folder "
                            f"the run printed, e.g. --from {FOLDER}/RUN_ID")
    from mlflow.tracking import MlflowClient

    reports = []
    for folder in folders:
        local = MlflowClient(store_uri(folder))
        for experiment in local.search_experiments():
            for run in local.search_runs([experiment.experiment_id]):
                uri = target_uri or run.data.tags.get(TARGET_TAG)
                if not uri:
                    raise TrackingError(f"{folder}: no target recorded. Fix: pass --to URI")
                if store.redact(uri) != uri:
                    raise TrackingError(f"--to {store.redact(uri)} holds credentials. Fix: put them in "
                                        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
                store.check_store(uri)
                reports.append(_sync_run(local, run, experiment.name, uri))
        (folder / SYNCED).write_text(json.dumps({"target_uri": target_uri, "synced_at": time.time(),
                                                 "runs": [r.run_id for r in reports]}))
    return reports


def _sync_run(local: MlflowClient, run, experiment_name: str, uri: str) -> SyncReport:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from bilstm_exp.tracking.session import Session

    target = MlflowClient(uri)
    experiment = target.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else target.create_experiment(experiment_name)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(PREFIX)}
    run_id = _target_run(target, run.data.tags.get(ORIGIN_TAG), experiment_id)
    if run_id is None:
        run_id = target.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name,
                                   tags={k: v for k, v in tags.items() if k != "mlflow.runName"}).info.run_id
    report = SyncReport(run_id)
    existing = target.get_run(run_id)

    params = [Param(k, v) for k, v in run.data.params.items() if k not in existing.data.params]
    report.params = len(params)

    metrics = []
    for key in run.data.metrics:
        there = {(m.step, m.timestamp, m.value) for m in target.get_metric_history(run_id, key)}
        metrics += [m for m in local.get_metric_history(run.info.run_id, key)
                    if (m.step, m.timestamp, m.value) not in there]
    report.metric_values = len(metrics)
    session = Session.attach(uri, run_id)
    session.log_batch(params=params, metrics=metrics)
    session.log_tags({**tags, "bilstm_exp.synced_from": "offline"})

    with tempfile.TemporaryDirectory(prefix="bilstm-exp-sync-") as tmp:
        if local.list_artifacts(run.info.run_id):
            folder = Path(local.download_artifacts(run.info.run_id, "", tmp))
            report.artifacts = sum(1 for p in folder.rglob("*") if p.is_file())
            session.log_artifacts(folder)
        model_ids = [_sync_model(local, target, model, run_id, experiment_id, Path(tmp))
                     for model in local.search_logged_models([run.info.experiment_id],
                                                             f"source_run_id='{run.info.run_id}'")]

    if model_ids:
        report.model_version = _register(target, run, run_id, f"models:/{model_ids[-1]}", uri)
    session.end(run.info.status, end_time=run.info.end_time)
    return report


def _register(target: MlflowClient, run, run_id: str, model_uri: str, uri: str) -> str | None:
    """The registration the run wished for when it went offline (its tags), on the target; the
    version number, or None when it wished none or the target already has the run's version."""
    import mlflow

    from bilstm_exp.tracking import model_registry as registry

    name = run.data.tags.get(REGISTER_TAG)
    if not name or target.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        return None
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        version = registry.register(target, model_uri, name, run_id, target.get_run(run_id).data.metrics,
                                    run.data.tags.get(CHAMPION_TAG, "val/accuracy"),
                                    run.data.tags.get(GREATER_TAG, "true") == "true")
    finally:
        mlflow.set_tracking_uri(previous)
    return str(version.version)


def _target_run(target: MlflowClient, origin: str | None, experiment_id: str) -> str | None:
    """The server run the offline run continues, when the server still has it."""
    from mlflow.exceptions import MlflowException

    if not origin:
        return None
    try:
        run = target.get_run(origin)
    except MlflowException:
        return None
    return origin if run.info.experiment_id == experiment_id else None


def _sync_model(local: MlflowClient, target: MlflowClient, model, run_id: str, experiment_id: str,
                tmp: Path) -> str:
    """Upload a logged model (MLflow 3 keeps it outside the run's artifacts); returns its id on the target."""
    import mlflow
    from mlflow.models import Model

    done = target.search_logged_models([experiment_id], f"source_run_id='{run_id}'")
    for candidate in done:
        if candidate.tags.get(PREFIX + "model_id") == model.model_id:
            return candidate.model_id
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                      tracking_uri=local.tracking_uri,
                                                      dst_path=str(tmp / model.model_id)))
    created = target.create_logged_model(experiment_id, name=model.name, source_run_id=run_id,
                                         tags={**model.tags, PREFIX + "model_id": model.model_id},
                                         params=model.params, model_type=model.model_type)
    mlmodel = Model.load(str(folder))
    mlmodel.run_id, mlmodel.model_id = run_id, created.model_id
    mlmodel.save(str(folder / "MLmodel"))
    target.log_model_artifacts(created.model_id, str(folder))
    target.finalize_logged_model(created.model_id, "READY")
    return created.model_id


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp sync``."""
    parser.description = (f"Upload a run kept in {FOLDER}/ because its tracking server was unreachable:\n"
                          "params, metrics, tags, artifacts, model and registry version.")
    parser.add_argument("--from", dest="source", required=True,
                        help=f"an offline run folder, e.g. {FOLDER}/RUN_ID, or {FOLDER}/ for all of them")
    parser.add_argument("--to", dest="target", default=None,
                        help="tracking URI to upload to (default: the server the run was meant for)")


def command(args: argparse.Namespace) -> None:
    source = Path(args.source)
    if not source.exists():
        raise TrackingError(f"{source}: no such folder. Fix: pass the folder the run printed, "
                            f"e.g. --from {FOLDER}/RUN_ID")
    reports = sync(source, args.target)
    for r in reports:
        version = f", model version {r.model_version}" if r.model_version else ""
        print(f"synced run {r.run_id}: {r.params} params, {r.metric_values} metric values, "
              f"{r.artifacts} artifact files{version}")
