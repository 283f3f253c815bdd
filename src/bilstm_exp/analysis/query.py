"""Reading the runs to compare from MLflow: which runs, which metric they were trained for, their numbers.

``load_runs`` gives an experiment's runs or one sweep's child runs, ``expand_folds`` replaces each K-fold
parent by its fold runs, ``monitored`` finds ``training.monitor``, and ``measure`` turns one run into the
numbers the report needs (the monitored metric of the weights it kept, cost metrics, its validation curve).
Reads the store with ``MlflowClient`` only.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any

from bilstm_exp.errors import UserError
from bilstm_exp.tracking.store import child_runs, history

DEFAULT_EXPERIMENT = "bilstm-exp"
DEFAULT_METRIC = "val/loss"
SWEEP_TAG = "bilstm_exp.training.sweep"
FOLD_TAG = "fold"  # on the child runs of a K-fold run
CV_ROLE_TAG = "cv.role"  # "parent" on a K-fold run's parent (crossval.py)
PARENT_TAG = "mlflow.parentRunId"
KEPT_METRIC = "best/epoch"  # a run logged the kept weights' val/* one step past its last epoch, with this metric
# (column, metric, how a per-epoch history becomes one number)
COLUMNS = [
    ("test_acc", "test/accuracy", "last"),
    ("epoch_s", "time/epoch_s", "median"),
    ("tokens_per_s", "throughput/train_tokens_per_s", "median"),
    ("p50_ms", "latency/predict_p50_ms", "last"),
    ("params", "model/params", "last"),
]


class CompareError(UserError):
    """Nothing to compare, or the store, experiment, parent run or baseline cannot be found."""


def default_mode(metric: str) -> str:
    """min for losses, times and latencies; max for accuracies, AUCs and throughputs."""
    name = metric.lower()
    if "per_s" in name or name.startswith("throughput/"):
        return "max"
    lower_is_better = ("loss" in name or name.startswith(("time/", "latency/", "memory/"))
                       or name.endswith(("_ms", "_s", "_mb")))
    return "min" if lower_is_better else "max"


def mlflow_metric(name: str) -> str:
    """A Keras log key (val_loss) as the run's MLflow metric name (val/loss)."""
    for split in ("val", "train", "test"):
        if name.startswith(split + "_"):
            return f"{split}/{name[len(split) + 1:]}"
    return name


def open_store(tracking_uri: str | None):
    """(MlflowClient, URI) on the given URI, MLFLOW_TRACKING_URI, or ./mlflow.db (which must exist):
    credentials refused, a corrupt store named, a down server failing in seconds with the URI."""
    from bilstm_exp.tracking import store

    uri = store.existing_store(tracking_uri)
    return store.open_store(uri), uri


def load_runs(client, experiment: str | None, parent: str | None) -> tuple[list, Any, Any]:
    """(runs, experiment, parent run or None): a sweep's children, or the experiment's runs
    without sweep parents."""
    if parent:
        return _sweep_runs(client, experiment, parent)
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


def _sweep_runs(client, experiment: str | None, parent: str) -> tuple[list, Any, Any]:
    from mlflow.exceptions import MlflowException

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


def is_kfold_parent(run) -> bool:
    return run.data.tags.get(CV_ROLE_TAG) == "parent" or any(key.startswith("cv/") for key in run.data.metrics)


def expand_folds(client, runs: list) -> tuple[list, dict[str, Any]]:
    """Replace each K-fold parent (tag ``cv.role=parent``, ``cv/...`` metrics, or children with a ``fold``
    tag) by its fold runs: one evaluation, K samples. Returns (runs, each fold run's id -> its K-fold parent), each
    run once."""
    by_id = {run.info.run_id: run for run in runs}
    folds: dict[str, list] = defaultdict(list)
    for run in runs:
        parent_id = run.data.tags.get(PARENT_TAG)
        if FOLD_TAG in run.data.tags and parent_id:
            folds[parent_id].append(run)
    out = []
    for run in runs:
        run_id = run.info.run_id
        if run_id not in folds and not is_kfold_parent(run):
            out.append(run)
            continue
        if run_id not in folds:  # the folds are not in the list (a sweep of K-fold runs): fetch them
            found = [c for c in child_runs(client, run_id) if FOLD_TAG in c.data.tags]
            folds[run_id] = found
            out.extend(found)
        if not folds[run_id]:
            out.append(run)  # a K-fold parent whose folds are gone: one sample of its own
    parents: dict[str, Any] = {}
    for parent_id, children in folds.items():
        parent = by_id.get(parent_id) or client.get_run(parent_id)
        for child in children:
            parents[child.info.run_id] = parent
    unique = list({run.info.run_id: run for run in out}.values())
    return unique, parents


def monitored(runs: list) -> tuple[str, str | None]:
    """(metric, mode or None) the runs were trained to optimise: ``training.monitor`` (the most
    common value), else the early-stopping monitor, else val/loss."""
    for key in ("training.monitor", "training.early_stopping.monitor"):
        values = Counter(run.data.params[key] for run in runs if run.data.params.get(key))
        if values:
            metric = mlflow_metric(values.most_common(1)[0][0])
            modes = Counter(run.data.params.get(key + "_mode") or run.data.params.get("training.monitor_mode")
                            for run in runs)
            mode = next((m for m, _ in modes.most_common() if m in ("min", "max")), None)
            return metric, mode
    return DEFAULT_METRIC, None


def measure(client, run, scores: dict[str, tuple[str, str]], curve_metric: str) -> tuple[dict[str, float], list]:
    """(numbers, validation curve) of one run: for each ``column: (metric, mode)`` of ``scores`` the metric
    of the weights the run kept (its final value when it logged ``best/epoch``, else the best epoch's),
    the cost columns of :data:`COLUMNS`, and ``curve_metric`` per epoch."""
    metrics = run.data.metrics
    kept_step = None
    if KEPT_METRIC in metrics:
        kept_step = max((m.step for m in client.get_metric_history(run.info.run_id, KEPT_METRIC)), default=None)
    numbers: dict[str, float] = {}
    for column, (metric, mode) in scores.items():
        value = _kept_score(client, run, metric, mode, kept_step)
        if value is not None:
            numbers[column] = float(value)
    for column, name, how in COLUMNS:
        value = _median(history(client, run, name)) if how == "median" else metrics.get(name)
        if value is not None and math.isfinite(value):
            numbers[column] = float(value)
    return numbers, history(client, run, curve_metric, before_step=kept_step)


def _kept_score(client, run, metric: str, mode: str, kept_step: int | None) -> float | None:
    metrics = run.data.metrics
    if KEPT_METRIC in metrics and metric in metrics and math.isfinite(metrics[metric]):
        return metrics[metric]
    values = history(client, run, metric, before_step=kept_step)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
