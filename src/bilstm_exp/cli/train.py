"""`bilstm-exp train` and `python -m bilstm_exp`: from Hydra overrides to one run (or a cross-validation).

``bilstm-exp train OVERRIDES`` composes the configs itself (:func:`bilstm_exp.config.compose.compose`);
``python -m bilstm_exp`` lets ``@hydra.main`` compose them, which also runs sweeps (``-m``), and calls
:func:`run_from_hydra` once per job. Both check the overrides first (:func:`check_overrides`), validate
the config, then :func:`train`, which imports TensorFlow only once the config and the data are valid.
``bilstm-exp train --params params.yaml`` is the DVC train stage instead (:mod:`bilstm_exp.stages`).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from bilstm_exp import extras
from bilstm_exp.config.compose import compose, primary_config
from bilstm_exp.config.schema import ExperimentConfig, validate
from bilstm_exp.errors import ConfigError, exit_on_user_error

INTERRUPTED = "stopped before a run was started; nothing was recorded"


def interrupted(run_id: str | None, root: Path | None = None) -> str:
    """What an interrupted `train` tells the user, naming the real run and its checkpoint."""
    if not run_id:
        return INTERRUPTED
    folder = Path("checkpoints") / run_id
    if ((root or Path.cwd()) / folder / "state.json").is_file():
        return (f"run {run_id} ended KILLED; its last finished epoch is checkpointed in {folder}/. Continue it "
                f"with the same overrides plus training.resume=true (or training.resume=true "
                f"training.resume_run_id={run_id})")
    return f"run {run_id} ended KILLED before its first epoch was checkpointed; nothing to resume, start it again"


def train(config: ExperimentConfig, overrides: list[str], **run_kwargs):
    """One run, or with data.folds a cross-validation (a parent run and one child per fold)."""
    from bilstm_exp.models import vector_files
    from bilstm_exp.training import distribute, summary  # no TensorFlow: bad input answers in seconds

    with exit_on_user_error(interrupted=INTERRUPTED):
        vector_files.check(config.model)  # model.pretrained_embeddings readable and as wide, before the store
        chief = distribute.is_chief(config)  # a bad TF_CONFIG stops here, before the store is touched
        if chief and not config.data.folds and "prepared" not in run_kwargs:
            run_kwargs["prepared"] = summary.start(config, Path.cwd())  # before any experiment or run exists
    from bilstm_exp.training import (
        runner as training,  # imports TensorFlow: only after the config and the data are valid
    )

    with exit_on_user_error(interrupted=INTERRUPTED):
        try:
            if config.data.folds:
                from bilstm_exp.training import crossval

                return crossval.run(config, root=Path.cwd(), overrides=overrides, **run_kwargs)
            result = training.run(config, root=Path.cwd(), overrides=overrides, **run_kwargs)
            if chief:  # a multi_worker worker records nothing: the chief's run is the record
                # test metrics, champion, where to look
                summary.report_run(config, Path.cwd(), result.run_id, result.kept_offline)
            return result
        except KeyboardInterrupt as interrupt:  # the session put the run id on it
            with exit_on_user_error(interrupted=interrupted(getattr(interrupt, "run_id", None))):
                raise


def objective(config: ExperimentConfig, result, names: list[str] | None = None) -> float | list[float]:
    """What sweepers optimise: training.monitor of the kept weights (its final, logged value), or its
    cross-validation mean ``cv/<monitor>_mean`` with data.folds. ``result``: a RunResult, or an MLflow
    run (a resumed sweep's job that had FINISHED: its latest logged values). ``names``: the metrics of a
    multi-objective search (``hydra.sweeper.objectives``), whose values are returned in that order."""
    metrics = result.data.metrics if hasattr(result, "data") else result.metrics
    values = [float(metrics.get(f"cv/{key}_mean" if config.data.folds else key, float("nan")))
              for key in names or [config.training.monitor]]
    return values if names else values[0]


def check_sweeper_direction(config: ExperimentConfig, direction) -> None:
    """An Optuna ``hydra.sweeper.direction`` must agree with training.monitor_mode."""
    wanted = "minimize" if config.training.monitor_mode == "min" else "maximize"
    if isinstance(direction, str) and direction in ("minimize", "maximize") and direction != wanted:
        raise ConfigError(f"hydra.sweeper.direction: {direction} but the objective, training.monitor="
                          f"{config.training.monitor}, is {'minimised' if wanted == 'minimize' else 'maximised'}. "
                          f"Fix: hydra.sweeper.direction={wanted}, or pick a training.monitor to {direction[:-3]}")


def run_from_hydra(cfg: DictConfig) -> float | list[float] | None:
    """Body of the @hydra.main entry point: validate, run, return the value sweepers optimise."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from bilstm_exp.training.sweep_plan import plan_job  # a multirun job: child of the sweep's parent run

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    with exit_on_user_error():
        config = validate(cfg)
        check_sweeper_direction(config, OmegaConf.select(hydra_cfg, "sweeper.direction", default=None))
        job = plan_job(config, overrides)  # a resumed sweep: skip a finished job, resume an interrupted one
    names = list(OmegaConf.select(hydra_cfg, "sweeper.objectives", default=None) or []) or None  # multi-objective
    if job.finished is not None:
        return objective(config, job.finished, names)
    return objective(config, train(config, job.overrides, **job.run_kwargs), names)


def check_overrides(args: list[str]) -> None:
    """``data.path=...`` without ``data=file`` (a key of another option of its group): name the option
    to add, where Hydra would only say "Key 'path' is not in struct"."""
    import yaml

    from bilstm_exp.config.overrides import check_option_keys

    defaults: dict[str, str] = {}
    for entry in (yaml.safe_load(primary_config().read_text(encoding="utf-8")) or {}).get("defaults", []):
        if isinstance(entry, dict):
            defaults.update({str(k): str(v) for k, v in entry.items()})
    with exit_on_user_error():
        extras.check_overrides(args)  # hydra/launcher=submitit_local without the [cluster] extra: say which
        check_option_keys([a for a in args if "=" in a and not a.startswith("-")], defaults)


def check_working_folder(args: list[str], min_free_bytes: int = 1 << 20) -> None:
    """Hydra writes each run's config under ./outputs before any of this project's code runs: a working
    folder that is read-only or full would end in Hydra's traceback, so it is refused here, in one line.
    A run that names its own output folder (hydra.run.dir, hydra.sweep.dir) is left to it."""
    if any(a.lstrip("+~").startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args):
        return
    folder = Path.cwd()
    if not os.access(folder, os.W_OK):
        problem = "is not writable"
    elif shutil.disk_usage(folder).free < min_free_bytes:
        problem = "is on a full disk"
    else:
        return
    raise ConfigError(f"the working folder {folder} {problem}; each run writes its config and log under "
                      "outputs/ there. Fix: run from a writable folder, or name one with hydra.run.dir=DIR "
                      "(hydra.sweep.dir=DIR with -m)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=attention training.epochs=1")
    parser.add_argument("--params", default=None, metavar="PATH",
                        help="run as the DVC train stage: read PATH (params.yaml), train on data/prepared/, "
                             "write artifacts/model/ and reports/train/")


def command(args: argparse.Namespace) -> None:
    """One run from the overrides, or with ``--params`` the DVC train stage (whose file holds every value)."""
    if args.params is None:
        check_overrides(args.overrides)
        train(validate(compose(args.overrides)), args.overrides)
        return
    if args.overrides:
        raise ConfigError("train --params reads every value from the params file, so overrides are not "
                          f"allowed. Fix: `bilstm-exp compose-params {' '.join(args.overrides)}` "
                          "or `dvc exp run -S ...`")
    from bilstm_exp.stages import commands as stages

    stages.run_stage("train", args.params)
