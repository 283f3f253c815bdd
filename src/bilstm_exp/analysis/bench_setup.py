"""What a bench run measures with, and how it times two arms fairly on a noisy machine.

The profiles (``full``, ``quick``, and ``smoke`` for tests) set the data, repetitions and grid; the
helpers compose a config, time a Keras epoch (wall and process CPU time), alternate two arms
(A B, B A, ...) and report the ratio of their medians. TensorFlow is imported only inside them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KERNEL_SHAPES = ((32, 150), (128, 150), (32, 400))  # (batch, length); the first is kernel_speedup
GRID_SAMPLES = 10_000  # the grid reports seconds per epoch of this many samples


@dataclass
class Settings:
    name: str
    overrides: list[str]  # Hydra overrides on top of the default composition
    reps: int  # timed epochs per arm (alternating)
    accuracy_epochs: int  # epochs each bucketing arm trains before its test accuracy
    serving_texts: int
    grid_lengths: list[int]
    grid_batches: list[int]
    grid_steps: int  # timed train steps per grid cell (after one warm-up step)
    grid_overrides: dict[str, list[str]] = field(default_factory=dict)  # per architecture
    warm_up: bool = True  # an untimed first round of each A/B pair (tracing every shape)


ARCHITECTURES = ("basic", "attention", "stacked", "unidirectional")

PROFILES = {
    "full": Settings("full", [], reps=5, accuracy_epochs=5, serving_texts=100,
                     grid_lengths=[64, 128, 256, 512, 1024], grid_batches=[16, 32, 64, 128, 256, 512], grid_steps=1),
    "quick": Settings("quick", ["data.num_samples=1200"], reps=3, accuracy_epochs=3, serving_texts=40,
                      grid_lengths=[64, 256], grid_batches=[32, 128], grid_steps=1),
    # tests only: a tiny model on tiny data; the numbers mean nothing. Keras's kernel outside
    # kernel_speedup: the fast kernel compiles XLA code per batch shape, seconds a smoke need not spend
    "smoke": Settings("smoke", ["data.num_samples=160", "data.median_length=24", "data.max_length=48",
                                "data.num_buckets=3", "training.batch_size=16", "model.embedding_dim=8",
                                "model.lstm_units=8", "model.kernel=keras"],
                      reps=1, accuracy_epochs=2, serving_texts=5, grid_lengths=[16], grid_batches=[8],
                      grid_steps=1,
                      grid_overrides={"basic": ["model.lstm_units=8"], "unidirectional": ["model.lstm_units=8"],
                                      "attention": ["model.lstm_units=8", "model.attention_units=8"],
                                      "stacked": ["model.layer_sizes=[8,4]"],
                                      "_all": ["model.embedding_dim=8", "model.kernel=keras"]},
                      warm_up=False),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def compose_config(overrides: list[str]):
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate

    # the embedding's start changes no cost the bench measures: no word2vec before every model it compiles
    return validate(compose(["training.verbose=0", "training.early_stopping.enabled=false",
                             "model.self_trained_vectors=false", *overrides]))


def median(values: list[float]) -> float:
    return float(np.median(values))


def epoch_clock():
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Wall and process CPU time from the first epoch's begin to train end (no batch hooks)."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._cpu)

        def last(self) -> tuple[float, float]:
            return self.seconds[-1], self.cpu_seconds[-1]

    return EpochClock()


def alternate(arms: dict[str, Any], reps: int) -> dict[str, list[float]]:
    """Run each arm's callable ``reps`` times, alternating A B / B A; returns seconds per arm."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(arms[name]())
    return times


def ratio(numerator: list, denominator: list) -> dict[str, Any]:
    """Ratio of medians (wall time). With (wall, cpu) samples also the process-CPU-time ratio, which
    other processes on a shared machine disturb far less than wall time."""
    wall_n = [x[0] if isinstance(x, tuple) else x for x in numerator]
    wall_d = [x[0] if isinstance(x, tuple) else x for x in denominator]
    num, den = median(wall_n), median(wall_d)
    out = {"ratio": num / den, "numerator_median_s": num, "denominator_median_s": den,
           "numerator_s": wall_n, "denominator_s": wall_d,
           "pairwise_median_ratio": median([a / b for a, b in zip(wall_n, wall_d, strict=False)])}
    if numerator and isinstance(numerator[0], tuple):
        cpu_n, cpu_d = [x[1] for x in numerator], [x[1] for x in denominator]
        out.update({"cpu_ratio": median(cpu_n) / median(cpu_d), "numerator_cpu_s": cpu_n,
                    "denominator_cpu_s": cpu_d})
    return out
