"""Where a cross-validated model fails: test accuracy per class and per length bucket, over the folds.

Each fold already scores its test split (:func:`bilstm_exp.training.evaluation.evaluate`); this module
counts, per fold, the test texts of each class and of each length bucket and how many of them the fold's
model got right, then summarises every group over the folds as the other ``cv/*`` metrics are:
``cv/test/accuracy/class/<class>_mean`` and ``cv/test/accuracy/length/<lo>-<hi>_mean`` (with ``_std`` and
``_ci95``, over the folds that had texts in the group). Accuracy within a class is its recall.

The length buckets are training's (:func:`bilstm_exp.data.batching.bucket_boundaries`: ``data.num_buckets``
quantiles of the lengths in tokens), computed once on all the CV's texts, so every fold shares them (each
fold's own training split gives nearly the same quantiles). No MLflow, no TensorFlow here: the parent
run logs what :func:`summarise` returns (``training.crossval``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from bilstm_exp.data.prepare import PreparedData
from bilstm_exp.training.evaluation import Evaluation, by_class, by_length, length_bounds, lengths_of

TABLE = "reports/cv_breakdown.md"  # the parent run's artifact
UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")  # characters MLflow refuses in a metric name


@dataclass
class Group:
    """One class or length bucket, over all folds."""

    by: str  # "class" or "length"
    name: str  # the class name, or the bucket's token range (e.g. 0-24)
    texts: int  # test texts in it, all folds together (each text is tested in exactly one fold)
    right: int  # of which predicted right
    per_fold: list[float]  # the accuracy in each fold that had texts in it

    @property
    def metric(self) -> str:
        """``test/accuracy/class/<name>`` or ``test/accuracy/length/<lo>-<hi>`` (``cv/`` and ``_mean`` added
        by the parent): characters MLflow refuses in a metric name become ``_``."""
        return f"test/accuracy/{self.by}/{UNSAFE.sub('_', self.name)}"

    @property
    def label(self) -> str:
        """What a user reads: the class name, or the bucket's range with its unit (``0-24 tokens``)."""
        return f"{self.name} tokens" if self.by == "length" else self.name

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_fold))


def groups(folds: list[tuple[Evaluation, PreparedData]], num_buckets: int) -> list[Group]:
    """Every class (in the data's order), then every length bucket (shortest first) with test texts."""
    lengths = np.concatenate([lengths_of(prepared, "test") for _, prepared in folds])
    bounds = length_bounds(lengths, num_buckets, folds[0][1].max_length)
    found: dict[tuple[str, str], Group] = {}
    for evaluation, prepared in folds:
        right = evaluation.y_pred == evaluation.y_true
        rows = [("class", *row) for row in by_class(evaluation.y_true, evaluation.y_pred, prepared.class_names)]
        rows += [("length", *row) for row in by_length(lengths_of(prepared, "test"), right, bounds)]
        for by, name, texts, good in rows:
            group = found.setdefault((by, name), Group(by, name, 0, 0, []))
            group.texts, group.right = group.texts + texts, group.right + good
            group.per_fold.append(good / texts)
    classes = [name for name in folds[0][1].class_names if ("class", name) in found]
    buckets = sorted((name for by, name in found if by == "length"), key=lambda n: int(n.split("-")[0]))
    return [found["class", n] for n in classes] + [found["length", n] for n in buckets]


def weakest(rows: list[Group], by: str) -> Group | None:
    """The group of kind ``by`` with the lowest mean accuracy over the folds (the first of ties)."""
    return min((g for g in rows if g.by == by), key=lambda g: g.mean, default=None)


def summary_line(rows: list[Group]) -> str:
    """``weakest    class neutral 0.6100, length 33-48 tokens 0.7012 (...)``: the end summary's line."""
    parts = [f"{by} {g.label} {g.mean:.4f}" for by in ("class", "length") if (g := weakest(rows, by))]
    return f"  weakest    {', '.join(parts)} (test accuracy, mean over folds; table: {TABLE})"


def table(rows: list[Group], folds: int, ci95: dict[str, float]) -> str:
    """The Markdown table a user opens on the parent run: counts, pooled accuracy, the mean over folds
    with its 95% CI (``ci95``: by metric name), and the weakest class and bucket named below it."""
    lines = [f"# Test accuracy per class and per length bucket, {folds}-fold cross-validation", "",
             "Accuracy within a class is its recall. Length: tokens as the model reads them (after data.max_length).",
             "", "| by | group | test texts | wrong | accuracy (all folds) | mean over folds | 95% CI | folds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for g in rows:
        ci = ci95.get(g.metric, float("nan"))
        lines.append(f"| {g.by} | {g.name} | {g.texts:,} | {g.texts - g.right:,} | {g.right / g.texts:.4f} "
                     f"| {g.mean:.4f} | {'' if np.isnan(ci) else f'+/- {ci:.4f}'} | {len(g.per_fold)} |")
    lines.append("")
    lines += [f"Weakest {by}: {g.label} ({g.mean:.4f}, {g.texts - g.right:,} of {g.texts:,} texts wrong)."
              for by in ("class", "length") if (g := weakest(rows, by))]
    return "\n".join(lines) + "\n"
