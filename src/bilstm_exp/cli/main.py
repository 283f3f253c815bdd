"""`bilstm-exp`, the command line: :func:`main` builds the parser from the table of subcommands
(:mod:`bilstm_exp.cli.commands`) and runs the chosen one inside the one error boundary
(:func:`bilstm_exp.errors.exit_on_user_error`): bad input prints one line naming the problem and the
fix and exits 2, with no traceback; Ctrl-C and SIGTERM exit 130 and 143 with one line.
"""

from __future__ import annotations

import argparse

from bilstm_exp.errors import exit_on_user_error

DESCRIPTION = """\
Hydra-configured BiLSTM experiments, tracked in MLflow, run as DVC stages.

  bilstm-exp init                           set up conf/, dvc.yaml and params.yaml in your repository
  bilstm-exp train model=attention seed=1   one run (python -m bilstm_exp ... the same, and sweeps with -m)
  bilstm-exp compare                        which configuration is best, by more than the noise
  bilstm-exp command --help                 the options of one command

Bad input prints one line naming the problem and the fix, and exits 2."""


def parser() -> argparse.ArgumentParser:
    from bilstm_exp.cli.commands import add_commands

    top = argparse.ArgumentParser(prog="bilstm-exp", description=DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(top.add_subparsers(dest="command", metavar="command", required=True))
    return top


def main(argv: list[str] | None = None) -> None:
    from bilstm_exp import quiet
    from bilstm_exp.cli.train import INTERRUPTED

    quiet.setup()  # first: before anything imports TensorFlow or MLflow (BILSTM_EXP_LOG_LEVEL=verbose: all logs)
    args = parser().parse_args(argv)
    with exit_on_user_error(interrupted=INTERRUPTED if args.command == "train" else "stopped"):
        args.func(args)


if __name__ == "__main__":
    main()
