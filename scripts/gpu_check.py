"""The GPU checks of issue 24 (run through ``scripts/gpu_check.sh``, which first makes sure a GPU is there).

1. ``cudnn``: a FastLSTM model on the GPU (``uses_fast_path`` False: Keras's own LSTM path, cuDNN for these
   settings) gives the outputs of the same weights on the CPU fast path (computed in a child process that
   sees no GPU), on right-padded masked batches, to float32 rounding;
2. ``mirrored``: ``python -m bilstm_exp training.strategy=mirrored`` trains and exits 0;
3. ``mixed_precision``: ``python -m bilstm_exp training.mixed_precision=true`` trains and exits 0;
4. ``epoch``: a default epoch (data and model defaults, batch 32) with ``model.kernel=fast`` and with
   ``model.kernel=keras``, alternating, one untimed warm-up epoch each: medians and their ratio.

Prints one line per check and a summary; exits 1 if a check failed, 3 if TensorFlow sees no GPU.
    .venv/bin/python scripts/gpu_check.py [--skip-runs] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # cuDNN and the CPU loop sum in other orders; a wrong gate or mask is off by far more
RUN = [sys.executable, "-m", "bilstm_exp", "training.epochs=1", "data.num_samples=600"]  # in a temporary folder


def reference_model():
    """Embedding (masked) -> Bidirectional(FastLSTM) returning sequences -> Bidirectional(FastLSTM)."""
    import keras

    from bilstm_exp.models.fast_lstm import FastLSTM

    keras.utils.set_random_seed(0)
    tokens = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(50, 16, mask_zero=True)(tokens)
    x = keras.layers.Bidirectional(FastLSTM(24, return_sequences=True))(x)
    out = keras.layers.Bidirectional(FastLSTM(24))(x)
    return keras.Model(tokens, out)


def batch() -> np.ndarray:
    """Right-padded token ids of lengths 1..30 (what the pipelines feed, and what cuDNN needs)."""
    rng = np.random.default_rng(0)
    ids = np.zeros((16, 30), dtype="int32")
    for row, length in enumerate(rng.integers(1, 31, size=16)):
        ids[row, :length] = rng.integers(1, 50, size=length)
    return ids


def cpu_outputs(folder: Path) -> None:
    """(child process, no GPU visible) the CPU fast path's outputs for the weights in folder/weights.npz."""
    model = reference_model()
    weights = np.load(folder / "weights.npz")
    model.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
    fast = [layer.forward_layer.uses_fast_path for layer in model.layers[2:]]
    np.savez(folder / "cpu.npz", out=np.asarray(model(batch())), fast=np.array(fast))


def check_cudnn() -> tuple[bool, str]:
    model = reference_model()
    on_gpu = [layer.forward_layer.uses_fast_path for layer in model.layers[2:]]
    gpu_out = np.asarray(model(batch()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.savez(folder / "weights.npz", **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
        subprocess.run([sys.executable, __file__, "--cpu-reference", tmp], env=env, check=True)
        cpu = np.load(folder / "cpu.npz")
        diff = float(np.max(np.abs(cpu["out"] - gpu_out)))
        cpu_fast = bool(cpu["fast"].all())
    ok = not any(on_gpu) and cpu_fast and diff <= TOLERANCE
    return ok, (f"GPU takes Keras's path: {not any(on_gpu)}; CPU takes the fast path: {cpu_fast}; "
                f"max |GPU - CPU| = {diff:.2e} (tolerance {TOLERANCE:.0e})")


def check_run(override: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([*RUN, override], cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    detail = f"exit {done.returncode} in {seconds:.0f} s" + ("" if done.returncode == 0 else ": " + " | ".join(tail))
    return done.returncode == 0, detail


def time_epochs(epochs: int) -> tuple[bool, str]:
    """Default data and model, one fit epoch per call, the two kernels alternating; medians."""
    from bilstm_exp.analysis.bench_setup import alternate, compose_config, epoch_clock
    from bilstm_exp.data.prepare import prepare
    from bilstm_exp.training import runner

    config = compose_config([])
    runner.configure_tensorflow(config)
    prepared = prepare(config.data, config.seed)
    train = runner.datasets(config, prepared)["train"]
    models = {kernel: runner.compile_model(compose_config([f"model.kernel={kernel}"]), prepared, 100)
              for kernel in ("fast", "keras")}
    models["keras"].set_weights(models["fast"].get_weights())

    def fit(model):
        def epoch():
            clock = epoch_clock()
            model.fit(train, epochs=1, verbose=0, callbacks=[clock])
            return clock.seconds[-1]
        return epoch

    arms = {kernel: fit(model) for kernel, model in models.items()}
    alternate(arms, 1)  # tracing and compiling: not timed
    times = alternate(arms, epochs)
    fast, keras = float(np.median(times["fast"])), float(np.median(times["keras"]))
    return True, (f"epoch of {len(prepared.labels['train'])} texts, batch {config.training.batch_size}: "
                  f"model.kernel=fast {fast:.2f} s, keras {keras:.2f} s (keras/fast {keras / fast:.2f}; "
                  f"median of {epochs} alternating epochs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-runs", action="store_true", help="leave out the mirrored and mixed-precision runs")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per kernel (default 3)")
    parser.add_argument("--cpu-reference", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_reference:
        cpu_outputs(Path(args.cpu_reference))
        return 0
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("gpu_check: nvidia-smi sees a GPU but TensorFlow does not. Fix: install the CUDA build, "
              "pip uninstall -y tensorflow-cpu && pip install -c constraints.txt -e '.[gpu]'")
        return 3
    print(f"gpu_check: TensorFlow {tf.__version__} sees {', '.join(g.name for g in gpus)}")
    checks = {"cudnn": check_cudnn}
    if not args.skip_runs:
        checks |= {"mirrored": lambda: check_run("training.strategy=mirrored"),
                   "mixed_precision": lambda: check_run("training.mixed_precision=true")}
    checks["epoch"] = lambda: time_epochs(args.epochs)
    failed = []
    for name, check in checks.items():
        try:
            ok, detail = check()
        except Exception as error:  # a check that crashes is a failed check; the others still run
            ok, detail = False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        failed += [] if ok else [name]
    print(f"gpu_check: {len(checks) - len(failed)} of {len(checks)} passed" + (f"; failed: {', '.join(failed)}"
                                                                                 if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
