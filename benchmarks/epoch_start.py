"""Epoch times of the default run with tf.data's autotuning on and off, side by side in one process.

The training pipeline (``data.batching.make_dataset``) prefetches batches of arrays already in memory.
With tf.data's autotuning on (its default, and ``prefetch(tf.data.AUTOTUNE)``), some epochs of the
default run began only after one to five seconds in which both cores sat idle. This script measures
that on the default composition (``data=synthetic``, ``model=basic``; ``bilstm-exp bench``'s ``Bench``
data and model), two ways:

- **one fit per epoch**, the arms alternating (A B, B A, ...), as ``bilstm-exp bench`` times epochs;
- **one fit of N epochs** per arm, as a run trains: each epoch timed by a callback.

Arms: ``autotune`` = the pipeline with ``prefetch(tf.data.AUTOTUNE)`` and autotuning on (the pipeline
before the change); ``fixed`` = the pipeline as shipped (``data.batching.prefetched``: a fixed prefetch,
autotuning off). Same model, same weights, same batches. Also reports the process CPU time per epoch: a stall
costs wall time, not CPU time.

usage: python benchmarks/epoch_start.py [--rounds 10] [--epochs 10]  -> benchmarks/epoch_start.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bilstm_exp.analysis.bench_measure import Bench  # noqa: E402
from bilstm_exp.analysis.bench_setup import PROFILES  # noqa: E402
from bilstm_exp.data import batching  # noqa: E402
from bilstm_exp.training import profiling  # noqa: E402

HERE = Path(__file__).resolve().parent


def pipeline(bench: Bench, autotune: bool):
    """The training split's pipeline as the product builds it, or with tf.data's autotuning put back."""
    p, config = bench.prepared, bench.config
    boundaries = bench.training.buckets(config, p)["boundaries"]
    saved = batching.prefetched
    if autotune:  # what make_dataset returned before
        batching.prefetched = lambda ds: ds.prefetch(tf.data.AUTOTUNE)
    try:
        return batching.make_dataset(p.splits["train"], p.labels["train"], config.training.batch_size,
                                     padding="bucket", max_length=config.data.max_length, boundaries=boundaries,
                                     shuffle=True, seed=config.seed)
    finally:
        batching.prefetched = saved


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def summary(values: list[float]) -> str:
    return f"{np.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def stalls(wall: list[float], cpu: list[float]) -> int:
    """Epochs whose wall time exceeds their own CPU time's share by over 0.5 s more than the median epoch's."""
    idle = [w - c / 2 for w, c in zip(wall, cpu, strict=True)]  # 2 cores busy: wall ~ cpu / 2
    return sum(i - float(np.median(idle)) > 0.5 for i in idle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of one fit per epoch")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the one multi-epoch fit per arm")
    parser.add_argument("--out", default=str(HERE / "epoch_start.md"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="epoch-start-"))
    os.chdir(root)
    bench = Bench(PROFILES["full"], root)
    model = bench._plugin_model()
    arms = {"autotune": pipeline(bench, True), "fixed": pipeline(bench, False)}
    for dataset in arms.values():  # traces every bucket's shape: not timed
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)

    per_fit = {name: ([], []) for name in arms}
    # the whole fit call is timed, not from a callback: a stall of a one-epoch fit came after its
    # on_train_end, where bench_setup.epoch_clock does not look
    for r in range(args.rounds):
        for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(arms[name], epochs=1, verbose=0, shuffle=False)
            per_fit[name][0].append(time.perf_counter() - wall)
            per_fit[name][1].append(time.process_time() - cpu)

    one_fit = {}
    for name, dataset in arms.items():
        clock = EpochTimes()
        model.fit(dataset, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[clock])
        one_fit[name] = clock
    load_after = os.getloadavg()[0]

    cpu_name = profiling.machine()["cpu"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    lines = [
        "# Epoch start: tf.data's autotuning on and off",
        "",
        f"Generated by `python benchmarks/epoch_start.py --rounds {args.rounds} --epochs {args.epochs}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC (commit {commit} and the working tree).",
        f"Machine: {cpu_name}, {os.cpu_count()} logical cores; TensorFlow {tf.__version__}, Keras {keras.__version__}. "
        f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after (the script's own work included).",
        f"Configuration: {bench.describe()}.",
        "",
        "Seconds per epoch, median (min, max); a stall is an epoch whose wall time, less half its process CPU "
        "time (two cores), is over 0.5 s above the median epoch's: time with the cores idle.",
        "",
        "| arm | one fit per epoch (alternating): wall s | CPU s | stalls | one fit of "
        f"{args.epochs} epochs: wall s | CPU s | stalls |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in arms:
        wall, cpu = per_fit[name]
        clock = one_fit[name]
        lines.append(f"| `{name}` | {summary(wall)} | {summary(cpu)} | {stalls(wall, cpu)}/{len(wall)} | "
                     f"{summary(clock.wall)} | {summary(clock.cpu)} | "
                     f"{stalls(clock.wall, clock.cpu)}/{len(clock.wall)} |")
    lines += ["", "Per epoch (wall s):", ""]
    for name in arms:
        lines.append(f"- `{name}`, one fit per epoch: {', '.join(f'{x:.2f}' for x in per_fit[name][0])}")
        epochs = ", ".join(f"{x:.2f}" for x in one_fit[name].wall)
        lines.append(f"- `{name}`, one fit of {args.epochs} epochs: {epochs}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
