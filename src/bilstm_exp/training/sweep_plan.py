"""The jobs of a sweep: each a child run of the sweep's parent, and, when a stopped sweep is resumed
(``training.resume=true``), what each job does.

* Each job (:func:`job_run_kwargs`, called by ``cli.run_from_hydra``) becomes a child run of the parent
  whose id the sweep callback put in :data:`PARENT_ENV` (launcher workers inherit it).
* ``training.resume=true`` on a sweep resumes it (:func:`parent_to_resume`, :func:`plan_job`): the
  newest parent run with the same sweep overrides is reopened; each job whose child FINISHED is
  skipped (its logged objective is returned to the sweeper), a KILLED or FAILED child with a
  checkpoint resumes into the same run, any other job starts a new child of the same parent.

No TensorFlow here; MLflow is imported where it is first needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARENT_ENV = "BILSTM_EXP_SWEEP_PARENT_RUN_ID"
SWEEP_TAG = "bilstm_exp.training.sweep"  # "parent" on a sweep's parent run
RESUME_KEY = "training.resume"
REPLACES_TAG = "sweep.replaces"  # on a child started by a resumed sweep in place of an interrupted one
RESUMED_TAG = "sweep.resumed"  # on a parent: how many times the sweep was resumed
CHECKPOINT_STATE = ("checkpoints", "state.json")  # checkpoints.FOLDER / <run_id> / checkpoints.STATE (no Keras here)
PREFIX = "[bilstm-exp]"


def job_run_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``training.run`` inside a Hydra job: nesting under the sweep's parent
    run (MULTIRUN only) and the job number as a tag. Empty for single runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    parent = os.environ.get(PARENT_ENV)
    if hydra_cfg.mode != RunMode.MULTIRUN or not parent:
        return {}
    return {"parent_run_id": parent, "extra_tags": {"sweep_job": str(hydra_cfg.job.num)}}


def without_resume(overrides: list[str]) -> list[str]:
    """The overrides without ``training.resume=...``: what identifies a sweep and its jobs."""
    return [o for o in overrides if o.partition("=")[0].lstrip("+~") != RESUME_KEY]


def same_overrides(recorded: str, overrides: list[str]) -> bool:
    """A recorded ``sweep_overrides`` / ``hydra_overrides`` tag names these overrides (in any order;
    tags are written masked, so the overrides are masked the same way)."""
    from bilstm_exp.tracking.store import redact_text

    return sorted(recorded.split()) == sorted(redact_text(" ".join(without_resume(overrides))).split())


@dataclass
class JobPlan:
    """What one job of a sweep does: train with ``overrides`` and ``run_kwargs``, or, when ``finished``
    is a run, nothing: that run FINISHED this job in an earlier attempt of the sweep."""

    overrides: list[str]
    run_kwargs: dict[str, Any] = field(default_factory=dict)
    finished: Any = None  # mlflow.entities.Run


def plan_job(config, overrides: list[str]) -> JobPlan:
    """A Hydra job's plan (``cli.run_from_hydra``). Outside a resumed sweep: train as a child of the
    sweep's parent (:func:`job_run_kwargs`). In a sweep run with ``training.resume=true``, the child of
    the parent with this job's overrides (``training.resume`` left out) decides: FINISHED -> skipped;
    KILLED or FAILED with a checkpoint (checkpoints/<run_id>/state.json) -> resumed into that run
    (``config.training.resume_run_id`` is set); otherwise a new child (``training.resume`` turned off,
    tag ``sweep.replaces`` naming an interrupted child it replaces)."""
    kwargs = job_run_kwargs()
    parent = kwargs.get("parent_run_id")
    if parent is None or not config.training.resume:
        return JobPlan(overrides, kwargs)
    from mlflow.tracking import MlflowClient  # only here: a single run's bad input answers without MLflow

    from bilstm_exp.tracking import store
    overrides = without_resume(overrides)  # the job's record names what it computes, as its first attempt did
    job = kwargs["extra_tags"]["sweep_job"]
    client = MlflowClient(store.resolve_uri(config.tracking, Path.cwd()))
    earlier = sorted((run for run in store.child_runs(client, parent)
                      if same_overrides(run.data.tags.get("hydra_overrides", ""), overrides)),
                     key=lambda run: run.info.start_time or 0, reverse=True)
    finished = [run for run in earlier if run.info.status == "FINISHED"]
    if finished:
        print(store.redact_text(f"{PREFIX} job {job}: finished in run {finished[0].info.run_id}, skipped"),
              flush=True)
        return JobPlan(overrides, kwargs, finished=finished[0])
    interrupted = [run for run in earlier if run.info.status in ("KILLED", "FAILED")]
    resumable = [run for run in interrupted if Path.cwd().joinpath(
        CHECKPOINT_STATE[0], run.info.run_id, CHECKPOINT_STATE[1]).is_file()]
    if resumable:
        config.training.resume_run_id = resumable[0].info.run_id
        print(f"{PREFIX} job {job}: resuming run {resumable[0].info.run_id} ({resumable[0].info.status})", flush=True)
        return JobPlan(overrides, kwargs)
    config.training.resume, config.training.resume_run_id = False, None
    if interrupted:  # ended without a checkpoint (e.g. before its first epoch): a new child takes its place
        kwargs["extra_tags"][REPLACES_TAG] = interrupted[0].info.run_id
        print(f"{PREFIX} job {job}: run {interrupted[0].info.run_id} ({interrupted[0].info.status}) left no "
              "checkpoint; starting a new run", flush=True)
    return JobPlan(overrides, kwargs)


def resume_requested(config: DictConfig) -> bool:
    """The sweep was started with ``training.resume=true``."""
    return OmegaConf.select(config, RESUME_KEY, default=False) is True


def parent_to_resume(client, experiment_id: str, experiment_name: str, sweep_overrides: str):
    """The newest parent run in the experiment with these sweep overrides, to reopen; a refusal
    (UserError) when there is none, it FINISHED, or it (or one of its jobs) may still be running.
    A run left RUNNING by a process of this host that is gone (``kill -9``) is closed KILLED first."""
    from bilstm_exp.errors import UserError
    from bilstm_exp.tracking import runs
    from bilstm_exp.tracking.store import child_runs, redact_text

    parents = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1000)
    shown = redact_text(sweep_overrides) or "(none)"
    matching = [run for run in parents if sorted(run.data.tags.get("sweep_overrides", "").split())
                == sorted(redact_text(sweep_overrides).split())]
    if not matching:
        newest = (f" (the newest sweep there has '{redact_text(parents[0].data.tags.get('sweep_overrides', ''))}')"
                  if parents else " (it has no sweep)")
        raise UserError(f"training.resume=true: no sweep with the overrides '{shown}' in experiment "
                        f"'{redact_text(experiment_name)}' to resume{newest}. Fix: repeat the interrupted sweep's "
                        "overrides exactly, or drop training.resume to start a new sweep")
    parent = matching[0]
    parent_id = parent.info.run_id
    if parent.info.status == "FINISHED":
        raise UserError(f"training.resume=true: the sweep with the overrides '{shown}' (parent run {parent_id}) "
                        "FINISHED: nothing to resume. Fix: drop training.resume to start a new sweep")
    running = [run for run in [parent, *child_runs(client, parent_id)] if run.info.status == "RUNNING"]
    alive = [run for run in running if not runs.process_gone(run)]
    if alive:
        raise UserError(f"training.resume=true: run {alive[0].info.run_id} of the sweep (parent run {parent_id}) is "
                        "still RUNNING: its sweep may still be going. Fix: wait for it to end, or if its process is "
                        "gone, close it with `bilstm-exp runs --stale --close` and resume again")
    gone = "its process is gone (sweep resumed)"
    for run in running:  # their processes are gone: end the jobs KILLED as `bilstm-exp runs --stale --close` would
        if run.info.run_id != parent_id:  # (the parent is reopened as it is)
            runs.close(client, runs.Stale(run, redact_text(experiment_name), 0.0, gone))
    return client.get_run(parent_id)
