"""Cost of a run: wall-clock timings, throughput, padding, memory and latency.

:class:`EpochProfiler` is a Keras callback that adds its numbers to each epoch's ``logs`` (so a
logger placed after it records them in the same request): ``time/epoch_s``,
``time/step_p50_ms``, ``time/step_p95_ms``, ``throughput/train_samples_per_s`` and
``throughput/train_tokens_per_s`` (real tokens, padding excluded).

:func:`cost_metrics` adds the compute view of a finished run: an analytic FLOP count per real
token (:func:`train_flops_per_token`), the achieved GFLOP/s and its fraction of this machine's
dense matmul peak (:func:`matmul_peak_gflops`, measured once and cached), and the served model's
batch throughput. :class:`TraceWindow` records a TensorFlow profiler trace (``profiling=trace``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from bilstm_exp.models import architectures
from bilstm_exp.models.architectures import recurrent_flops  # noqa: F401  (the per-direction count, re-exported)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    p50, p95 = np.percentile(np.asarray(seconds) * 1000.0, [50, 95])
    return float(p50), float(p95)


def steps_done(model) -> int | None:
    """The optimizer's step counter (updates applied so far), or None without one."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    # convert_to_numpy, not int(): under a distribution strategy the variable is a MirroredVariable
    return None if iterations is None else int(keras.ops.convert_to_numpy(iterations))


class EpochProfiler(keras.callbacks.Callback):
    """Per-epoch timings and throughput; ``epoch_times`` keeps every epoch's seconds.

    With ``training.steps_per_execution`` > 1 Keras runs several steps per call and calls the batch hooks
    once per call: each step of a call counts that call's mean, so ``time/step_p50_ms`` stays the time
    of one step. A call's step count comes from the batch indices Keras passes, and the last call of
    an epoch (which may run fewer steps than it says) is corrected by the optimizer's step counter.
    """

    def __init__(self, samples_per_epoch: int, tokens_per_epoch: int):
        super().__init__()
        self.samples_per_epoch = samples_per_epoch
        self.tokens_per_epoch = tokens_per_epoch
        self.epoch_times: list[float] = []

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._calls: list[tuple[float, int]] = []  # (seconds, steps) of each train_function call
        self._first_step = steps_done(self.model)
        self._epoch_start = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        self._call_start, self._call_first = time.perf_counter(), batch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._calls.append((time.perf_counter() - self._call_start, batch - self._call_first + 1))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # training time only: validation ran after the last step
        train_s = sum(s for s, _ in self._calls) if self._calls else time.perf_counter() - self._epoch_start
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        if logs is None:
            return
        p50, p95 = percentiles_ms(self._step_times() or [train_s])
        logs.update({
            "time/epoch_s": self.epoch_times[-1],
            "time/train_s": train_s,
            "time/step_p50_ms": p50,
            "time/step_p95_ms": p95,
            "throughput/train_samples_per_s": self.samples_per_epoch / train_s,
            "throughput/train_tokens_per_s": self.tokens_per_epoch / train_s,
        })

    def _step_times(self) -> list[float]:
        """Seconds per step, each step of a call at that call's mean."""
        calls = list(self._calls)
        steps = steps_done(self.model) - self._first_step if self._first_step is not None else None
        if calls and steps is not None and 0 < steps < sum(n for _, n in calls):  # the last call ran short
            calls[-1] = (calls[-1][0], max(1, steps - sum(n for _, n in calls[:-1])))
        return [seconds / n for seconds, n in calls for _ in range(n)]

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


# --------------------------------------------------------------------------- compute cost

TRAIN_OVER_FORWARD = 3.0  # backward ~ 2x forward (gradients w.r.t. inputs and weights)


def forward_flops(model_cfg, num_classes: int) -> tuple[float, float]:
    """(per-token, per-sample) forward FLOPs of an architecture built by ``models.build``.

    * Embedding: a lookup, 0 FLOPs.
    * The architecture's body: its own count, next to its builder (``architectures/<name>.py``,
      from :func:`~bilstm_exp.models.architectures.recurrent_flops` per token and direction).
    * Head: per sample ``2*F*k`` with ``F`` features and ``k`` outputs (1 for two classes).
    Masked (padded) positions are not counted: these are FLOPs per real token.
    """
    body = architectures.get(model_cfg).flops(model_cfg)
    outputs = 1 if num_classes == 2 else num_classes
    return body.per_token, body.per_sample + 2 * body.features * outputs


def train_flops_per_token(model_cfg, num_classes: int, mean_length: float) -> float:
    """Training FLOPs per real token: ``3 * (per_token + per_sample / mean_length)``.

    The forward count is :func:`forward_flops`; the backward pass costs about twice the forward
    one, so a training step is about 3x forward. Per-sample work (attention query, head) is spread
    over the mean number of real tokens per sample. The optimizer update (a few FLOPs per weight
    per step) is left out.
    """
    if mean_length <= 0:
        raise ValueError(f"mean_length must be > 0, got {mean_length}")
    per_token, per_sample = forward_flops(model_cfg, num_classes)
    return TRAIN_OVER_FORWARD * (per_token + per_sample / mean_length)


def _cache_file() -> Path:
    base = os.environ.get("BILSTM_EXP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "bilstm-exp")
    return Path(base) / "matmul_peak.json"


def machine() -> dict[str, Any]:
    """What a peak measurement is valid for: host, CPU model, logical cores, TF version."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count() or 1, "tensorflow": tf.__version__}


def measure_matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best dense float32 ``size x size`` matmul rate in GFLOP/s, on every thread TensorFlow uses
    (all cores unless ``tf.config.threading.set_intra_op_parallelism_threads`` says otherwise)."""
    import tensorflow as tf

    a = tf.random.normal((size, size), seed=1)
    b = tf.random.normal((size, size), seed=2)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()  # trace and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def matmul_threads() -> int:
    """The threads a TensorFlow matmul runs on: the intra-op setting, 0 meaning all cores."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1


QUIET_LOAD_PER_CORE = 0.25  # a peak measured at a higher 1-minute load per core is re-measured next time
_MEASURED: dict[str, float] = {}  # this process's measurement, by machine key: its folds and jobs measure once


def matmul_peak_gflops(refresh: bool = False) -> float:
    """The dense float32 matmul peak of this machine on all cores: what ``compute/peak_fraction``
    divides by. Measured once and cached, keyed by host, CPU model, core count and TF version, with
    the thread count and the load it was measured under.

    A peak measured while other work ran understates the machine (this 2-core machine does about
    half its quiet peak under load), so a cached value measured at a load above
    :data:`QUIET_LOAD_PER_CORE` per core is measured again at the next use and the higher value kept:
    the cache converges on the quiet peak. A process measures at most once: the folds of a
    cross-validation and the jobs of a sweep in one process would measure under the same load again
    (0.3 s each on 2 cores). The cache is ``~/.cache/bilstm-exp/matmul_peak.json``
    (``$XDG_CACHE_HOME`` or ``$BILSTM_EXP_CACHE_DIR`` move it).
    """
    path = _cache_file()
    key = json.dumps(machine(), sort_keys=True)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, (int, float)):  # the old format: a number measured under an unknown load
        entry = {"gflops": float(entry), "load_per_core": None}
    cores = os.cpu_count() or 1
    if not refresh and isinstance(entry, dict) and entry.get("load_per_core") is not None \
            and entry["load_per_core"] <= QUIET_LOAD_PER_CORE:
        return float(entry["gflops"])
    if not refresh and key in _MEASURED:
        return _MEASURED[key]
    load = os.getloadavg()[0] / cores if hasattr(os, "getloadavg") else None
    measured = measure_matmul_gflops()
    best = max(measured, float(entry["gflops"])) if isinstance(entry, dict) and not refresh else measured
    _MEASURED[key] = best
    cache[key] = {"gflops": best, "threads": matmul_threads(), "load_per_core": load if best == measured else
                  entry.get("load_per_core"), "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
    return best


def predict_throughput(predict_batch: Callable[[list[str]], Any], texts: list[str], min_texts: int = 512,
                       batch: int = 256) -> float:
    """Samples per second of ``predict_batch`` (raw texts in) fed ``batch`` texts per call.

    The texts are repeated up to ``min_texts``; one call warms up first (tracing).
    """
    if not texts:
        raise ValueError("predict_throughput needs at least one text")
    texts = (texts * (min_texts // len(texts) + 1))[:max(min_texts, len(texts))]
    predict_batch(texts[:batch])
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        predict_batch(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - start)


def steady(values: list[float]) -> float:
    """Median of the epochs after the first (which also traces), or the only one."""
    return float(np.median(values[1:] if len(values) > 1 else values))


def cost_metrics(model_cfg, prepared, history: dict[str, list[float]],
                 predict_batch: Callable[[list[str]], Any] | None = None) -> dict[str, float]:
    """``compute/train_flops_per_token``, ``compute/achieved_gflops``, ``compute/peak_fraction``
    and ``throughput/predict_samples_per_s`` for a finished run.

    ``prepared`` is the run's ``data.PreparedData``; ``history`` its Keras history (with
    ``throughput/train_tokens_per_s`` from :class:`EpochProfiler`); ``predict_batch`` the served
    model's batch prediction on raw texts (called with 256 texts at a time).
    Achieved GFLOP/s counts real tokens only, at the steady-state (post-first-epoch) rate.
    """
    lengths = [len(s) for s in prepared.splits["train"]]
    flops = train_flops_per_token(model_cfg, prepared.num_classes, float(np.mean(lengths)))
    out = {"compute/train_flops_per_token": flops}
    tokens_per_s = history.get("throughput/train_tokens_per_s") or []
    if tokens_per_s:
        achieved = flops * steady(tokens_per_s) / 1e9
        out["compute/achieved_gflops"] = achieved
        out["compute/peak_fraction"] = achieved / matmul_peak_gflops()
    if predict_batch is not None and prepared.texts["test"]:
        out["throughput/predict_samples_per_s"] = predict_throughput(predict_batch, prepared.texts["test"])
    return out


# --------------------------------------------------------------------------- profiler trace


class TraceWindow(keras.callbacks.Callback):
    """Records a TensorFlow profiler trace of training steps ``[start_step, start_step + steps)``.

    Steps count across epochs (the optimizer's step counter). With ``training.steps_per_execution`` > 1
    Keras runs several steps per call, so the trace holds whole calls: it starts with the first call
    that begins at or after ``start_step`` and stops after the call in which ``steps`` steps are done.
    The trace lands in ``logdir/plugins/profile/<timestamp>/`` as an ``.xplane.pb`` file, the
    layout ``tensorboard --logdir logdir`` reads (its Profile tab needs the ``xprof`` package,
    formerly ``tensorboard-plugin-profile``; recording needs nothing beyond TensorFlow).
    If training ends inside the window, the trace stops there.
    """

    def __init__(self, logdir: str | Path, start_step: int = 5, steps: int = 10):
        super().__init__()
        if start_step < 0 or steps < 1:
            raise ValueError(f"TraceWindow needs start_step >= 0 and steps >= 1, got {start_step}, {steps}")
        self.logdir = Path(logdir)
        self.start_step, self.steps = start_step, steps
        self.active = False
        self.recorded_steps = 0
        self._started_at = 0

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self.active or self.recorded_steps:
            return
        done = steps_done(self.model) or 0
        if done >= self.start_step:
            import tensorflow as tf

            self.logdir.mkdir(parents=True, exist_ok=True)
            tf.profiler.experimental.start(str(self.logdir))
            self.active, self._started_at = True, done

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.active:
            self.recorded_steps = max(1, (steps_done(self.model) or 0) - self._started_at)
            if self.recorded_steps >= self.steps:
                self._stop()

    def on_train_end(self, logs=None) -> None:
        if self.active:
            self._stop()

    def _stop(self) -> None:
        import tensorflow as tf

        tf.profiler.experimental.stop()
        self.active = False


def trace_callbacks(profiling_cfg, logdir: str | Path) -> list[keras.callbacks.Callback]:
    """``[TraceWindow]`` with ``profiling=trace``, else ``[]``."""
    if getattr(profiling_cfg, "name", "standard") != "trace":
        return []
    return [TraceWindow(logdir, profiling_cfg.trace_start_step, profiling_cfg.trace_steps)]
