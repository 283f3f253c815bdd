"""Run the README's example commands in a fresh folder and print their real output as Markdown,
so the README shows what a user gets (issue 14: examples must be real output).

    .venv/bin/python scripts/readme_examples.py              # the default run (about a minute), then the rest
    .venv/bin/python scripts/readme_examples.py --quick      # training.epochs=1: checks the commands, not the numbers
    .venv/bin/python scripts/readme_examples.py --keep DIR   # run in DIR and keep it (for mlflow ui)

Each example is printed as ``$ command`` followed by its stdout and stderr, with the temporary
folder shown as ``.``. The environment is a new user's: no MLFLOW_TRACKING_URI, quiet logs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = [sys.executable, "-m", "bilstm_exp"]
CLI = [sys.executable, "-m", "bilstm_exp.cli.main"]

# (title, shown command, argv); texts for predict use words the default (synthetic) data has
EXAMPLES = [
    ("Bad input stops before TensorFlow is imported",
     "python -m bilstm_exp model.dropout=1.5", [*PY, "model.dropout=1.5"]),
    ("A key of another option", "python -m bilstm_exp data.path=reviews.csv", [*PY, "data.path=reviews.csv"]),
    ("The default run (make run)", "python -m bilstm_exp", PY),
    ("Predict with the champion",
     'bilstm-exp predict --model models:/bilstm-sentiment@champion "a great and moving film" "dull and tedious" '
     '"a fine film"',
     [*CLI, "predict", "--model", "models:/bilstm-sentiment@champion", "a great and moving film",
      "dull and tedious", "a fine film"]),
    ("Compare the runs", "bilstm-exp compare", [*CLI, "compare"]),
]


def run(argv: list[str], cwd: Path, timeout: float) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BILSTM_EXP_LOG_LEVEL")}
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    text = (out.stdout + out.stderr).replace(str(cwd.resolve()), ".").replace(str(cwd), ".")
    if out.returncode:
        text += f"(exit code {out.returncode})\n"
    return text, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="train for one epoch (checks the commands only)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="run in DIR and keep it")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilstm-exp-readme-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"<!-- scripts/readme_examples.py{' --quick' if args.quick else ''}, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} -->")
    for title, shown, argv in EXAMPLES:
        if args.quick and argv == PY:
            argv, shown = [*PY, "training.epochs=1"], shown + " training.epochs=1"
        text, seconds = run(argv, folder, args.timeout)
        print(f"\n{title} ({seconds:.0f} s):\n\n```\n$ {shown}\n{text.rstrip()}\n```")
    if args.keep:
        print(f"\nkept in {shlex.quote(str(folder))}", file=sys.stderr)


if __name__ == "__main__":
    main()
