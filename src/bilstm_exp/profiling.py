"""Cost of a run: wall-clock timings, throughput, padding, memory and latency.

:class:`EpochProfiler` is a Keras callback that adds its numbers to each epoch's ``logs`` (so a
logger placed after it records them in the same request): ``time/epoch_s``,
``time/step_p50_ms``, ``time/step_p95_ms``, ``throughput/train_samples_per_s`` and
``throughput/train_tokens_per_s`` (real tokens, padding excluded).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    p50, p95 = np.percentile(np.asarray(seconds) * 1000.0, [50, 95])
    return float(p50), float(p95)


class EpochProfiler(keras.callbacks.Callback):
    """Per-epoch timings and throughput; ``epoch_times`` keeps every epoch's seconds."""

    def __init__(self, samples_per_epoch: int, tokens_per_epoch: int):
        super().__init__()
        self.samples_per_epoch = samples_per_epoch
        self.tokens_per_epoch = tokens_per_epoch
        self.epoch_times: list[float] = []

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._steps: list[float] = []
        self._epoch_start = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._steps.append(time.perf_counter() - self._step_start)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # training time only: validation ran after the last step
        train_s = sum(self._steps) if self._steps else time.perf_counter() - self._epoch_start
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        if logs is None:
            return
        p50, p95 = percentiles_ms(self._steps or [train_s])
        logs.update({
            "time/epoch_s": self.epoch_times[-1],
            "time/train_s": train_s,
            "time/step_p50_ms": p50,
            "time/step_p95_ms": p95,
            "throughput/train_samples_per_s": self.samples_per_epoch / train_s,
            "throughput/train_tokens_per_s": self.tokens_per_epoch / train_s,
        })

    def first_epoch_overhead_s(self) -> float | None:
        """Tracing and compilation cost: the first epoch minus the median later epoch."""
        if len(self.epoch_times) < 2:
            return None
        return max(0.0, self.epoch_times[0] - float(np.median(self.epoch_times[1:])))


def latency(predict_one: Callable[[str], Any], texts: list[str], warmup: int = 3) -> dict[str, float]:
    """p50/p95 milliseconds of ``predict_one`` on single texts, after a few warm-up calls."""
    for text in texts[:warmup]:
        predict_one(text)
    times = []
    for text in texts:
        start = time.perf_counter()
        predict_one(text)
        times.append(time.perf_counter() - start)
    p50, p95 = percentiles_ms(times)
    return {"latency/predict_p50_ms": p50, "latency/predict_p95_ms": p95}


def model_size_mb(model: keras.Model) -> float:
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights) / 2**20
