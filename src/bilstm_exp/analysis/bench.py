"""`bilstm-exp bench`: cost ratios measured in one process, on one machine, on the same data.

    bilstm-exp bench                 # full run (~15 minutes on 2 CPU cores)
    bilstm-exp bench --quick         # a few minutes, smaller data and grid
    bilstm-exp bench --json out.json --out benchmarks

Writes ``RESULTS.md``, a JSON file and ``grid.png`` to ``--out`` (default ``benchmarks/``):

1. ``tracking_overhead``: steady-state epoch time of the full plugin (TelemetryModel train step,
   EpochProfiler, MLflowLogger in an MLflow run sampling MLflow's system metrics) over bare
   ``model.fit`` of a plain ``keras.Model`` with the same initial weights, compile arguments, data
   and batches. Goal <= 1.03.
2. ``bucketing_speedup``: pad-to-max epoch time over length-bucketed, long-tailed lengths, with the
   test accuracy of both after the same epochs from the same initial weights. Goal >= 2.0, accuracy
   within one point.
3. ``vs_baseline_speedup``: what users write instead (``keras.utils.pad_sequences`` NumPy arrays,
   ``mlflow.keras.autolog()``, ``model.fit(x, y, validation_data=...)``) over the bilstm-exp default
   run (bucketed tf.data, full plugin, the default callbacks), epoch time incl. validation. Goal >= 1.5.
4. ``peak_fraction``: useful GFLOP/s (analytic FLOPs of real tokens only) of the default model's
   steady-state training over the dense float32 matmul peak of this machine. Goal >= 0.5.
5. ``serving_latency_ratio``: p50 latency of the registered pyfunc model on one raw text over the
   bare compiled Keras forward pass (a ``tf.function`` on already-tokenised ids). Goal <= 1.5.
6. ``grid``: training epoch time (per 10,000 samples) over sequence length x batch size for each
   architecture, as a table and a plot.

Fairness on a noisy machine: each comparison alternates its arms (A B, B A, A B, ...) after a
warm-up fit of each (tracing), and reports medians. An "epoch" is one ``fit(epochs=1)`` call timed
from ``on_epoch_begin`` to ``on_train_end``: training, validation and every callback's
``on_epoch_end`` (metric logging) are in; per-``fit`` set-up and autolog's end-of-fit model
logging are out (reported separately). TensorFlow is imported only when the bench runs.

The pieces: :mod:`~bilstm_exp.analysis.bench_setup` (profiles, fair timing), :mod:`~bilstm_exp.analysis.bench_measure`
(the measurements), :mod:`~bilstm_exp.analysis.bench_report` (RESULTS.md, grid.png); this module runs them in order.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bilstm_exp.analysis.bench_measure import Bench
from bilstm_exp.analysis.bench_report import GOALS, machine, plot_grid, render, verdict
from bilstm_exp.analysis.bench_setup import PROFILES, Settings, log

ORDER = ("kernel_speedup", "tracking_overhead", "peak_fraction", "bucketing_speedup", "vs_baseline_speedup",
         "serving_latency_ratio", "grid")  # peak_fraction reuses tracking_overhead's steady epoch time


def run(settings: Settings, out_dir: Path, json_path: Path | None = None) -> dict[str, Any]:
    """Every measurement in one process, in a throw-away store; writes the JSON, RESULTS.md and grid.png."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_uri = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    with tempfile.TemporaryDirectory(prefix="bilstm-exp-bench-") as tmp:
        bench = Bench(settings, Path(tmp))
        results: dict[str, Any] = {"machine": machine(), "settings": asdict(settings),
                                   "date": time.strftime("%Y-%m-%d %H:%M %Z")}
        load = results["load_average_1min"] = {}
        for key in ORDER:
            load[key] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
            results[key] = getattr(bench, key)()
        results["config"] = bench.describe()
        mlflow.set_tracking_uri(previous_uri)
    results["total_s"] = time.perf_counter() - start
    results["summary"] = {key: {"value": results[key]["ratio"], "goal": f"{GOALS[key][0]} {GOALS[key][1]}",
                                "verdict": verdict(key, results[key]["ratio"])} for key in GOALS}
    json_path = json_path or out_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str))
    plot_grid(results["grid"], out_dir / "grid.png")
    (out_dir / "RESULTS.md").write_text(render(results))
    log(f"wrote {out_dir / 'RESULTS.md'}, {json_path}, {out_dir / 'grid.png'}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes: less data, a smaller grid")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny, meaningless numbers
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default OUT/results.json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"),
                        help="folder for RESULTS.md, results.json and grid.png (default: benchmarks)")


def command(args: argparse.Namespace) -> None:
    settings = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    results = run(settings, args.out, args.json)
    for key, item in results["summary"].items():
        print(f"{key}\t{item['value']:.3f}\t{item['goal']}\t{item['verdict']}")
