"""What a cross-validation costs beyond training: ``cv_overhead_ratio``, before and after a change.

Runs ``python -m bilstm_exp data=tweets data.folds=K [overrides]`` once per arm per round, the arms
alternating (A B, B A, ...), each in a fresh folder with its own MLflow store. An arm is a name and a
source tree: its ``src/`` goes first on PYTHONPATH, so an older commit checked out with
``git worktree add`` runs in this same environment. Each arm has its own XLA cache folder
(``BILSTM_EXP_XLA_CACHE``), new for this benchmark: an arm's first round compiles, later rounds may load
(a tree without the cache ignores the variable). From each run's store:

- ``cv_overhead_ratio`` = the CV parent run's wall time / the sum of the folds' training time
  (``time/train_s`` of every epoch of every fold): 1.0 would be training only;
- ``time/first_epoch_overhead_s`` of each fold (fold 1, and folds 2..K as a fraction of fold 1's);
- the process's wall time (Python and TensorFlow start included) and ``cv/test/accuracy_mean``.

usage: python benchmarks/cv_overhead.py --arm before=../old --arm after=. [--rounds 1] [--folds 5] [overrides...]
writes benchmarks/cv_overhead.md (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from first_epoch import describe  # noqa: E402  (an arm's commit, without local paths)


def run_once(tree: Path, folds: int, overrides: list[str], cache: Path) -> dict:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="cv-overhead-") as folder:
        env = {**os.environ, "PYTHONPATH": str((tree / "src").resolve()), "TF_CPP_MIN_LOG_LEVEL": "2",
               "BILSTM_EXP_XLA_CACHE": str(cache)}
        env.pop("MLFLOW_TRACKING_URI", None)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bilstm_exp", "data=tweets", f"data.folds={folds}", *overrides],
                              cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"{tree}: the run failed:\n{done.stderr[-2000:]}")
        client = MlflowClient(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("cv.role") == "parent"]
        children = sorted((r for r in runs if r.data.tags.get("cv.role") == "fold"),
                          key=lambda r: int(r.data.tags["fold"]))
        train_s = sum(m.value for c in children for m in client.get_metric_history(c.info.run_id, "time/train_s"))
        cv_s = (parent.info.end_time - parent.info.start_time) / 1000
        return {"cv_s": cv_s, "train_s": train_s, "ratio": cv_s / train_s, "process_s": wall,
                "overheads": [c.data.metrics.get("time/first_epoch_overhead_s", float("nan")) for c in children],
                "epochs": [int(c.data.metrics.get("epochs_trained", 0)) for c in children],
                "accuracy": parent.data.metrics.get("cv/test/accuracy_mean")}


def row(name: str, round_: int, r: dict) -> str:
    first, later = r["overheads"][0], r["overheads"][1:]
    fractions = ", ".join(f"{x / first:.2f}" for x in later) if first else "n/a"
    return (f"| {name} | {round_} | {r['cv_s']:.0f} | {r['train_s']:.0f} | **{r['ratio']:.2f}** | "
            f"{', '.join(f'{x:.1f}' for x in r['overheads'])} | {fractions} | {', '.join(map(str, r['epochs']))} | "
            f"{r['accuracy']:.4f} | {r['process_s']:.0f} |")


def machine_lines(label: str) -> list[str]:
    """The machine's load (``uptime``) and CPU flags (``grep avx /proc/cpuinfo``), as the note asks."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return [f"- {label}: `{uptime}`"]


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(f for f in line.split(":", 1)[1].split() if "avx" in f))
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, help="NAME=SOURCE_TREE (twice)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "cv_overhead.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (default: none)")
    args = parser.parse_args()
    arms = dict(arm.split("=", 1) for arm in args.arm)
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine_lines("load at start")
    results: list[tuple[str, int, dict]] = []
    with tempfile.TemporaryDirectory(prefix="cv-overhead-xla-") as caches:
        for round_ in range(args.rounds):
            for name in list(arms) if round_ % 2 == 0 else list(arms)[::-1]:
                results.append((name, round_ + 1, run_once(Path(arms[name]), args.folds, args.overrides,
                                                           Path(caches) / name)))
                print(f"round {round_ + 1} {name}: {results[-1][2]}", flush=True)
    load += machine_lines("load at end")
    from bilstm_exp.training.profiling import machine  # after the runs: TensorFlow's import is no load on them

    where = machine()
    lines = [
        f"# Cross-validation overhead: {args.folds}-fold CV on the tweets, before and after", "",
        f"Generated by `python benchmarks/cv_overhead.py` on {started}: {args.rounds} round(s), arms alternating. "
        f"Command per run: `python -m bilstm_exp data=tweets data.folds={args.folds} {' '.join(args.overrides)}`"
        .rstrip() + ".",
        "Arms: " + ", ".join(f"`{name}` = {describe(tree)}" for name, tree in arms.items()) + ".",
        f"Machine: {where['cpu']}, `nproc` {where['cores']}, TensorFlow {where['tensorflow']}; "
        f"CPU flags with avx: `{cpu_flags()}`.", *load, "",
        "| arm | round | CV wall s | folds' train s | cv_overhead_ratio | first-epoch overhead s per fold | "
        "folds 2..K / fold 1 | epochs per fold | cv test accuracy | process wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(row(name, round_, r) for name, round_, r in results), "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
