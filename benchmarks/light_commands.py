"""How long the light commands take on a store that has history: `runs`, `compare`, `promote` and
`predict`'s argument checks, on a sqlite store holding 100 finished runs (issue 26).

    .venv/bin/python benchmarks/light_commands.py              # writes benchmarks/light_commands.md
    .venv/bin/python benchmarks/light_commands.py --repeats 5

The store is made with MLflow's client (100 runs of five configurations and 20 seeds, each with the
params, tags and per-epoch metrics a training run records), so no TensorFlow runs here. Each command runs
as a user runs it (`bilstm-exp ...` in the store's folder), rounds alternating; the table gives the
median wall time and the median CPU time of the child process. What each command imported is
counted once (MLflow, TensorFlow). Record the machine's load beside the numbers: on a busy machine
both columns grow.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "runs": ["runs"],
    "compare": ["compare"],
    "promote (no such version)": ["promote", "--model", "bilstm-sentiment", "--version", "99", "--reason", "x"],
    "predict (no text given)": ["predict"],
    "--help": ["--help"],
}
CONFIGS = [("basic", "adam"), ("attention", "adam"), ("stacked", "adam"), ("basic", "adamw"),
           ("unidirectional", "adam")]


def make_store(folder: Path, runs: int = 100) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("bilstm-exp")
    now = int(time.time() * 1000)
    for index in range(runs):
        model, optimizer = CONFIGS[index % len(CONFIGS)]
        seed = index // len(CONFIGS)
        run = client.create_run(experiment, run_name=f"{model}-{optimizer}-seed{seed}")
        params = {"model.name": model, "optimizer.name": optimizer, "seed": str(seed), "data.split_seed": "42",
                  "training.monitor": "val/loss", "training.monitor_mode": "min", "data.name": "synthetic"}
        tags = {"architecture": model, "config.group": f"{model}-{optimizer}", "data.fingerprint": "f" * 32}
        metrics = [Metric(key, 0.7 - 0.05 * epoch + 0.001 * seed, now, epoch)
                   for epoch in range(6) for key in ("train/loss", "val/loss")]
        metrics += [Metric(key, value, now, 6) for key, value in
                    (("val/loss", 0.45 + 0.001 * seed), ("test/accuracy", 0.9 - 0.01 * (index % 5)), ("best/epoch", 4),
                     ("time/epoch_s", 3.0), ("throughput/train_tokens_per_s", 50000.0),
                     ("latency/predict_p50_ms", 12.0), ("model/params", 1.3e6))]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run.info.run_id, "FINISHED")


def timed(argv: list[str], folder: Path) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "bilstm-exp"), *argv], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode


def imports(argv: list[str], folder: Path) -> str:
    code = ("import sys\nfrom bilstm_exp.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint('IMPORTED', ','.join(m for m in ('mlflow', 'tensorflow') if m in sys.modules) or 'none')")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=folder, capture_output=True, text=True)
    return out.stdout.rsplit("IMPORTED ", 1)[-1].strip() if "IMPORTED" in out.stdout else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("light_commands.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        make_store(folder)
        made_s = time.perf_counter() - started
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeats):  # rounds alternate between the commands
            for name, argv in COMMANDS.items():
                results[name].append(timed(argv, folder))
        loaded = {name: imports(argv, folder) for name, argv in COMMANDS.items()}
    load = open("/proc/loadavg").read().split()[:3]
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx2", "fma", "avx512f")})
    lines = [f"# Light commands on a 100-run sqlite store ({args.repeats} rounds, alternating)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, vector flags {' '.join(flags)}; "
             f"load average at the end {' '.join(load)}. Store made in {made_s:.1f} s.",
             "Command: `.venv/bin/python benchmarks/light_commands.py`", "",
             "| command | exit | wall median (s) | CPU median (s) | imports |", "|---|---|---|---|---|"]
    for name, rows in results.items():
        walls, cpus, codes = zip(*rows)
        lines.append(f"| `bilstm-exp {' '.join(COMMANDS[name])}` | {codes[0]} | {statistics.median(walls):.2f} | "
                     f"{statistics.median(cpus):.2f} | {loaded[name]} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
