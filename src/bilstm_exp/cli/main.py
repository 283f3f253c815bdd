"""`bilstm-exp` subcommands and the glue between Hydra and a run.

    bilstm-exp init [DIR]                    set up bilstm-exp in your repository: conf/, dvc.yaml, params.yaml
    bilstm-exp train [overrides...]          one run (same as python -m bilstm_exp overrides...)
    bilstm-exp prepare|train|evaluate --params params.yaml   the DVC stages
    bilstm-exp compose-params [overrides...] conf/ -> params.yaml
    bilstm-exp predict --model URI TEXT...   one prediction per text (or --file)
    bilstm-exp compare [--parent RUN_ID]     rank configurations: mean ±95% CI, a verdict on the noise
    bilstm-exp server start|stop|user        a local team tracking server (PostgreSQL + MLflow basic auth)
    bilstm-exp sync --from DIR --to URI      upload a run kept offline while the server was down
    bilstm-exp runs --stale [--close]        runs a dead process (kill -9) left RUNNING; close them KILLED
    bilstm-exp promote --model NAME --version N --reason TEXT   move the champion alias by hand
    bilstm-exp register --run RUN_ID         register a finished run's model (its store refused it at the time)
    bilstm-exp bench [--quick]               the benchmarks quoted in the README
    bilstm-exp pretrain-embeddings --input FILE --out vectors.txt   word vectors from your own text

Every command runs inside one error boundary (:func:`bilstm_exp.errors.exit_on_user_error`): bad
input prints one line naming the problem and the fix and exits 2.
"""

from __future__ import annotations

import argparse
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
        check_option_keys([a for a in args if "=" in a and not a.startswith("-")], defaults)
        extras.check_overrides(args)  # hydra/launcher=submitit_local without the [cluster] extra: say which


def _train_command(args: argparse.Namespace) -> None:
    check_overrides(args.overrides)
    train(validate(compose(args.overrides)), args.overrides)


def _promote_command(args: argparse.Namespace) -> None:
    import getpass
    import os

    from bilstm_exp.tracking import model_registry as registry
    from bilstm_exp.tracking import store

    client = store.open_store(store.existing_store(args.tracking_uri), write=True)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    version = registry.promote(client, args.model, args.version, args.reason, user)
    previous = version.tags.get("champion.previous_version", "none")
    print(f"{args.model}@{registry.CHAMPION} -> version {version.version} (was {previous}); promoted by {user}: "
          f"{args.reason.strip()}")


def parser() -> argparse.ArgumentParser:
    from bilstm_exp.analysis import bench, compare
    from bilstm_exp.cli import init
    from bilstm_exp.models import embeddings
    from bilstm_exp.serving import predict
    from bilstm_exp.stages import commands as stages
    from bilstm_exp.team import cli as team_cli
    from bilstm_exp.tracking import offline, register_command, runs

    top = argparse.ArgumentParser(prog="bilstm-exp", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train and evaluate one configuration, tracked in MLflow")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=attention training.epochs=1")
    p.set_defaults(func=_train_command)
    stages.add_train_params_option(p)
    stages.add_commands(sub)  # the DVC stages: prepare, evaluate; compose-params
    p = sub.add_parser("predict", help="predict texts with a logged or registered model")
    p.add_argument("--model", default="models:/bilstm-sentiment@champion", help="model URI")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's own default)")
    p.add_argument("--file", default=None, help="a text file (one text per line) or a CSV with a text column")
    p.add_argument("--encoding", default="utf-8", help="the file's text encoding, e.g. latin-1 (default: utf-8)")
    p.add_argument("texts", nargs="*")
    p.set_defaults(func=predict.command)
    p = sub.add_parser("compare", help="rank configurations: mean ±95%% CI, a verdict on the noise, plot, report")
    compare.add_arguments(p)
    p.set_defaults(func=compare.command)
    offline.add_command(sub)  # bilstm-exp sync: upload runs kept offline while the server was down
    p = sub.add_parser("promote", help="move the champion alias to a model version by hand, recording who and why")
    p.add_argument("--model", required=True, help="registered model name, e.g. bilstm-sentiment")
    p.add_argument("--version", required=True, type=int, help="the version to serve as champion")
    p.add_argument("--reason", required=True, help="why (recorded as the version's champion.reason tag)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.set_defaults(func=_promote_command)
    register_command.add_command(sub)  # bilstm-exp register --run ID: a run's model, after its store refused it
    init.add_command(sub)  # bilstm-exp init: conf/, dvc.yaml, params.yaml in the user's repository
    embeddings.add_command(sub)  # bilstm-exp pretrain-embeddings: word2vec/fastText vectors from your text
    runs.add_command(sub)  # bilstm-exp runs --stale --close: runs a dead process left RUNNING
    team_cli.add_command(sub)  # bilstm-exp server start|stop|user: a local team server (PostgreSQL + basic auth)
    p = sub.add_parser("bench", help=bench.HELP)
    bench.add_arguments(p)
    p.set_defaults(func=bench.command)
    return top


def main(argv: list[str] | None = None) -> None:
    from bilstm_exp import quiet

    quiet.setup()  # first: before anything imports TensorFlow or MLflow (BILSTM_EXP_LOG_LEVEL=verbose: all logs)
    args = parser().parse_args(argv)
    with exit_on_user_error(interrupted=INTERRUPTED if args.command == "train" else "stopped"):
        args.func(args)


if __name__ == "__main__":
    main()
