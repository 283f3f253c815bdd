"""Hydra multirun -> one MLflow parent run with one nested child run per job.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``; it only acts in MULTIRUN mode
(``python -m bilstm_exp -m ...``), so single runs are unaffected:

* ``on_multirun_start`` (main process, before the sweeper and launcher exist) creates and
  migrates the tracking store and the experiment once, so parallel workers never race on the
  schema migration, then opens the parent run (tags: the sweep's overrides, sweeper, launcher,
  experiment preset) and puts its id in the environment variable :data:`PARENT_ENV`. Launcher
  workers started afterwards (joblib/loky processes included) inherit it.
* Each job (:func:`job_run_kwargs`, called by ``cli.run_from_hydra``) becomes a child run of it.
* ``training.resume=true`` on a sweep resumes it (:func:`parent_to_resume`, :func:`plan_job`): the
  newest parent run with the same sweep overrides is reopened; each job whose child FINISHED is
  skipped (its logged objective is returned to the sweeper), a KILLED or FAILED child with a
  checkpoint resumes into the same run, any other job starts a new child of the same parent.
* ``on_multirun_end`` finds the best child by ``metric`` (default: the sweep's ``training.monitor``
  and its mode; a child's final value, i.e. its kept weights', as the sweepers optimise; a
  cross-validation child's ``cv/<metric>_mean``), logs it on the parent (tags ``best_run_id`` and
  ``best_overrides``, params ``best.<key>``, metric ``best/<metric>``, artifact ``best/config.yaml``),
  registers the best child's model (``tracking.sweep_registers=best``, the default: jobs register
  nothing themselves; tag ``registry.version`` or ``registry.skipped`` on the parent) and ends the
  parent FINISHED, or FAILED when any job failed. When a failed job makes the sweeper raise, Hydra skips
  ``on_multirun_end``; an exit hook then ends the parent FAILED instead of leaving it RUNNING.

The callback is pickled to joblib workers with the launcher's context, so it holds only strings.
This module does not import TensorFlow.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
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


def tracking_config(config: DictConfig):
    """The validated ``tracking`` group of the sweep's base config."""
    from bilstm_exp.config.schema import TrackingConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrackingConfig), config.tracking))


def sweep_description(config: DictConfig) -> tuple[str, dict[str, str], dict[str, str]]:
    """(run name, tags, params) describing a sweep from its Hydra config."""
    hydra_cfg = config.hydra
    # training.resume=true resumes a sweep; it is not part of what the sweep computes
    overrides = without_resume([str(o) for o in OmegaConf.select(hydra_cfg, "overrides.task", default=[]) or []])
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices) if OmegaConf.select(
        hydra_cfg, "runtime.choices") is not None else {}
    sweeper = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or "")
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None)
    params = OmegaConf.to_container(params) if params is not None else {}
    preset = choices.get("experiment") or choices.get("hparams_search")
    tags = {
        SWEEP_TAG: "parent",
        "sweep_overrides": " ".join(overrides),
        "sweeper": sweeper.rsplit(".", 1)[-1] or "unknown",
        "launcher": launcher.rsplit(".", 1)[-1] or "unknown",
        "sweep_dir": str(OmegaConf.select(hydra_cfg, "sweep.dir", default="") or ""),
    }
    if choices.get("experiment"):
        tags["experiment_preset"] = str(choices["experiment"])
    if choices.get("hparams_search"):
        tags["hparams_search"] = str(choices["hparams_search"])
    study_name = OmegaConf.select(hydra_cfg, "sweeper.study_name", default=None)
    if OmegaConf.select(hydra_cfg, "sweeper.storage", default=None) and study_name:
        tags["study_name"] = str(study_name)  # a shared Optuna study: its trials may come from several sweeps
    name = f"sweep-{preset}" if preset else "sweep " + " ".join(o for o in overrides if "," in o)
    sweep_params = {f"sweep.params.{key}": str(value) for key, value in (params or {}).items()}
    return name.strip()[:250], tags, sweep_params


def swept_values(overrides: str, all_overrides: list[str]) -> dict[str, str]:
    """``best.<key>`` params: the job's overrides whose value differs between the sweep's jobs
    (all of them when there is one job)."""
    parse = lambda text: dict(o.partition("=")[::2] for o in text.split() if "=" in o)  # noqa: E731
    mine, everyone = parse(overrides), [parse(text) for text in all_overrides]
    varying = {key for key in mine if len({job.get(key) for job in everyone}) > 1} if len(everyone) > 1 else set(mine)
    return {f"best.{key.lstrip('+~')}": value for key, value in mine.items() if key in varying}


def _terminated(signum, frame) -> None:
    raise SystemExit(143)  # the exit hook ends the parent run; a resumed sweep continues it


class MLflowSweepCallback(Callback):
    """Groups a Hydra multirun into one MLflow parent run; see the module docstring.

    ``metric`` picks the best job (default: the sweep's ``training.monitor``); ``mode`` is ``max`` or
    ``min`` (default: ``training.monitor_mode``, or min for losses).
    """

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        if mode not in ("max", "min", None):
            raise ValueError(f"MLflowSweepCallback mode must be max or min, got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.tracking_uri: str | None = None
        self.parent_run_id: str | None = None
        self._open = False

    # ------------------------------------------------------------------ hooks (main process)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from bilstm_exp.errors import exit_on_user_error
        from bilstm_exp.tracking import store
        from bilstm_exp.tracking.session import process_tags

        # Hydra turns callback exceptions into warnings: exiting here is what stops the sweep
        with exit_on_user_error():
            cfg = tracking_config(config)
            root = Path.cwd()
            experiment_id = store.setup(cfg, root)  # creates and migrates the store once
            self.tracking_uri = store.resolve_uri(cfg, root)
            client = MlflowClient(self.tracking_uri)
            name, tags, params = sweep_description(config)
            tags = {key: store.redact_text(str(value)) for key, value in tags.items()}
            resumed = (parent_to_resume(client, experiment_id, cfg.experiment_name, tags["sweep_overrides"])
                       if resume_requested(config) else None)
        self._resolve_metric(config)
        if resumed is not None:  # reopened: its finished jobs are skipped, interrupted ones resume
            self.parent_run_id = resumed.info.run_id
            client.update_run(self.parent_run_id, "RUNNING")
            for key in ("best_run_id", "best_run_name", "best_overrides", "registry.skipped", "registry.version",
                        "failure_reason", "error"):  # the earlier attempt's end: decided again at this one's
                if key in resumed.data.tags:
                    client.delete_tag(self.parent_run_id, key)
            count = int(resumed.data.tags.get(RESUMED_TAG, "0") or 0) + 1
            store.log_batch(client, self.parent_run_id, tags=store.as_tags({**process_tags(), RESUMED_TAG: count}))
            name = resumed.info.run_name or name
        else:
            run = client.create_run(experiment_id, run_name=name, tags={**tags, **process_tags()})
            self.parent_run_id = run.info.run_id
            if params:
                store.log_batch(client, self.parent_run_id, params=store.as_params(params))
        self._open = True
        os.environ[PARENT_ENV] = self.parent_run_id
        atexit.register(self._end_if_open)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # between jobs too, SIGTERM ends the parent, not
            try:  # the process alone (each run handles it while it trains)
                signal.signal(signal.SIGTERM, _terminated)
            except ValueError:  # not the main thread: leave signals alone
                pass
        print(store.redact_text(f"{PREFIX} {'resuming sweep' if resumed else 'sweep'} parent run "
                                f"{self.parent_run_id} ({name}) in experiment '{cfg.experiment_name}'"), flush=True)

    def _resolve_metric(self, config: DictConfig) -> None:
        from bilstm_exp.config.schema import metric_mode

        monitor = OmegaConf.select(config, "training.monitor", default=None)
        if self.metric is None:
            self.metric = str(monitor or "val/loss")
            self.mode = self.mode or OmegaConf.select(config, "training.monitor_mode", default=None)
        self.mode = self.mode or metric_mode(self.metric)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._open:
            return
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        self._finish(Path(str(sweep_dir)) if sweep_dir else None, sweep_raised=False)

    def _end_if_open(self) -> None:
        if self._open:
            self._finish(None, sweep_raised=True)

    # ------------------------------------------------------------------ summary

    def _finish(self, sweep_dir: Path | None, sweep_raised: bool) -> None:
        from mlflow.tracking import MlflowClient

        from bilstm_exp.tracking.store import child_runs

        self._open = False
        os.environ.pop(PARENT_ENV, None)
        client = MlflowClient(self.tracking_uri)
        parent = self.parent_run_id
        children = child_runs(client, parent)
        replaced = {run.data.tags.get(REPLACES_TAG) for run in children}  # a resumed sweep restarted these jobs
        children = [run for run in children if run.info.run_id not in replaced]  # every job counted once
        finished = [run for run in children if run.info.status == "FINISHED"]
        failed = len(children) - len(finished)
        client.log_metric(parent, "sweep/jobs_finished", len(finished))
        client.log_metric(parent, "sweep/jobs_failed", failed)
        scored = [(self._score(client, run), run) for run in finished]
        scored = [(value, run) for value, run in scored if value is not None]
        if scored:
            pick = max if self.mode == "max" else min
            value, best = pick(scored, key=lambda item: item[0])
            overrides = best.data.tags.get("hydra_overrides", "")
            client.set_tag(parent, "best_run_id", best.info.run_id)
            client.set_tag(parent, "best_run_name", best.info.run_name or "")
            client.set_tag(parent, "best_overrides", overrides)
            client.log_metric(parent, f"best/{self.metric}", value)
            best_params = swept_values(overrides, [run.data.tags.get("hydra_overrides", "") for run in children])
            self._log_best_params(client, best_params, final=not sweep_raised)
            self._log_best_config(client, best.info.run_id)
            print(f"[bilstm-exp] sweep {parent}: {len(finished)}/{len(children)} jobs finished; best "
                  f"{self.metric}={value:.4f} in run {best.info.run_id} ({overrides})", flush=True)
            if not sweep_raised:
                self._register_best(client, best)
        if sweep_dir is not None and (sweep_dir / "optimization_results.yaml").is_file():
            client.log_artifact(parent, str(sweep_dir / "optimization_results.yaml"), "best")
        ok = not sweep_raised and failed == 0 and len(finished) > 0
        client.set_terminated(parent, "FINISHED" if ok else "FAILED")
        from bilstm_exp.training import summary  # the jobs table: status, overrides, metric; the best one marked *

        summary.report_sweep(client, parent, children, self.metric, self.mode, best if scored else None,
                             lambda run: self._score(client, run))
        if not ok:
            print(f"[bilstm-exp] sweep {parent} ended FAILED: {failed} of {len(children)} jobs failed"
                  + (" and the sweeper stopped" if sweep_raised else ""), file=sys.stderr, flush=True)

    def _log_best_params(self, client, best_params: dict[str, str], final: bool) -> None:
        """``best.<key>`` params, once the sweep has run to its end (a stopped sweep may be resumed and
        find another best; MLflow params cannot change). A param an earlier attempt of a resumed sweep
        logged with another value stays; the ``best_*`` tags are current."""
        from bilstm_exp.tracking.store import as_params, log_batch

        if not final:
            return
        logged = client.get_run(self.parent_run_id).data.params
        stale = sorted(key for key, value in best_params.items() if key in logged and logged[key] != str(value))
        log_batch(client, self.parent_run_id, params=as_params(
            {key: value for key, value in best_params.items() if key not in logged}))
        if stale:
            print(f"bilstm-exp: warning: sweep {self.parent_run_id}: params {', '.join(stale)} keep an earlier "
                  "attempt's values (MLflow params cannot change); the tags best_run_id and best_overrides are "
                  "current", file=sys.stderr, flush=True)

    def _score(self, client, run) -> float | None:
        """The child's final ``metric`` (its kept weights'; a CV run's ``cv/<metric>_mean``); a run
        from before final values were logged falls back to its best epoch."""
        import math

        from bilstm_exp.tracking.store import best_value

        metrics = run.data.metrics
        value = metrics.get(f"cv/{self.metric}_mean", metrics.get(self.metric))
        if value is None or not math.isfinite(value):
            return best_value(client, run, self.metric, self.mode)
        return value

    def _register_best(self, client, best) -> None:
        """tracking.sweep_registers=best: register the best child's logged model (from this one
        process, after every job has ended), with the child's own registry settings."""
        import mlflow

        from bilstm_exp.tracking import model_registry as registry

        params, tags = best.data.params, best.data.tags
        if params.get("tracking.sweep_registers", "best") != "best":
            return  # all: every job registered itself; none: nothing
        reason = registry.skip_reason(params.get("tracking.register_model", "auto"), params.get("data.max_samples"))
        if tags.get("cv.role") == "parent":
            reason = "the best job is a cross-validation run: no single model; train its config without data.folds"
        models = [] if reason else client.search_logged_models(
            [best.info.experiment_id], filter_string=f"source_run_id='{best.info.run_id}'")
        if not reason and not models:
            reason = "the best job logged no model"
        if reason:
            client.set_tag(self.parent_run_id, registry.SKIPPED_TAG, reason)
            print(f"[bilstm-exp] sweep {self.parent_run_id}: best run not registered: {reason}", flush=True)
            return
        name = params.get("tracking.registered_model_name", "bilstm-sentiment")
        metric = params.get("tracking.champion_metric") or self.metric
        greater = params.get("tracking.champion_greater_is_better", str(self.mode == "max")) == "True"
        mlflow.set_tracking_uri(self.tracking_uri)  # mlflow.register_model uses the fluent URI
        version = registry.register(client, f"models:/{models[0].model_id}", name, best.info.run_id,
                                    dict(best.data.metrics), metric, greater)
        client.set_tag(self.parent_run_id, registry.VERSION_TAG, f"{name}/{version.version}")
        decision = client.get_model_version(name, version.version).tags.get("champion.decision", "")
        print(f"[bilstm-exp] sweep {self.parent_run_id}: registered the best run as {name} version "
              f"{version.version} (champion: {decision})", flush=True)

    def _log_best_config(self, client, run_id: str) -> None:
        """Copy the best child's resolved config.yaml onto the parent as best/config.yaml."""
        with tempfile.TemporaryDirectory(prefix="bilstm-exp-sweep-") as tmp:
            try:
                path = client.download_artifacts(run_id, "config.yaml", tmp)
            except Exception:  # the child logged no config: nothing to copy
                return
            client.log_artifact(self.parent_run_id, path, "best")
