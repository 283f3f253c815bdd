"""Offline fallback: a run whose tracking server is down at its end is kept locally, and uploaded later.

When the server is still unreachable after training, the run's
:class:`~bilstm_exp.tracking.session.Session` replays everything
the run has logged so far (kept in a :class:`Journal`) into a local store and records the rest there:

    outputs/mlruns-offline/<server run id>/
        mlflow.db     sqlite MLflow store with the run: params, metrics with their steps and
                      timestamps, tags, status, and what `sync` needs (target URI, registration wish)
        artifacts/    the run's artifacts and its logged model
        synced.json   written by `bilstm-exp sync` after a successful upload

    bilstm-exp sync --from outputs/mlruns-offline/<run id> --to http://127.0.0.1:5000

uploads it into the same server run, or a new one (:mod:`bilstm_exp.tracking.sync`).

This module does not import TensorFlow or Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bilstm_exp.tracking import store

if TYPE_CHECKING:  # MLflow is imported where it is used: `bilstm-exp sync --help` answers at once
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

FOLDER = "outputs/mlruns-offline"  # under the working directory's one ignored outputs/ root
PREFIX = "bilstm_exp.tracking.offline."
ORIGIN_TAG = PREFIX + "origin_run_id"  # the run's id on the server
TARGET_TAG = PREFIX + "target_uri"  # the server (without credentials)
REGISTER_TAG = PREFIX + "register_model"  # registered model name, when the run was to register one
CHAMPION_TAG = PREFIX + "champion_metric"
GREATER_TAG = PREFIX + "champion_greater_is_better"
SYNCED = "synced.json"


@dataclass
class Journal:
    """Everything a run has logged through its session, whether delivered or not."""

    experiment_name: str
    run_name: str | None
    start_time: int
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def add(self, params: list[Param], metrics: list[Metric], tags: list[RunTag]) -> None:
        self.params.update({p.key: p.value for p in params})
        self.metrics.extend(metrics)
        self.tags.update({t.key: t.value for t in tags})


def store_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def create(folder: Path, journal: Journal, target_uri: str, origin_run_id: str) -> tuple[str, str]:
    """A local store in FOLDER holding one run with the journal replayed; returns (store URI, run id)."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    uri = store_uri(folder)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(journal.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        journal.experiment_name, artifact_location=(folder / "artifacts").resolve().as_uri())
    tags = {**journal.tags, TARGET_TAG: target_uri, ORIGIN_TAG: origin_run_id}
    run = client.create_run(experiment_id, start_time=journal.start_time, run_name=journal.run_name,
                            tags={k: v for k, v in tags.items() if k != "mlflow.runName"})
    replay(client, run.info.run_id, journal)
    return uri, run.info.run_id


def replay(client: MlflowClient, run_id: str, journal: Journal) -> None:
    from mlflow.entities import Param, RunTag

    store.log_batch(client, run_id, [Param(k, v) for k, v in journal.params.items()], journal.metrics,
                    [RunTag(k, v) for k, v in journal.tags.items()])


def take_over(run_id: str, uri: str, offline_run_id: str) -> None:
    """MLflow's fluent API (log_artifact, log_model) writes to the offline copy from now on."""
    import mlflow
    from mlflow.tracking import MlflowClient, fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack[-1] = mlflow.ActiveRun(MlflowClient(uri).get_run(offline_run_id))
    mlflow.set_tracking_uri(uri)


def end(run_ids: set[str], uri: str, offline_run_id: str, status: str, target_uri: str) -> None:
    """End the offline copy with ``status``; the fluent API leaves it and points at ``target_uri`` again."""
    import mlflow
    from mlflow.tracking import MlflowClient, fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id in run_ids:
        stack.pop()
    MlflowClient(uri).set_terminated(offline_run_id, status)
    mlflow.set_tracking_uri(target_uri)


def sync_command_line(folder: Path, target_uri: str) -> str:
    try:
        shown = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = folder
    return f"bilstm-exp sync --from {shown} --to {target_uri}"
