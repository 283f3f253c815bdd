"""Every `bilstm-exp` subcommand in one table: its name, its one-line help and where it lives.

One convention for all of them: the module that owns a command's work also owns its command line,
as two functions,

* ``add_arguments(parser)``: the command's arguments (and ``parser.description`` when the one-line
  help is not enough for ``bilstm-exp NAME --help``; written pre-wrapped, it is printed as it is);
* a command function ``f(args)``: does the work, prints the result and raises a
  :class:`~bilstm_exp.errors.UserError` for bad input (never ``print`` + ``SystemExit``);

and a row here. :func:`bilstm_exp.cli.main.main` runs the command inside the one error boundary.
A module imported here must stay light (no MLflow, no TensorFlow at import): ``bilstm-exp --help``
imports all of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from bilstm_exp.analysis import bench, compare
from bilstm_exp.cli import init, train
from bilstm_exp.models import embeddings
from bilstm_exp.serving import predict
from bilstm_exp.stages import commands as stages
from bilstm_exp.team import cli as team
from bilstm_exp.tracking import register_command, runs, sync


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS = (
    Command("init", "set up bilstm-exp in your repository: conf/, dvc.yaml, params.yaml",
            init.add_arguments, init.command),
    Command("train", "train and evaluate one configuration, tracked in MLflow (--params: the DVC train stage)",
            train.add_arguments, train.command),
    Command("prepare", "DVC stage: the data source -> data/prepared/ and reports/prepare/",
            stages.add_stage_arguments, stages.stage_command),
    Command("evaluate", "DVC stage: test metrics and plots in reports/evaluate/, logged to the train stage's "
                        "MLflow run", stages.add_stage_arguments, stages.stage_command),
    Command("compose-params", "compose conf/ (with Hydra overrides) into params.yaml for `dvc repro`",
            stages.add_compose_arguments, stages.compose_command),
    Command("predict", "predict texts with a logged or registered model", predict.add_arguments, predict.command),
    Command("compare", "rank configurations: mean ±95%% CI, a verdict on the noise, plot, report",
            compare.add_arguments, compare.command),
    Command("runs", "list recent runs (status, name, key metrics, id); --stale: those a dead process left "
                    "RUNNING; --close: end them KILLED", runs.add_arguments, runs.command),
    Command("sync", "upload runs kept offline (the tracking server was down) to a server",
            sync.add_arguments, sync.command),
    Command("register", "register a finished run's model (e.g. after its store refused it)",
            register_command.add_arguments, register_command.command),
    Command("promote", "move the champion alias to a model version by hand, recording who and why",
            register_command.add_promote_arguments, register_command.promote_command),
    Command("server", "start a local team tracking server (PostgreSQL + MLflow basic auth + proxied artifacts)",
            team.add_arguments, team.command),
    Command("pretrain-embeddings", "train word2vec or fastText vectors on your own unlabelled text",
            embeddings.add_arguments, embeddings.command),
    Command("bench", "measure tracking overhead, bucketing, baseline speed-up, peak fraction, serving latency, "
                     "cost grid", bench.add_arguments, bench.command),
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """One parser per row; ``args.func`` is the row's command, ``args.command`` its name."""
    for command in COMMANDS:
        parser = subparsers.add_parser(command.name, help=command.help,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(parser)
        parser.set_defaults(func=command.run)
