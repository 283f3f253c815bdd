"""Hydra multirun -> one MLflow parent run with one nested child run per job.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``; it only acts in MULTIRUN mode
(``python -m bilstm_exp -m ...``), so single runs are unaffected:

* ``on_multirun_start`` (main process, before the sweeper and launcher exist) creates and
  migrates the tracking store and the experiment once, so parallel workers never race on the
  schema migration, then opens the parent run (tags: the sweep's overrides, sweeper, launcher,
  experiment preset) and puts its id in the environment variable :data:`PARENT_ENV`. Launcher
  workers started afterwards (joblib/loky processes included) inherit it.
* Each job (:func:`job_run_kwargs`, called by ``cli.run_from_hydra``) becomes a child run of it.
* ``on_multirun_end`` finds the best child by ``metric`` (best epoch, as the sweepers optimise),
  logs it on the parent (tags ``best_run_id`` and ``best_overrides``, params ``best.<key>``,
  metric ``best/<metric>``, artifact ``best/config.yaml``) and ends the parent FINISHED, or
  FAILED when any job failed. When a failed job makes the sweeper raise, Hydra skips
  ``on_multirun_end``; an exit hook then ends the parent FAILED instead of leaving it RUNNING.

The callback is pickled to joblib workers with the launcher's context, so it holds only strings.
This module does not import TensorFlow.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT_ENV = "BILSTM_EXP_SWEEP_PARENT_RUN_ID"
SWEEP_TAG = "bilstm_exp.sweep"  # "parent" on a sweep's parent run


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


def tracking_config(config: DictConfig):
    """The validated ``tracking`` group of the sweep's base config."""
    from bilstm_exp.config import TrackingConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrackingConfig), config.tracking))


def sweep_description(config: DictConfig) -> tuple[str, dict[str, str], dict[str, str]]:
    """(run name, tags, params) describing a sweep from its Hydra config."""
    hydra_cfg = config.hydra
    overrides = [str(o) for o in OmegaConf.select(hydra_cfg, "overrides.task", default=[]) or []]
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


class MLflowSweepCallback(Callback):
    """Groups a Hydra multirun into one MLflow parent run; see the module docstring.

    ``metric`` picks the best job (``val/accuracy`` by default); ``mode`` is ``max`` or ``min``.
    """

    def __init__(self, metric: str = "val/accuracy", mode: str = "max") -> None:
        if mode not in ("max", "min"):
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

        # Hydra turns callback exceptions into warnings: exiting here is what stops the sweep
        with exit_on_user_error():
            cfg = tracking_config(config)
            root = Path.cwd()
            experiment_id = store.setup(cfg, root)  # creates and migrates the store once
        self.tracking_uri = store.resolve_uri(cfg, root)
        name, tags, params = sweep_description(config)
        client = MlflowClient(self.tracking_uri)
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        self.parent_run_id = run.info.run_id
        self._open = True
        if params:
            store.log_batch(client, self.parent_run_id, params=store.as_params(params))
        os.environ[PARENT_ENV] = self.parent_run_id
        atexit.register(self._end_if_open)
        print(f"[bilstm-exp] sweep parent run {self.parent_run_id} ({name}) in experiment "
              f"'{cfg.experiment_name}'", flush=True)

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

        from bilstm_exp.tracking.store import as_params, best_value, child_runs, log_batch

        self._open = False
        os.environ.pop(PARENT_ENV, None)
        client = MlflowClient(self.tracking_uri)
        parent = self.parent_run_id
        children = child_runs(client, parent)
        finished = [run for run in children if run.info.status == "FINISHED"]
        failed = len(children) - len(finished)
        client.log_metric(parent, "sweep/jobs_finished", len(finished))
        client.log_metric(parent, "sweep/jobs_failed", failed)
        scored = [(best_value(client, run, self.metric, self.mode), run) for run in finished]
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
            log_batch(client, parent, params=as_params(best_params))
            self._log_best_config(client, best.info.run_id)
            print(f"[bilstm-exp] sweep {parent}: {len(finished)}/{len(children)} jobs finished; best "
                  f"{self.metric}={value:.4f} in run {best.info.run_id} ({overrides})", flush=True)
        if sweep_dir is not None and (sweep_dir / "optimization_results.yaml").is_file():
            client.log_artifact(parent, str(sweep_dir / "optimization_results.yaml"), "best")
        ok = not sweep_raised and failed == 0 and len(finished) > 0
        client.set_terminated(parent, "FINISHED" if ok else "FAILED")
        if not ok:
            print(f"[bilstm-exp] sweep {parent} ended FAILED: {failed} of {len(children)} jobs failed"
                  + (" and the sweeper stopped" if sweep_raised else ""), file=sys.stderr, flush=True)

    def _log_best_config(self, client, run_id: str) -> None:
        """Copy the best child's resolved config.yaml onto the parent as best/config.yaml."""
        with tempfile.TemporaryDirectory(prefix="bilstm-exp-sweep-") as tmp:
            try:
                path = client.download_artifacts(run_id, "config.yaml", tmp)
            except Exception:  # the child logged no config: nothing to copy
                return
            client.log_artifact(self.parent_run_id, path, "best")
