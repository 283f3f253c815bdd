"""The nested estimate of a search, logged on the sweep's parent run beside the selected trial's value.

A search's best value is its own selection noise: of many trials, the one whose validation score came
out best is picked, so that score is optimistic. ``data.heldout_fraction`` (``hparams_search=optuna_nested``)
sets a stratified, seeded share of the data aside before any split or fold: every trial selects on the
rest (its cross-validation, or its validation split), and once the search is over the Optuna sweeper runs
one more job, the best trial's config with ``data.heldout_as_test=true data.folds=null``: trained once on
the selection data (a ``data.val_fraction`` of it validates, for early stopping) and tested on the held-out
part. That job's test metrics are the selection-free estimate.

Why a held-out split and not nested cross-validation: nested CV repeats the whole search once per outer
fold (5 outer folds cost 5 searches); the held-out split costs one extra training run, so the search's
hour stays an hour on a 2-core machine. Its price is a noisier estimate (one split of, say, 2,000 texts:
a 95% interval of about +/- 0.02 on an accuracy near 0.8) and 20% less data for the search.

At the end of the sweep the callback (:mod:`bilstm_exp.training.sweep`) calls :func:`log_estimate`, which
puts on the parent run:

* metric ``search/selected_value``: the best trial's objective (``training.monitor``, its CV mean with
  ``data.folds``), and ``search/selected_<m>``: the best trial's ``val/<m>`` for each held-out metric;
* metrics ``search/heldout_<m>``: the held-out run's ``test/<m>`` (``loss``, ``accuracy``, ``auc`` or
  ``macro_f1``), and ``search/heldout_examples``;
* tags ``search.heldout_run_id`` and ``search.heldout_data`` (what the estimate was computed on: the share,
  the texts, the testing dataset's digest), and ``search.selected_on`` (what the selected value was).

No TensorFlow here; MLflow entities only.
"""

from __future__ import annotations

import json
from typing import Any

FLAG = "data.heldout_as_test"  # the param of the held-out job (a trial logs False)
SELECTED = "search/selected_value"
RUN_TAG = "search.heldout_run_id"
DATA_TAG = "search.heldout_data"
SELECTED_ON_TAG = "search.selected_on"
PREFIX = "[bilstm-exp]"


def is_heldout(run) -> bool:
    """The held-out job of a nested search (not a trial)."""
    return run.data.params.get(FLAG) == "True"


def partition(children: list) -> tuple[list, list]:
    """(the trials, the held-out jobs) among a sweep's child runs. A sweep of held-out runs only (a grid
    with data.heldout_as_test=true) has no search to estimate: its jobs are its trials."""
    trials = [run for run in children if not is_heldout(run)]
    return (trials, [run for run in children if is_heldout(run)]) if trials else (children, [])


def split_rows(run) -> dict[str, tuple[int, str]]:
    """context (training, validation, testing) -> (rows, digest) of the datasets a run logged."""
    from bilstm_exp.tracking.datasets import context_of

    return {context_of(entry): (int(json.loads(entry.dataset.profile or "{}").get("rows", 0)), entry.dataset.digest)
            for entry in (run.inputs.dataset_inputs if run.inputs else [])}


def selected_where(best) -> str:
    """Where the best trial's value comes from: its own cross-validation or its own validation split."""
    folds = best.data.params.get("data.folds", "None")
    return f"its own {folds}-fold CV" if folds not in ("None", "", "null") else "its own validation split"


def estimate(best, heldout, selected: float) -> dict[str, float]:
    """``search/*`` metrics: the selected value, then for each ``test/<m>`` of the held-out run the best
    trial's own ``val/<m>`` (its CV mean with folds) and the held-out value."""
    out = {SELECTED: selected}
    for key, value in sorted(heldout.data.metrics.items()):
        if not key.startswith("test/"):
            continue
        name = key[len("test/"):]
        mine = best.data.metrics.get(f"cv/val/{name}_mean", best.data.metrics.get(f"val/{name}"))
        if mine is not None:
            out[f"search/selected_{name}"] = mine
        out[f"search/heldout_{name}"] = value
    return out


def describe(heldout, rows: dict[str, tuple[int, str]]) -> str:
    """Tag ``search.heldout_data``: the share and texts held out, and what the final run trained on."""
    share = float(heldout.data.params.get("data.heldout_fraction", "nan"))
    test, digest = rows.get("testing", (0, ""))
    train, val = rows.get("training", (0, ""))[0], rows.get("validation", (0, ""))[0]
    return (f"the held-out {share:.0%} of the data ({test} texts, testing dataset digest {digest}), set aside "
            f"before the search: no trial trained, validated or tested on it; the best trial's config trained "
            f"once on the other {train + val} texts (train {train}, val {val})")


def log_estimate(client, parent, best, heldout_runs: list, metric: str, selected: float) -> list[str]:
    """Log the nested estimate on the parent's session (see the module docstring); the summary lines
    to print. Nothing when the held-out job did not finish."""
    done = [run for run in heldout_runs if run.info.status == "FINISHED"]
    if best is None or not done:
        return [f"{PREFIX} nested estimate: none (the held-out job did not finish)"] if heldout_runs else []
    heldout = client.get_run(done[-1].info.run_id)  # with its dataset inputs
    rows = split_rows(heldout)
    metrics = estimate(best, heldout, selected)
    parent.log_metrics({**metrics, "search/heldout_examples": rows.get("testing", (0, ""))[0]})
    where = selected_where(best)
    parent.log_tags({RUN_TAG: heldout.info.run_id, DATA_TAG: describe(heldout, rows), SELECTED_ON_TAG:
                     f"{metric} of the best trial ({best.info.run_id}), {where} on the selection data"})
    return summary_lines(metrics, metric, where, rows.get("testing", (0, ""))[0], heldout.info.run_id)


def summary_lines(metrics: dict[str, Any], metric: str, where: str, examples: int, run_id: str) -> list[str]:
    """``accuracy  selected: 0.9100 (its own 3-fold CV), held out: 0.8800`` per metric, the search's
    objective first, under a line naming the data."""
    objective = metric.partition("/")[2] or metric
    names = sorted((k[len("search/heldout_"):] for k in metrics if k.startswith("search/heldout_")),
                   key=lambda name: (name != objective, name))
    lines = [f"{PREFIX} nested estimate: the best trial's config tested on {examples} held-out texts no trial "
             f"saw (run {run_id})"]
    if objective not in names:  # an objective the held-out run has no test counterpart of
        lines.append(f"    {metric:<16} selected: {metrics[SELECTED]:.4f} ({where})")
    for name in names:
        mine = metrics.get(f"search/selected_{name}")
        selected = f"{mine:.4f} ({where})" if mine is not None else "-"
        mark = "  <- the search's objective" if name == objective else ""
        lines.append(f"    {name:<16} selected: {selected}, held out: {metrics[f'search/heldout_{name}']:.4f}{mark}")
    return lines
