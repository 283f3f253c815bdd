"""FastLSTM's XLA time loops with the gate activations per column slice (before) and as one tanh (now).

Before: ``_cell_forward`` split the (B, 4h) pre-activations into i, f, c, o and applied sigmoid, sigmoid,
tanh, sigmoid to the slices, then concatenated the gates for the backward's record; ``_cell_backward``
computed the four slopes slice by slice; the backward loop multiplied by the recurrent kernel with
``transpose_b`` in every step. Now (``bilstm_exp.models.fast_lstm``): one tanh over the whole block with a
per-column scale (sigmoid(x) = 0.5 tanh(x/2) + 0.5), the slopes from the gates in one expression, the
kernel transposed once before the loop. Same function: the script checks the outputs agree.

Times each loop alone (forward with the backward's record, inference, backward) at B x T, h = 64 (the
default model), both arms compiled in this process and alternated (A B, B A, ...); medians.

usage: python benchmarks/cell_activations.py [--shapes 32x150,32x400,128x150] [--rounds 7]
       -> benchmarks/cell_activations.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bilstm_exp.models import fast_lstm  # noqa: E402
from bilstm_exp.training import profiling  # noqa: E402

HERE = Path(__file__).resolve().parent
UNITS = 64


# ----------------------------------------------------------------------------- before (commit b232274)

def previous_cell_forward(z, c):
    i, f, g, o = tf.split(z, 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c_new = f * c + i * g
    tc = tf.tanh(c_new)
    return tf.concat([i, f, g, o], -1), c_new, tc, o * tc


def previous_cell_backward(dh, dc, gates, c_prev, tc, m):
    i, f, g, o = tf.split(gates, 4, axis=-1)
    if m is not None:
        dh, dc = dh * m, dc * m
    do = dh * tc
    dc = dc + dh * o * (1.0 - tc * tc)
    dz = tf.concat([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                    dc * i * (1.0 - g * g), do * o * (1.0 - o)], -1)
    return dz, dc * f


def previous_backward_loop(dh, dc, dY, U, G, C, TC, maskf, reverse):
    T = fast_lstm._num_steps(G)
    dZ = tf.TensorArray(G.dtype, size=T, element_shape=G.shape[1:])

    def body(j, dh, dc, dZ):
        p = T - 1 - j
        t = tf.where(reverse, T - 1 - p, p)
        if dY is not None:
            dh = dh + tf.gather(dY, p)
        m = None if maskf is None else tf.gather(maskf, t)
        dz, dc_prev = previous_cell_backward(dh, dc, tf.gather(G, t), tf.gather(C, t), tf.gather(TC, t), m)
        dh_prev = tf.matmul(dz, U, transpose_b=True)
        if m is not None:
            dh_prev, dc_prev = dh_prev + dh * (1.0 - m), dc_prev + dc * (1.0 - m)
        return j + 1, dh_prev, dc_prev, dZ.write(t, dz)

    result = tf.while_loop(lambda j, *_: j < T, body, (tf.constant(0), dh, dc, dZ), maximum_iterations=T)
    return result[3].stack()


def arms() -> dict[str, dict]:
    """{"before": {"forward", "inference", "backward"}, "now": {...}}: XLA-compiled loops. The forward
    and inference loops are the product's, traced with the module's cell function swapped."""
    now = {"forward": fast_lstm._FORWARD, "inference": fast_lstm._INFERENCE, "backward": fast_lstm._BACKWARD}
    shipped = fast_lstm._cell_forward
    fast_lstm._cell_forward = previous_cell_forward
    try:
        before = {"forward": tf.function(fast_lstm._forward_loop, jit_compile=True),
                  "inference": tf.function(fast_lstm._inference_loop, jit_compile=True),
                  "backward": tf.function(previous_backward_loop, jit_compile=True)}
        for name in ("forward", "inference"):  # traced now, while the previous cell is in place
            before[name] = before[name].get_concrete_function(
                tf.TensorSpec([None, None, 4 * UNITS]), tf.TensorSpec([UNITS, 4 * UNITS]),
                tf.TensorSpec([None, None, 1]), tf.TensorSpec([], tf.bool), True)
    finally:
        fast_lstm._cell_forward = shipped
    return {"before": before, "now": now}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="32x150,32x400,128x150", help="BxT,BxT,...")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per loop per round")
    parser.add_argument("--out", default=str(HERE / "cell_activations.md"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    loops = arms()
    rows, agreement = [], []
    for shape in args.shapes.split(","):
        batch, steps = (int(v) for v in shape.split("x"))
        rng = np.random.default_rng(0)
        xw = tf.constant(rng.normal(size=(steps, batch, 4 * UNITS)).astype("float32") * 0.5)
        U = tf.constant(rng.normal(size=(UNITS, 4 * UNITS)).astype("float32") * 0.1)
        maskf = tf.constant((rng.random((steps, batch, 1)) > 0.1).astype("float32"))  # a tenth masked
        reverse = tf.constant(True)
        dY = tf.constant(rng.normal(size=(steps, batch, UNITS)).astype("float32") * 0.01)
        calls, results = {}, {}
        for arm, fns in loops.items():
            h, c, G, C, H, TC, Y = fns["forward"](xw, U, maskf, reverse, True)
            back = (tf.zeros_like(h), tf.zeros_like(c), dY, U, G, C, TC, maskf, reverse)
            ahead = (xw, U, maskf, reverse, True)
            calls[arm] = {"forward": lambda f=fns["forward"], a=ahead: f(*a)[0],
                          "inference": lambda f=fns["inference"], a=ahead: f(*a)[0],
                          "backward": lambda f=fns["backward"], a=back: f(*a)}
            results[arm] = (Y, fns["backward"](*back))
        agreement.append(max(float(tf.reduce_max(tf.abs(a - b))) for a, b in
                             zip(results["before"], results["now"], strict=True)))
        times = {(arm, loop): [] for arm in loops for loop in ("forward", "inference", "backward")}
        for r in range(args.rounds):
            for arm in (list(loops) if r % 2 == 0 else list(reversed(loops))):
                for loop, call in calls[arm].items():
                    call().numpy()
                    samples = []
                    for _ in range(args.calls):
                        start = time.perf_counter()
                        call().numpy()
                        samples.append(time.perf_counter() - start)
                    times[(arm, loop)].append(float(np.median(samples)))
        for loop in ("forward", "inference", "backward"):
            before, now = (1000 * float(np.median(times[(arm, loop)])) for arm in ("before", "now"))
            rows.append(f"| {batch} | {steps} | {loop} | {before:.3f} | {now:.3f} | {before / now:.2f} | "
                        f"{1000 * now / steps:.1f} |")
    load_after = os.getloadavg()[0]
    cpu = profiling.machine()["cpu"]
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    lines = [
        "# FastLSTM's time loops: gate activations per slice (before) and as one tanh (now)",
        "",
        f"Generated by `python benchmarks/cell_activations.py --shapes {args.shapes} --rounds {args.rounds}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC (commit {commit} and the working tree).",
        f"Machine: {cpu}, {os.cpu_count()} logical cores, AVX-512 {'yes' if avx512 else 'no'}; TensorFlow "
        f"{tf.__version__}. 1-minute load average {load_before:.2f} before, {load_after:.2f} after.",
        "",
        f"Each loop alone, h = {UNITS}, a tenth of the positions masked, the reverse direction; milliseconds per "
        f"call, median of {args.rounds} alternating rounds of {args.calls} calls. Largest difference between the "
        f"arms' outputs and gradients: {max(agreement):.1e}.",
        "",
        "| B | T | loop | before ms | now ms | before / now | now, us per time step |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
