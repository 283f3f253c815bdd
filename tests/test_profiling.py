"""Cost metrics of a run (timings, throughput, padding, FLOPs, peak fraction, gradient telemetry),
the profiler trace, and `bilstm-exp bench --smoke`. Real training, real MLflow; no timing thresholds."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from tests.conftest import SUBPROCESS_S, run_module, tiny

POSITIVE = [
    "time/data_prepare_s", "time/model_build_s", "time/step_p50_ms", "time/step_p95_ms", "time/epoch_s",
    "throughput/train_samples_per_s", "throughput/train_tokens_per_s", "throughput/predict_samples_per_s",
    "latency/predict_p50_ms", "latency/predict_p95_ms", "memory/peak_rss_mb", "model/params", "model/size_mb",
    "compute/train_flops_per_token", "compute/achieved_gflops", "compute/peak_fraction",
]


def _train(*overrides: str):
    from bilstm_exp.training import runner as training

    return training.run(validate(compose(tiny(*overrides))), root=Path.cwd())


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


# --------------------------------------------------------------------------- FLOP formula (no training)


def test_train_flops_per_token_matches_a_hand_count():
    from bilstm_exp.training.profiling import train_flops_per_token

    # basic BiLSTM, embedding 8, 4 units per direction, 2 classes, 10 real tokens per text on average.
    # One direction, one token: 4 gates x (8 inputs + 4 recurrent) x 4 units multiply-adds = 192 MACs
    # = 384 FLOPs, plus 13 element-wise FLOPs per unit = 52 -> 436; two directions -> 872.
    # Head: one sigmoid output over 8 features = 16 FLOPs per text = 1.6 per token.
    # Training = 3 x forward.
    model = validate(compose(["model=basic", "model.embedding_dim=8", "model.lstm_units=4"])).model
    assert train_flops_per_token(model, num_classes=2, mean_length=10) == pytest.approx(3 * (872 + 1.6))


def test_flops_grow_with_width_and_count_each_architecture():
    from bilstm_exp.training.profiling import recurrent_flops, train_flops_per_token

    assert recurrent_flops(8, 4, "gru") == 2 * 3 * 12 * 4 + 13 * 4
    counts = {}
    for arch in ("unidirectional", "basic", "attention", "stacked"):
        model = validate(compose([f"model={arch}"])).model
        counts[arch] = train_flops_per_token(model, 2, 150)
    assert counts["basic"] == pytest.approx(2 * counts["unidirectional"], rel=0.01)  # both directions
    assert counts["attention"] > counts["basic"]  # attention scoring on top of the same BiLSTM
    assert all(value > 0 for value in counts.values())
    with pytest.raises(ValueError, match="mean_length"):
        train_flops_per_token(validate(compose([])).model, 2, 0)


def test_matmul_peak_is_cached_with_its_threads_and_load(tmp_path, monkeypatch):
    from bilstm_exp.training import profiling

    monkeypatch.setenv("BILSTM_EXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(profiling, "_MEASURED", {})  # as in a new process
    first = profiling.matmul_peak_gflops()
    cache = json.loads((tmp_path / "cache" / "matmul_peak.json").read_text())
    entry = cache[json.dumps(profiling.machine(), sort_keys=True)]
    assert entry["gflops"] == first > 0
    assert entry["threads"] == profiling.matmul_threads() >= 1
    # a peak measured at a quiet moment is read back, not measured again
    entry["load_per_core"], entry["gflops"] = 0.0, 123.0
    (tmp_path / "cache" / "matmul_peak.json").write_text(json.dumps(cache))
    assert profiling.matmul_peak_gflops() == 123.0
    # one measured under load is measured again by the next process, and the higher value kept
    entry["load_per_core"], entry["gflops"] = 5.0, 1e-3
    (tmp_path / "cache" / "matmul_peak.json").write_text(json.dumps(cache))
    assert profiling.matmul_peak_gflops() == first  # not in this one: it measured already (a CV's next fold)
    monkeypatch.setattr(profiling, "_MEASURED", {})
    again = profiling.matmul_peak_gflops()
    assert again > 1e-3
    written = json.loads((tmp_path / "cache" / "matmul_peak.json").read_text())
    assert written[json.dumps(profiling.machine(), sort_keys=True)]["gflops"] == again


# --------------------------------------------------------------------------- tracked runs


def test_every_cost_metric_is_recorded_and_sane(trained, tmp_path):
    result = trained.basic  # profiling=trace, 2 epochs
    client = trained.client()
    metrics = client.get_run(result.run_id).data.metrics
    for key in POSITIVE:
        assert key in metrics, key
        assert math.isfinite(metrics[key]) and metrics[key] > 0, (key, metrics[key])
    assert metrics["time/step_p95_ms"] >= metrics["time/step_p50_ms"]
    assert metrics["latency/predict_p95_ms"] >= metrics["latency/predict_p50_ms"]
    assert 0.0 <= metrics["data/padding_fraction"] < 1.0
    assert metrics["time/first_epoch_overhead_s"] >= 0.0
    assert len(_history(client, result.run_id, "time/epoch_s")) == 2  # one per epoch
    assert metrics["compute/achieved_gflops"] == pytest.approx(
        metrics["compute/train_flops_per_token"] * result.history["throughput/train_tokens_per_s"][1] / 1e9)
    # clipping=none (the default): the optimizer never changes the gradient
    assert _history(client, result.run_id, "grad/clip_fraction") == [0.0, 0.0]
    assert all(v > 0 for v in _history(client, result.run_id, "grad/global_norm_max"))
    # profiling=trace: a TensorBoard-readable profiler trace under the artifact folder profile/
    local = client.download_artifacts(result.run_id, "profile", str(tmp_path))
    traces = list(Path(local).glob("plugins/profile/*/*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def test_steps_per_execution_trains_the_same_and_step_times_stay_per_step():
    """training.steps_per_execution (32 by default) runs several steps per Keras call: the same weights as one
    step per call, and time/step_p50_ms is a step's time, not a call's (10 batches: calls of 4, 4 and 2)."""
    import keras
    import numpy as np

    from bilstm_exp.training import profiling

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)).astype("float32"), rng.integers(0, 2, size=(80, 1)).astype("float32")
    weights, logs = {}, {}
    for steps in (1, 4):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy", steps_per_execution=steps)
        profiler = profiling.EpochProfiler(80, 80 * 6)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[profiler])
        weights[steps], logs[steps] = model.get_weights(), {k: v[-1] for k, v in history.history.items()}
        assert int(model.optimizer.iterations) == 20
    assert all(np.array_equal(a, b) for a, b in zip(weights[1], weights[4], strict=True))
    for steps in (1, 4):
        # ten step times that add up to the training time: their median is at most a fifth of it (two mean
        # steps); one time per call (calls of 4, 4 and 2 steps) would put the median near 4 mean steps
        per_step_ms = 1000 * logs[steps]["time/train_s"] / 10
        assert 0 < logs[steps]["time/step_p50_ms"] <= 2 * per_step_ms * (1 + 1e-9)
        assert logs[steps]["time/step_p95_ms"] >= logs[steps]["time/step_p50_ms"]


@pytest.mark.slow
def test_clip_fraction_is_one_with_a_tiny_threshold_and_bucketing_pads_less(workdir):
    from bilstm_exp.data import batching
    from bilstm_exp.training import runner as training

    result = _train("basic", "training.epochs=2", "clipping=global_norm", "clipping.threshold=1e-6",
                    "data.padding=max")
    client = MlflowClient()
    assert _history(client, result.run_id, "grad/clip_fraction") == [1.0, 1.0]
    padded_to_max = client.get_run(result.run_id).data.metrics["data/padding_fraction"]
    # the same prepared data through the default (bucketed) pipeline
    bucketed = batching.padding_stats(training.datasets(validate(compose(tiny("basic"))), result.prepared)["train"])
    assert 0.0 <= bucketed.fraction < padded_to_max < 1.0


# --------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_bench_smoke_writes_every_key(workdir):
    # the session's cached matmul peak (one_matmul_peak): a cache of its own would measure it up to six times
    out = workdir / "bench"
    done = run_module(["bench", "--smoke", "--out", str(out), "--json", str(out / "r.json")], cwd=workdir,
                      module="bilstm_exp.cli.main", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "r.json").read_text())
    for key in ("kernel_speedup", "tracking_overhead", "bucketing_speedup", "vs_baseline_speedup", "peak_fraction",
                "serving_latency_ratio"):
        assert results[key]["ratio"] > 0, key
        assert key in results["summary"] and key in (out / "RESULTS.md").read_text()
    assert {"test_accuracy_max", "test_accuracy_bucket"} <= set(results["bucketing_speedup"])
    assert {"baseline", "ours"} <= set(results["vs_baseline_speedup"]["logged"])
    cells = results["grid"]["cells"]
    assert {c["architecture"] for c in cells} == {"basic", "attention", "stacked", "unidirectional"}
    assert all(c["epoch_s_per_10k"] > 0 for c in cells)
    assert {"cpu", "cores", "tensorflow"} <= set(results["machine"])
    assert (out / "grid.png").stat().st_size > 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="with a GPU the script runs its checks (minutes)")
def test_gpu_check_script_says_no_gpu_skipped_and_exits_0_without_a_gpu():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=SUBPROCESS_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gpu_check: no GPU: skipped (nvidia-smi finds none)"
