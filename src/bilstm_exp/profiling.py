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


# --------------------------------------------------------------------------- compute cost

LSTM_GATES, GRU_GATES = 4, 3
# Element-wise FLOPs per unit per time step, beyond the matmuls. LSTM: 4 bias adds, 5 activations
# (3 sigmoid gates, tanh candidate, tanh of the cell), c = f*c + i*g (3), h = o*tanh(c) (1) -> 13.
# GRU (reset_after, Keras's default): 6 bias adds, 3 activations, r*(W_h h) (1), the new h as
# z*h + (1-z)*candidate (3) -> 13.
LSTM_ELEMENTWISE, GRU_ELEMENTWISE = 13, 13
TRAIN_OVER_FORWARD = 3.0  # backward ~ 2x forward (gradients w.r.t. inputs and weights)


def recurrent_flops(d_in: int, units: int, cell: str = "lstm") -> float:
    """Forward FLOPs of one recurrent direction for one token: ``2*G*(d_in+h)*h + E*h``.

    ``G`` gates (LSTM 4, GRU 3), each an input and a recurrent matmul (a multiply-add is 2 FLOPs),
    plus ``E`` element-wise FLOPs per unit (see ``LSTM_ELEMENTWISE``).
    """
    gates, elementwise = (LSTM_GATES, LSTM_ELEMENTWISE) if cell == "lstm" else (GRU_GATES, GRU_ELEMENTWISE)
    return 2.0 * gates * (d_in + units) * units + elementwise * units


def _merged(units: int, merge_mode: str) -> int:
    return 2 * units if merge_mode == "concat" else units


def forward_flops(model_cfg, num_classes: int) -> tuple[float, float]:
    """(per-token, per-sample) forward FLOPs of an architecture built by ``models.build``.

    * Embedding: a lookup, 0 FLOPs.
    * Recurrent layer: :func:`recurrent_flops` per token and direction (x2 when bidirectional).
      Stacked layers take the previous layer's merged width as ``d_in``.
    * Attention (``D`` = merged width, ``a`` = attention units): per token
      ``2*D*a`` (W1 h_t) + ``2*a`` (add W2 q, tanh) + ``2*a`` (v) + ``3`` (softmax) + ``2*D`` (weighted
      sum); per sample ``2*(2h)*a`` (W2 q; the query is both directions' final ``h``).
    * Head: per sample ``2*F*k`` with ``F`` features and ``k`` outputs (1 for two classes).
    Masked (padded) positions are not counted: these are FLOPs per real token.
    """
    cell = model_cfg.cell
    dim = model_cfg.embedding_dim
    outputs = 1 if num_classes == 2 else num_classes
    merge = getattr(model_cfg, "merge_mode", "concat")
    per_token = per_sample = 0.0
    if model_cfg.name == "stacked":
        for units in model_cfg.layer_sizes:
            per_token += 2 * recurrent_flops(dim, units, cell)
            dim = _merged(units, merge)
    elif model_cfg.name == "unidirectional":
        per_token += recurrent_flops(dim, model_cfg.lstm_units, cell)
        dim = model_cfg.lstm_units
    else:  # basic, attention
        per_token += 2 * recurrent_flops(dim, model_cfg.lstm_units, cell)
        dim = _merged(model_cfg.lstm_units, merge)
        if model_cfg.name == "attention":
            a = model_cfg.attention_units
            per_token += 2 * dim * a + 4 * a + 3 + 2 * dim
            per_sample += 2 * (2 * model_cfg.lstm_units) * a
    per_sample += 2 * dim * outputs
    return per_token, per_sample


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
    """Best dense float32 ``size x size`` matmul rate in GFLOP/s (all threads TF uses)."""
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


def matmul_peak_gflops(refresh: bool = False) -> float:
    """The dense float32 matmul peak of this machine, measured once and cached.

    The cache is ``~/.cache/bilstm-exp/matmul_peak.json`` (``$XDG_CACHE_HOME`` or
    ``$BILSTM_EXP_CACHE_DIR`` move it), keyed by host, CPU model, core count and TF version.
    """
    path = _cache_file()
    key = json.dumps(machine(), sort_keys=True)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not refresh and isinstance(cache.get(key), (int, float)):
        return float(cache[key])
    peak = measure_matmul_gflops()
    cache[key] = peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
    return peak


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

    Steps count across epochs (with ``steps_per_execution > 1`` one step is one execution).
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
        self._step = 0
        self.active = False
        self.recorded_steps = 0

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self._step == self.start_step and not self.active and not self.recorded_steps:
            import tensorflow as tf

            self.logdir.mkdir(parents=True, exist_ok=True)
            tf.profiler.experimental.start(str(self.logdir))
            self.active = True

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._step += 1
        if self.active:
            self.recorded_steps += 1
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
