"""`bilstm-exp compare`: which configuration is best, and at what cost, from the MLflow store.

Reads the runs of an experiment (or the child runs of one sweep with ``--parent``) with
``MlflowClient`` and reports, best first:

* a table: architecture, the params that differ between runs, the ranking metric (best epoch),
  val and test accuracy, epoch time, training tokens/s, p50 single-text latency and parameter
  count; runs that differ only in ``seed`` are one row with mean ± standard deviation and ``n``;
* the Pareto front of the ranking metric against epoch time (``*`` in the table): rows no
  other row beats on both accuracy and speed;
* ``compare.png``: the scatter with the front, and the validation curves of every run;
* ``compare.md``: the table, the front and the figure, and ``compare.csv`` (the table with run
  ids); all three are logged to the parent run (under ``compare/``) when ``--parent`` is given.

It imports MLflow, pandas and matplotlib, never TensorFlow, so it answers in about a second.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilstm_exp.errors import UserError
from bilstm_exp.tracking.store import best_value, child_runs, history

DEFAULT_EXPERIMENT = "bilstm-exp"
SWEEP_TAG = "bilstm_exp.sweep"
# Params never shown as "key params": identical by construction, or outcomes rather than choices.
HIDDEN_PARAM_PREFIXES = ("derived.", "tracking.", "profiling.", "training.verbose")
# (column, metric, how a per-epoch history becomes one number)
COLUMNS = [
    ("val_acc", "val/accuracy", "max"),
    ("test_acc", "test/accuracy", "last"),
    ("epoch_s", "time/epoch_s", "median"),
    ("tokens_per_s", "throughput/train_tokens_per_s", "median"),
    ("p50_ms", "latency/predict_p50_ms", "last"),
    ("params", "model/params", "last"),
]


class CompareError(UserError):
    """Nothing to compare, or the store, experiment or parent run cannot be found."""


# --------------------------------------------------------------------------- reading runs


def default_mode(metric: str) -> str:
    return "min" if any(word in metric for word in ("loss", "time/", "latency/", "_ms", "_s")) else "max"


def open_store(tracking_uri: str | None):
    """An MlflowClient on the given URI, MLFLOW_TRACKING_URI, or ./mlflow.db (which must exist)."""
    import os

    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        if not Path("mlflow.db").is_file():
            raise CompareError("no MLflow store here (./mlflow.db does not exist). Fix: run from the folder "
                               "where you trained, or pass --tracking-uri sqlite:///PATH/mlflow.db")
        uri = "sqlite:///mlflow.db"
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise CompareError(f"no MLflow store at {path}. Fix: pass the sqlite file you trained into, "
                               "e.g. --tracking-uri sqlite:///mlflow.db")
    from bilstm_exp.tracking import store

    store.open_store(uri)  # credentials refused, corrupt store named, a down server fails in seconds with the URI
    return MlflowClient(uri), uri


def load_runs(client, experiment: str | None, parent: str | None) -> tuple[list, Any, Any]:
    """(runs, experiment, parent run or None): a sweep's children, or the experiment's runs
    without sweep parents."""
    from mlflow.exceptions import MlflowException

    if parent:
        try:
            parent_run = client.get_run(parent)
        except MlflowException:
            raise CompareError(f"run '{parent}' not found in this store. Fix: copy the parent run id the "
                               "sweep printed ('sweep parent run ...'), or list sweeps in `mlflow ui`") from None
        exp = client.get_experiment(parent_run.info.experiment_id)
        if experiment and experiment != exp.name:
            raise CompareError(f"run '{parent}' belongs to experiment '{exp.name}', not '{experiment}'. "
                               "Fix: drop --experiment or pass the matching one")
        runs = child_runs(client, parent)
        if not runs:
            raise CompareError(f"run '{parent}' has no child runs. Fix: pass the parent run of a sweep "
                               "(python -m bilstm_exp -m ...), or drop --parent to compare all runs")
        return runs, exp, parent_run
    name = experiment or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"experiment '{name}' not found (this store has: {', '.join(names) or 'none'}). "
                           "Fix: pass one of those with --experiment NAME")
    runs = [run for run in client.search_runs([exp.experiment_id], max_results=10000)
            if run.data.tags.get(SWEEP_TAG) != "parent"]
    if not runs:
        raise CompareError(f"experiment '{name}' has no runs. Fix: train first, e.g. "
                           "python -m bilstm_exp training.epochs=1")
    return runs, exp, None


# --------------------------------------------------------------------------- summarising


@dataclass
class Row:
    """One configuration: a run, or several runs that differ only in their seed."""

    architecture: str
    key_params: dict[str, str]
    run_ids: list[str]
    names: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)  # column -> one value per run
    pareto: bool = False

    def mean(self, column: str) -> float | None:
        vals = self.values.get(column) or []
        return statistics.fmean(vals) if vals else None

    def spread(self, column: str) -> float | None:
        vals = self.values.get(column) or []
        return statistics.stdev(vals) if len(vals) > 1 else None


def _reduce(values: list[float], how: str) -> float | None:
    if not values:
        return None
    if how == "max":
        return max(values)
    if how == "median":
        return statistics.median(values)
    return values[-1]


def summarise(client, runs: list, metric: str, mode: str) -> tuple[list[Row], list[str], dict]:
    """Rows (best first), the names of the key params, and each run's validation curve."""
    visible = lambda key: not key.startswith(HIDDEN_PARAM_PREFIXES) and key != "seed"  # noqa: E731
    keys = sorted({k for run in runs for k in run.data.params if visible(k)})
    varying = [k for k in keys if len({run.data.params.get(k) for run in runs}) > 1 and k != "model.name"]
    groups: dict[tuple, Row] = {}
    curves: dict[str, list[float]] = {}
    for run in runs:
        params = run.data.params
        config_key = tuple((k, params.get(k)) for k in keys)
        arch = run.data.tags.get("architecture") or params.get("model.name", "?")
        row = groups.setdefault(config_key, Row(arch, {k: params.get(k, "-") for k in varying}, [], []))
        row.run_ids.append(run.info.run_id)
        row.names.append(run.info.run_name or run.info.run_id[:8])
        hists: dict[str, list[float]] = {}
        for column, name, how in COLUMNS:
            hists[name] = history(client, run, name) if how != "last" else []
            value = _reduce(hists[name], how) if how != "last" else run.data.metrics.get(name)
            if value is not None and math.isfinite(value):
                row.values.setdefault(column, []).append(float(value))
        score = best_value(client, run, metric, mode) if metric != "val/accuracy" else _reduce(
            hists["val/accuracy"], "max")
        if score is not None:
            row.values.setdefault("score", []).append(score)
        curves[run.info.run_id] = hists["val/accuracy"]
    rows = list(groups.values())
    sign = -1 if mode == "max" else 1
    # best score first; ties go to the faster configuration
    rows.sort(key=lambda r: (r.mean("score") is None, sign * (r.mean("score") or 0.0), r.mean("epoch_s") or 0.0))
    mark_pareto(rows, mode)
    return rows, varying, curves


def mark_pareto(rows: list[Row], mode: str) -> None:
    """Pareto front of the score (mode) against epoch time (lower is better)."""
    points = [(r, r.mean("score"), r.mean("epoch_s")) for r in rows]
    points = [(r, s if mode == "max" else -s, t) for r, s, t in points if s is not None and t is not None]
    for row, score, seconds in points:
        row.pareto = not any((s >= score and t <= seconds) and (s > score or t < seconds)
                             for other, s, t in points if other is not row)


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, spread: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.1f}"
    else:
        text = f"{value:.{digits}g}" if digits != 4 else f"{value:.4f}".rstrip("0").rstrip(".") or "0"
    return text + (f" ± {spread:.2g}" if spread is not None else "")


def table(rows: list[Row], varying: list[str], metric: str) -> tuple[list[str], list[list[str]]]:
    header = ["#", "front", "architecture", *[k.removesuffix(".name") for k in varying],
              f"{metric} (best)", "val acc", "test acc", "epoch s", "tokens/s", "p50 ms", "params", "n"]
    if metric == "val/accuracy":
        header.remove("val acc")
    body = []
    for i, row in enumerate(rows, 1):
        cells = [str(i), "*" if row.pareto else "", row.architecture, *[row.key_params[k] for k in varying],
                 _fmt(row.mean("score"), row.spread("score"))]
        if metric != "val/accuracy":
            cells.append(_fmt(row.mean("val_acc"), row.spread("val_acc")))
        cells += [_fmt(row.mean("test_acc"), row.spread("test_acc")),
                  _fmt(row.mean("epoch_s"), row.spread("epoch_s")),
                  _fmt(row.mean("tokens_per_s")), _fmt(row.mean("p50_ms")),
                  _fmt(row.mean("params")), str(len(row.run_ids))]
        body.append(cells)
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(out)


def write_csv(rows: list[Row], varying: list[str], path: Path) -> None:
    """One line per row, best first, with the run ids: for scripts and spreadsheets."""
    import csv

    columns = ["score", *[column for column, _, _ in COLUMNS]]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "pareto", "architecture", *varying,
                         *[f"{c}_{stat}" for c in columns for stat in ("mean", "std")], "n", "run_ids"])
        for rank, row in enumerate(rows, 1):
            stats = [row.mean(c) for c in columns], [row.spread(c) for c in columns]
            writer.writerow([rank, int(row.pareto), row.architecture, *[row.key_params[k] for k in varying],
                             *[v for pair in zip(*stats, strict=True) for v in pair], len(row.run_ids),
                             " ".join(row.run_ids)])


def plot(rows: list[Row], curves: dict[str, list[float]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    pts = [(r.mean("epoch_s"), r.mean("score"), r) for r in rows
           if r.mean("epoch_s") is not None and r.mean("score") is not None]
    for x, y, row in pts:
        ax1.scatter([x], [y], s=60 if row.pareto else 30, marker="o" if row.pareto else "x", zorder=3)
        ax1.annotate(f"{rows.index(row) + 1}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((x, y) for x, y, row in pts if row.pareto)
    if front:
        ax1.plot(*zip(*front, strict=True), "k--", linewidth=1, label="Pareto front")
        ax1.legend(loc="best")
    ax1.set_xlabel("time/epoch_s (lower is better)")
    ax1.set_ylabel(f"{metric} (best epoch)")
    ax1.set_title("accuracy vs cost (numbers: table rank)")
    ax1.grid(alpha=0.3)
    for rank, row in enumerate(rows, 1):
        for run_id, name in zip(row.run_ids, row.names, strict=True):
            values = curves.get(run_id) or []
            if values:
                ax2.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=f"{rank}: {name}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val/accuracy")
    ax2.set_title("validation curves")
    ax2.grid(alpha=0.3)
    if sum(len(r.run_ids) for r in rows) <= 12:
        ax2.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args) -> Path:
    """Run the comparison: print the table, write compare.png and compare.md, log them."""
    client, uri = open_store(args.tracking_uri)
    runs, exp, parent = load_runs(client, args.experiment, args.parent)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    others = [run for run in runs if run.info.status != "FINISHED"]
    if not finished:
        statuses = ", ".join(sorted({r.info.status for r in runs}))
        raise CompareError(f"none of the {len(runs)} runs finished ({statuses}). Fix: read the runs' "
                           "'error' tag in mlflow ui, fix the cause and run again")
    mode = args.mode or default_mode(args.metric)
    rows, varying, curves = summarise(client, finished, args.metric, mode)
    if all(row.mean("score") is None for row in rows):
        raise CompareError(f"no run logged the metric '{args.metric}'. Fix: pick a logged metric, e.g. "
                           "--metric val/accuracy or --metric test/accuracy")
    header, body = table(rows, varying, args.metric)
    scope = f"sweep {parent.info.run_id} ({parent.info.run_name})" if parent else f"experiment '{exp.name}'"
    text = render_text(header, body)
    print(f"{len(finished)} finished runs of {scope}, ranked by {args.metric} ({mode}); "
          "* = Pareto front of accuracy vs epoch time")
    print(text)
    if others:
        print(f"\nnot compared: {len(others)} unfinished run(s): "
              + ", ".join(f"{r.info.run_name} ({r.info.status}: {r.data.tags.get('failure_reason', '?')})"
                          for r in others))
    out = Path(args.output or f"reports/compare-{parent.info.run_id[:8] if parent else exp.name}")
    out.mkdir(parents=True, exist_ok=True)
    png, md, table_csv = out / "compare.png", out / "compare.md", out / "compare.csv"
    plot(rows, curves, args.metric, png)
    write_csv(rows, varying, table_csv)
    best = rows[0]
    lines = [f"# Comparison: {scope}", "",
             f"{len(finished)} finished runs ranked by `{args.metric}` (best epoch, {mode}); "
             "`*` marks the Pareto front of accuracy against `time/epoch_s`; with repeated seeds, "
             "values are mean ± standard deviation over `n` runs.", "",
             render_markdown(header, body), "",
             f"Best: **{best.architecture}** {', '.join(f'{k}={v}' for k, v in best.key_params.items())} "
             f"(runs {', '.join(best.run_ids)}).", "",
             "![accuracy vs epoch time, and validation curves](compare.png)", ""]
    if others:
        lines += [f"Not compared: {len(others)} unfinished run(s): " + ", ".join(
            f"`{r.info.run_name}` ({r.info.status})" for r in others), ""]
    md.write_text("\n".join(lines), encoding="utf-8")
    if parent:
        client.log_artifact(parent.info.run_id, str(png), "compare")
        client.log_artifact(parent.info.run_id, str(md), "compare")
        client.log_artifact(parent.info.run_id, str(table_csv), "compare")
    logged = f"; logged to run {parent.info.run_id} under compare/" if parent else ""
    print(f"\nwrote {png}, {md} and {table_csv}{logged}")
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--experiment", default=None, help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--parent", default=None, help="compare the child runs of this sweep parent run id")
    parser.add_argument("--metric", default="val/accuracy", help="ranking metric (best epoch); default val/accuracy")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="max or min of --metric is best (default: min for loss/time, else max)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--output", default=None,
                        help="folder for compare.png and compare.md (default: reports/compare-<parent|experiment>)")


def command(args) -> None:
    report(args)
