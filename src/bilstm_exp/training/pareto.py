"""The Pareto front of a multi-objective search, logged on the sweep's parent run.

The Optuna sweeper (``hydra_plugins.bilstm_exp_optuna_sweeper``) writes the front to
``<sweep dir>/optimization_results.yaml``: ``objectives``, ``directions`` and ``solutions`` (each
trial's number, the job of this sweep that ran it, its params and values). At the end of the sweep
the sweep callback calls :func:`log_front`, which puts on the parent run:

* the artifact ``optuna/pareto_front.json``, a table in MLflow's format (``mlflow.load_table`` reads
  it; the tag ``mlflow.loggedArtifacts`` marks it as one): one row per trial on the front with its
  ``run_id``, one column per objective and one ``params.<key>`` column per searched key. Written
  whole, not appended as ``log_table`` would, so a resumed sweep replaces it;
* the tag ``pareto_front`` (the front in words) and ``pareto_front_run_ids`` (the child runs on it).

A single-objective result (``best_value``) has no front: nothing is logged. A trial of a shared
study run by another worker has no run here (``run_id`` empty): its run is under that worker's parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FRONT_ARTIFACT = "optuna/pareto_front.json"
FRONT_TAG = "pareto_front"
FRONT_RUNS_TAG = "pareto_front_run_ids"
TABLES_TAG = "mlflow.loggedArtifacts"  # MLflow's list of a run's table artifacts
TAG_CHARS = 5000  # MLflow caps tag values; the table artifact holds the whole front


def front_rows(results: dict[str, Any], children: list) -> list[dict[str, Any]]:
    """One row per solution: trial, run_id (the child run whose ``sweep_job`` tag is the solution's
    job), the objectives' values and the params."""
    runs = {run.data.tags.get("sweep_job"): run.info.run_id for run in children}
    rows = []
    for solution in results["solutions"]:
        job = solution.get("job")
        row: dict[str, Any] = {"trial": solution["trial"], "run_id": runs.get(str(job)) if job is not None else None}
        row.update(zip(results["objectives"], solution["values"]))
        row.update({f"params.{key}": value for key, value in solution["params"].items()})
        rows.append(row)
    return rows


def describe(rows: list[dict[str, Any]], objectives: list[str]) -> str:
    """The front in words: ``2 trials: #0 (val/loss=0.6931, latency/predict_p50_ms=1.2); #3 (...)``."""
    trials = "; ".join(f"#{row['trial']} (" + ", ".join(f"{name}={row[name]:.4g}" for name in objectives) + ")"
                       for row in rows)
    return f"{len(rows)} trials: {trials}"[:TAG_CHARS]


def log_front(parent, results_path: Path, children: list) -> None:
    """Log the Pareto front of RESULTS_PATH on the parent run's session (see the module docstring)."""
    import json

    import yaml

    results = yaml.safe_load(results_path.read_text(encoding="utf-8")) or {}
    if not results.get("solutions") or not results.get("objectives"):
        return
    rows = front_rows(results, children)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    parent.log_dict({"columns": columns, "data": [[row.get(key) for key in columns] for row in rows]}, FRONT_ARTIFACT)
    parent.log_tags({FRONT_TAG: describe(rows, results["objectives"]),
                     FRONT_RUNS_TAG: " ".join(row["run_id"] for row in rows if row["run_id"]),
                     TABLES_TAG: json.dumps([{"path": FRONT_ARTIFACT, "type": "table"}])})
