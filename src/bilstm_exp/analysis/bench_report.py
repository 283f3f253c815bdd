"""The bench's report: RESULTS.md (each measure against its goal, the details, the cost grid) and grid.png.

Reads only the results dict that :func:`bilstm_exp.analysis.bench.run` writes as JSON, so a report can be
rendered again from a saved ``results.json``.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from bilstm_exp.analysis.bench_setup import ARCHITECTURES

GOALS = {"kernel_speedup": (">=", 2.0), "tracking_overhead": ("<=", 1.03), "bucketing_speedup": (">=", 2.0),
         "vs_baseline_speedup": (">=", 3.0), "peak_fraction": (">=", 0.3), "serving_latency_ratio": ("<=", 1.5)}


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    from bilstm_exp.training.profiling import machine as tf_machine

    info = tf_machine()
    info.pop("host", None)
    info.update({"python": platform.python_version(), "keras": version("keras"), "mlflow": version("mlflow"),
                 "platform": platform.platform()})
    return info


def machine_sentence(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    """One line for a benchmark's write-up: the CPU, its cores, Python and TensorFlow, and the 1-minute
    load average before and after the measurement (``os.getloadavg()`` at each end)."""
    info = machine()
    return (f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, TensorFlow "
            f"{info['tensorflow']}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.")


def write_report(path: Path, lines: list[str]) -> None:
    """Write a benchmark's markdown lines to ``path`` and print them."""
    text = "\n".join(lines)
    path.write_text(text)
    print(text)


def verdict(key: str, value: float) -> str:
    op, goal = GOALS[key]
    met = value <= goal if op == "<=" else value >= goal
    if met:
        return "met"
    miss = (value / goal - 1) if op == "<=" else (1 - value / goal)
    return f"missed by {100 * miss:.0f}%"


def plot_grid(grid: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = grid["cells"]
    archs = [a for a in ARCHITECTURES if any(c["architecture"] == a for c in cells)]
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.8), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        mine = [c for c in cells if c["architecture"] == arch]
        for batch in sorted({c["batch_size"] for c in mine}):
            row = sorted((c for c in mine if c["batch_size"] == batch), key=lambda c: c["seq_length"])
            ax.plot([c["seq_length"] for c in row], [c["epoch_s_per_10k"] for c in row], marker="o",
                    label=f"batch {batch}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(arch)
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"training epoch seconds per {grid['samples_per_epoch']:,} samples")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid_tables(grid: dict[str, Any]) -> list[str]:
    lines = []
    cells = grid["cells"]
    for arch in ARCHITECTURES:
        mine = [c for c in cells if c["architecture"] == arch]
        if not mine:
            continue
        batches = sorted({c["batch_size"] for c in mine})
        lines += [f"**{arch}** (seconds per epoch of {grid['samples_per_epoch']:,} samples; "
                  "k tokens/s in brackets)", "",
                  "| length \\ batch | " + " | ".join(str(b) for b in batches) + " |",
                  "|---" * (len(batches) + 1) + "|"]
        for length in sorted({c["seq_length"] for c in mine}):
            row = {c["batch_size"]: c for c in mine if c["seq_length"] == length}
            lines.append(f"| {length} | " + " | ".join(
                f"{row[b]['epoch_s_per_10k']:.1f} ({row[b]['tokens_per_s'] / 1000:.0f})" for b in batches) + " |")
        lines.append("")
    return lines


def render(results: dict[str, Any]) -> str:
    """RESULTS.md: where and how it ran, each measure against its goal, the details, the grid, the load."""
    load = results.get("load_average_1min") or {}
    lines = [*_header(results), "", "## Details", "", *_details(results), "",
             "## Epoch time over sequence length and batch size", "",
             "Training steps (`train_on_batch`, the TelemetryModel step) on uniform-length random token ids, "
             "default sizes per architecture; one warm-up step per cell. Plot: `grid.png`.", "",
             *_grid_tables(results["grid"]),
             "## Machine load", "",
             f"1-minute load average at the start of each section ({results['machine']['cores']} cores; above the "
             "core count means other processes competed for the CPU and wall-time ratios are noisy; the process "
             "CPU time ratios are the steadier view): " + ", ".join(f"{k} {v}" for k, v in load.items()), ""]
    return "\n".join(lines)


def _header(results: dict[str, Any]) -> list[str]:
    """The title, the machine, the configuration and the table of measures against their goals."""
    m, s = results["machine"], results["settings"]
    lines = [
        "# bilstm-exp benchmark results", "",
        f"Generated by `bilstm-exp bench{' --' + s['name'] if s['name'] != 'full' else ''}` on "
        f"{results['date']}, in one process (total {results['total_s'] / 60:.1f} min).", "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"MLflow {m['mlflow']}, Python {m['python']} ({m['platform']}).", "",
        f"Configuration: the default composition{' with `' + ' '.join(s['overrides']) + '`' if s['overrides'] else ''}"
        f": {results['config']}. Each comparison alternates its arms ({s['reps']} timed epochs each after a "
        "warm-up) and reports medians.", "",
        "| measure | value | goal | verdict |", "|---|---|---|---|",
    ]
    for key, (op, goal) in GOALS.items():
        value = results[key]["ratio"]
        lines.append(f"| `{key}` | {value:.3f} | {op} {goal} | {verdict(key, value)} |")
    return lines


def _details(r: dict[str, Any]) -> list[str]:
    """One bullet per measure: the two arms' numbers behind its ratio."""
    k, t = r["kernel_speedup"], r["tracking_overhead"]
    kernel_cells = "; ".join(f"{shape}: {c['ratio']:.2f} (CPU time {c.get('cpu_ratio', float('nan')):.2f}; first "
                             f"step {c['first_step_s']['keras']:.1f} s keras, {c['first_step_s']['fast']:.1f} s fast)"
                             for shape, c in k["shapes"].items())
    return [
        f"- **kernel_speedup**: one train step of the default model with `model.kernel=keras` "
        f"({k['keras_step_ms']:.1f} ms) over `model.kernel=fast` ({k['fast_step_ms']:.1f} ms), same weights, "
        f"full-length random batches, median of alternating steps. Per shape (batch x length): {kernel_cells}.",
        f"- **tracking_overhead**: full plugin {t['numerator_median_s']:.3f} s/epoch vs bare `model.fit` "
        f"{t['denominator_median_s']:.3f} s/epoch (training only; the plugin's runs sample MLflow's system "
        f"metrics); median of per-pair ratios "
        f"{t['pairwise_median_ratio']:.3f}; process CPU time ratio {t['cpu_ratio']:.3f}. Samples (wall s): full "
        f"{_fmt(t['numerator_s'])}; bare {_fmt(t['denominator_s'])}.",
        *_speed_details(r),
    ]


def _speed_details(r: dict[str, Any]) -> list[str]:
    b, v, p, sv = (r["bucketing_speedup"], r["vs_baseline_speedup"], r["peak_fraction"], r["serving_latency_ratio"])
    return [
        f"- **bucketing_speedup**: pad-to-max {b['numerator_median_s']:.3f} s/epoch vs bucketed "
        f"{b['denominator_median_s']:.3f} s/epoch (CPU time ratio {b['cpu_ratio']:.3f}); padding fraction "
        f"{b['padding_fraction_max']:.3f} vs "
        f"{b['padding_fraction_bucket']:.3f} (boundaries {b['bucket_boundaries']}); test accuracy after "
        f"{b['epochs_trained']} epochs from the same initial weights: {b['test_accuracy_max']:.3f} (max) vs "
        f"{b['test_accuracy_bucket']:.3f} (bucket), a gap of {b['accuracy_gap_points']:.1f} points.",
        f"- **vs_baseline_speedup**: baseline {v['numerator_median_s']:.3f} s/epoch vs bilstm-exp default "
        f"{v['denominator_median_s']:.3f} s/epoch (training + validation + logging; CPU time ratio "
        f"{v['cpu_ratio']:.3f}); padding fraction "
        f"{v['padding_fraction_baseline']:.3f} vs {v['padding_fraction_ours']:.3f}. Per `fit` outside the "
        f"epoch: baseline {v['per_fit_outside_epoch_median_s']['baseline']:.2f} s (autolog: params, datasets, "
        f"model summary, model logged at fit end), bilstm-exp {v['per_fit_outside_epoch_median_s']['ours']:.2f} s.",
        f"  - baseline logged: {_fmt_logged(v['logged']['baseline'])}",
        f"  - bilstm-exp epoch loop logged: {_fmt_logged(v['logged']['ours'])}",
        f"  - a whole bilstm-exp run (`training.run`) logged: {_fmt_logged(sv['logged_by_bilstm_exp_run'])}",
        f"- **peak_fraction**: {p['achieved_gflops']:.1f} useful GFLOP/s ({p['real_tokens_per_s']:,.0f} real "
        f"tokens/s x {p['train_flops_per_token']:,.0f} training FLOPs per token) over a dense float32 matmul "
        f"peak of {p['matmul_peak_gflops']:.1f} GFLOP/s on {p.get('matmul_threads', '?')} threads (all cores, "
        f"measured at a quiet moment: `profiling.matmul_peak_gflops`). Best grid cell: {_best_cell(r['grid'])}.",
        f"- **serving_latency_ratio**: registered pyfunc p50 {sv['served_p50_ms']:.2f} ms on one raw text vs "
        f"bare `tf.function` forward pass p50 {sv['bare_p50_ms']:.2f} ms on its token ids.",
    ]


def _best_cell(grid: dict[str, Any]) -> str:
    best = max(grid["cells"], key=lambda c: c["peak_fraction"])
    return (f"{best['architecture']}, length {best['seq_length']}, batch {best['batch_size']}: "
            f"{best['gflops']:.1f} GFLOP/s, peak fraction {best['peak_fraction']:.3f}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _fmt_logged(logged: dict[str, Any]) -> str:
    return (f"{logged['params']} params, {len(logged['metrics'])} metrics, artifacts "
            f"{', '.join(logged['artifacts']) or 'none'}, {logged['logged_models']} logged model(s)")
