"""Train-step speed of FastLSTM against keras.layers.LSTM on this CPU, side by side in one process.

Model (the project's shapes): token ids (B, T) -> Embedding(20000, 128, mask_zero=True) ->
Bidirectional(LSTM(64)) -> Dense(1, sigmoid); Adam(1e-3), binary cross-entropy; one step =
``model.train_on_batch`` (forward + backward + Adam). Batches are full length (every token real,
so a step processes B*T tokens; the mask is still computed and applied). Arms:

- ``keras``: ``keras.layers.LSTM`` (what the project ran before; the reference, ratio 1.00)
- ``fast``: ``bilstm_exp.models.fast_lstm.FastLSTM`` (same weights, same results)
- ``fast_xla_opt``: ``FastLSTM`` plus the optimizer update compiled with XLA
  (``bilstm_exp.models.optimizer_step.xla_apply`` in a custom ``train_step``)

The arms run interleaved, order reversed every round (A B C, C B A, ...), ``--steps`` steps per
arm per round; per step the wall time and the process CPU time (all threads) are recorded;
medians are reported, and the ratios keras/arm. The dense float32 matmul peak (2048^3, all the
threads TF uses, best of 7) is measured before and after in the same process. The first step of
each arm (tracing + XLA compilation) is reported separately.

usage: python benchmarks/kernel_bench.py [--configs 32x150,128x150,32x400] [--rounds 7] [--steps 3]
writes benchmarks/kernel.json and benchmarks/kernel.md (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bilstm_exp.models.fast_lstm import FastLSTM  # noqa: E402
from bilstm_exp.models.optimizer_step import xla_apply  # noqa: E402

VOCAB, EMBED, UNITS = 20000, 128, 64
ARMS = ("keras", "fast", "fast_xla_opt")
HERE = Path(__file__).resolve().parent


def train_flops_per_token(d: int = EMBED, h: int = UNITS, length: int = 150) -> float:
    """The project's count (profiling.train_flops_per_token for model=basic): 3 x forward, forward =
    2 directions x (2*4*(d+h)*h + 13h) per token + the head 2*(2h) per sample spread over the length."""
    return 3.0 * (2 * (2 * 4 * (d + h) * h + 13 * h) + 2 * (2 * h) / length)


class XlaOptimizerModel(keras.Model):
    """Keras's standard train step, except that the optimizer update runs as one XLA cluster."""

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        xla_apply(self.optimizer, tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {}


def build(arm: str) -> keras.Model:
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, EMBED, mask_zero=True)(tokens)
    layer = keras.layers.LSTM(UNITS) if arm == "keras" else FastLSTM(UNITS)
    x = keras.layers.Bidirectional(layer)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = (XlaOptimizerModel if arm == "fast_xla_opt" else keras.Model)(tokens, out, name=arm)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def matmul_peak(size: int = 2048, repeats: int = 7) -> dict:
    a, b = tf.random.normal((size, size), seed=1), tf.random.normal((size, size), seed=2)
    f = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    f(a, b).numpy()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).numpy()
        rates.append(2.0 * size**3 / (time.perf_counter() - t0) / 1e9)
    return {"best_gflops": max(rates), "median_gflops": float(np.median(rates))}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, ValueError, subprocess.CalledProcessError):
        nproc = os.cpu_count()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {"cpu": cpu, "nproc": nproc, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__,
            # 0 = TF's default: one thread per logical core
            "tf_intra_op_threads": intra or nproc, "tf_inter_op_threads": inter or nproc,
            # settings that change TensorFlow's speed (not every TF_* variable: Terraform uses that prefix too)
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("TF_CPP", "TF_NUM_", "TF_ENABLE_", "TF_XLA", "OMP", "KMP", "XLA"))}}


def run_config(batch: int, length: int, rounds: int, steps: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, size=(batch, length)).astype("int32")
    y = rng.integers(0, 2, size=(batch, 1)).astype("float32")
    load_before = os.getloadavg()
    peak_before = matmul_peak()
    models, samples = {}, {}
    for arm in ARMS:
        keras.utils.set_random_seed(1)
        start = time.perf_counter()
        model = build(arm)
        model.train_on_batch(x, y)  # trace + XLA compile
        first = time.perf_counter() - start
        models[arm] = model
        samples[arm] = {"wall": [], "cpu": [], "first_step_s": first}
        print(f"  {arm}: first step (build, trace, compile) {first:.1f} s", flush=True)
    for arm in ARMS:  # one untimed warm-up round
        for _ in range(steps):
            models[arm].train_on_batch(x, y)
    for r in range(rounds):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            for _ in range(steps):
                w0, c0 = time.perf_counter(), time.process_time()
                models[arm].train_on_batch(x, y)
                samples[arm]["wall"].append(time.perf_counter() - w0)
                samples[arm]["cpu"].append(time.process_time() - c0)
        print(f"  round {r}: " + ", ".join(
            f"{a} {1e3 * np.median(samples[a]['wall'][-steps:]):.0f} ms" for a in ARMS), flush=True)
    peak_after = matmul_peak()
    load_after = os.getloadavg()
    peak = max(peak_before["best_gflops"], peak_after["best_gflops"])
    flops = train_flops_per_token(length=length)
    ref_wall = float(np.median(samples["keras"]["wall"]))
    ref_cpu = float(np.median(samples["keras"]["cpu"]))
    arms = {}
    for arm in ARMS:
        wall, cpu = float(np.median(samples[arm]["wall"])), float(np.median(samples[arm]["cpu"]))
        gflops = flops * batch * length / wall / 1e9
        arms[arm] = {"step_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu, "step_ms_min": 1e3 * min(samples[arm]["wall"]),
                     "speedup_wall": ref_wall / wall, "speedup_cpu": ref_cpu / cpu,
                     "tokens_per_s": batch * length / wall, "gflops": gflops, "peak_fraction": gflops / peak,
                     "first_step_s": samples[arm]["first_step_s"],
                     "wall_ms": [1e3 * v for v in samples[arm]["wall"]],
                     "cpu_ms_samples": [1e3 * v for v in samples[arm]["cpu"]]}
    del models
    keras.backend.clear_session()
    return {"batch": batch, "length": length, "rounds": rounds, "steps": steps, "flops_per_token": flops,
            "load_before": load_before, "load_after": load_after, "peak_before": peak_before,
            "peak_after": peak_after, "peak_best_gflops": peak, "arms": arms}


def markdown(results: dict) -> str:
    m = results["machine"]
    loads = [c["load_before"][0] for c in results["configs"]] + [c["load_after"][0] for c in results["configs"]]
    quiet = max([*loads, results["load_start"][0], results["load_end"][0]]) <= 0.5
    lines = [
        "# FastLSTM vs keras LSTM: train-step speed on CPU",
        "",
        f"Generated by `python benchmarks/kernel_bench.py` on {results['date']} in one process "
        f"({results['total_s'] / 60:.1f} min).",
        "",
        f"Machine: {m['cpu']}, `nproc` {m['nproc']}; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"Python {m['python']}; TF threads intra-op {m['tf_intra_op_threads']}, inter-op {m['tf_inter_op_threads']}.",
        f"Load average (1, 5, 15 min) at start {_load(results['load_start'])}, at end {_load(results['load_end'])}.",
        "",
        ("**Preliminary**: the machine was shared while this ran (1-minute load above 0.5); the ratios "
         "below are side by side in one process, but absolute times and the peak are depressed, and "
         "re-running on a quiet machine is needed before quoting them." if not quiet else
         "The machine was quiet (1-minute load <= 0.5 throughout)."),
        "",
        "Model: Embedding(20000, 128, mask_zero) -> Bidirectional(LSTM 64) -> Dense(1); Adam; one step = "
        "`train_on_batch`. Full-length batches (B*T real tokens). Arms interleaved, order reversed each "
        "round, after one untimed warm-up round; medians. Speed-up = keras / arm (wall, and process CPU "
        "time). `kernel_speedup` is the `fast` wall speed-up at B=32, T=150.",
        "",
        "| B | T | arm | step ms (median) | min | CPU ms | speed-up wall | speed-up CPU | tokens/s | GFLOP/s | "
        "/ peak | first step s | load1 before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["configs"]:
        for arm, a in c["arms"].items():
            lines.append(
                f"| {c['batch']} | {c['length']} | {arm} | {a['step_ms']:.1f} | {a['step_ms_min']:.1f} | "
                f"{a['cpu_ms']:.1f} | {a['speedup_wall']:.2f} | {a['speedup_cpu']:.2f} | {a['tokens_per_s']:,.0f} | "
                f"{a['gflops']:.1f} | {a['peak_fraction']:.3f} | {a['first_step_s']:.1f} | "
                f"{c['load_before'][0]:.2f} / {c['load_after'][0]:.2f} |")
    lines += ["", "Dense float32 matmul peak (2048^3, all TF threads, best of 7), measured in the same process:", "",
              "| B | T | before: best / median GFLOP/s | after: best / median GFLOP/s |", "|---|---|---|---|"]
    for c in results["configs"]:
        b, a = c["peak_before"], c["peak_after"]
        lines.append(f"| {c['batch']} | {c['length']} | {b['best_gflops']:.1f} / {b['median_gflops']:.1f} | "
                     f"{a['best_gflops']:.1f} / {a['median_gflops']:.1f} |")
    lines += ["", f"`kernel_speedup` (fast over keras, wall, B=32 T=150): "
              f"{results.get('kernel_speedup', float('nan')):.2f}", ""]
    return "\n".join(lines)


def _load(load) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="32x150,128x150,32x400", help="BxT,BxT,...")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "kernel"), help="output stem: STEM.json and STEM.md")
    a = p.parse_args(argv)
    try:
        configs = [tuple(int(v) for v in c.split("x")) for c in a.configs.split(",")]
    except ValueError:
        print(f"error: --configs must look like 32x150,128x150; got {a.configs!r}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = {"argv": sys.argv[1:] if argv is None else argv,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine(), "load_start": os.getloadavg(), "configs": []}
    for batch, length in configs:
        print(f"== B={batch} T={length}", flush=True)
        results["configs"].append(run_config(batch, length, a.rounds, a.steps))
    results["load_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - start
    for c in results["configs"]:
        if (c["batch"], c["length"]) == (32, 150):
            results["kernel_speedup"] = c["arms"]["fast"]["speedup_wall"]
    Path(a.out + ".json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    Path(a.out + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
