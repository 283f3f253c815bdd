"""The DVC pipeline's stages (dvc.yaml) as `bilstm-exp` commands: prepare -> train -> evaluate.

    bilstm-exp prepare  --params params.yaml   data/prepared/, reports/prepare/        (stages.prepare)
    bilstm-exp train    --params params.yaml   artifacts/model/, reports/train/        (stages.train: one MLflow run)
    bilstm-exp evaluate --params params.yaml   reports/evaluate/, logged to train's run (stages.evaluate)
    bilstm-exp compose-params [OVERRIDES]      the configs -> params.yaml, as `dvc exp run -S` does (stages.params)

Each stage reads params.yaml, checked against the configs it was composed from (``stages.params``),
and writes its outputs atomically (``stages.outputs``). TensorFlow and MLflow are imported only inside
the stages that need them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bilstm_exp.stages.evaluate import evaluate_stage
from bilstm_exp.stages.params import PARAMS, compose_params, load_params
from bilstm_exp.stages.prepare import prepare_stage
from bilstm_exp.stages.train import train_stage

STAGES = {"prepare": prepare_stage, "train": train_stage, "evaluate": evaluate_stage}


def run_stage(name: str, params: str) -> None:
    from bilstm_exp import quiet

    config = load_params(Path(params))
    quiet.setup(config.training.log_level)  # before the stage imports TensorFlow or MLflow
    STAGES[name](config)


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp prepare|evaluate``: the stage reads only the params file."""
    parser.add_argument("--params", default=str(PARAMS), metavar="PATH", help="the params file (default: params.yaml)")


def stage_command(args: argparse.Namespace) -> None:
    """The stage the subcommand names (``args.command``: prepare or evaluate; train's own command
    calls :func:`run_stage` when given ``--params``)."""
    run_stage(args.command, args.params)


def add_compose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=attention clipping=norm")


def compose_command(args: argparse.Namespace) -> None:
    path = compose_params(Path.cwd(), list(args.overrides))
    print(f"wrote {path.name} from conf/{' with ' + ' '.join(args.overrides) if args.overrides else ''}")
