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

from bilstm_exp.errors import ConfigError
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


def add_train_params_option(train_parser: argparse.ArgumentParser) -> None:
    """`bilstm-exp train --params params.yaml`: the DVC train stage (no Hydra composition)."""
    train_parser.add_argument("--params", default=None, metavar="PATH",
                              help="run as the DVC train stage: read PATH (params.yaml), train on data/prepared/, "
                                   "write artifacts/model/ and reports/train/")
    plain = train_parser.get_default("func")

    def command(args: argparse.Namespace) -> None:
        if args.params is None:
            return plain(args)
        if args.overrides:
            raise ConfigError("train --params reads every value from the params file, so overrides are not "
                              f"allowed. Fix: `bilstm-exp compose-params {' '.join(args.overrides)}` "
                              "or `dvc exp run -S ...`")
        run_stage("train", args.params)

    train_parser.set_defaults(func=command)


def add_commands(sub) -> None:
    """The `prepare`, `evaluate` and `compose-params` subcommands."""
    for name, text in (("prepare", "DVC stage: the data source -> data/prepared/ and reports/prepare/"),
                       ("evaluate", "DVC stage: test metrics and plots in reports/evaluate/, logged to the "
                                    "train stage's MLflow run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--params", default=str(PARAMS), metavar="PATH", help="the params file (default: params.yaml)")
        p.set_defaults(func=lambda args, stage=name: run_stage(stage, args.params))
    p = sub.add_parser("compose-params", help="compose conf/ (with Hydra overrides) into params.yaml for `dvc repro`")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=attention clipping=norm")
    p.set_defaults(func=_compose_command)


def _compose_command(args: argparse.Namespace) -> None:
    path = compose_params(Path.cwd(), list(args.overrides))
    print(f"wrote {path.name} from conf/{' with ' + ' '.join(args.overrides) if args.overrides else ''}")
