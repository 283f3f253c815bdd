"""Evaluation of a trained classifier on a prepared split: used by training and the DVC evaluate stage.

:func:`evaluate` scores raw texts exactly as the served model sees them; :func:`detailed` adds what
the DVC evaluate stage plots (confusion pairs, ROC, precision-recall, accuracy per length bucket).
No MLflow here; TensorFlow runs only inside the classifier it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bilstm_exp.data.batching import bucket_boundaries
from bilstm_exp.data.prepare import PreparedData


@dataclass
class Evaluation:
    metrics: dict[str, float]  # "<split>/loss", "<split>/accuracy", "<split>/auc" or "<split>/macro_f1"
    y_true: np.ndarray
    y_pred: np.ndarray
    probabilities: np.ndarray


def evaluate(classifier, prepared: PreparedData, split: str = "test") -> Evaluation:
    """Metrics of ``classifier`` (a :class:`~bilstm_exp.serving.model.TextClassifier`) on one split's raw
    texts: loss, accuracy, and AUC (two classes) or macro F1 (more), named ``<split>/<metric>``."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    y = prepared.labels[split]
    probs = classifier.probabilities(prepared.texts[split])
    pred = probs.argmax(axis=1)
    labels = list(range(prepared.num_classes))
    out = {f"{split}/loss": float(log_loss(y, np.clip(probs, 1e-7, 1 - 1e-7), labels=labels)),
           f"{split}/accuracy": float(accuracy_score(y, pred))}
    if prepared.num_classes == 2:
        out[f"{split}/auc"] = float(roc_auc_score(y, probs[:, 1])) if len(set(y)) == 2 else float("nan")
    else:
        out[f"{split}/macro_f1"] = float(f1_score(y, pred, average="macro", labels=labels))
    return Evaluation(out, y, pred, probs)


def detailed(classifier, prepared: PreparedData,
             num_buckets: int) -> tuple[dict[str, float], dict[str, list[list[Any]]]]:
    """Test metrics and the plot tables: confusion pairs, ROC, precision-recall, accuracy per length."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        precision_recall_fscore_support,
        roc_curve,
    )

    result = evaluate(classifier, prepared)
    y, pred, probs = result.y_true, result.y_pred, result.probabilities
    k = prepared.num_classes
    metrics = dict(result.metrics)
    average = "binary" if k == 2 else "macro"
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
    metrics.update({"test/precision": float(precision), "test/recall": float(recall), "test/f1": float(f1),
                    "test/examples": int(len(y))})
    # ROC and precision-recall: the positive class for two classes, micro-averaged one-vs-rest above
    onehot = np.eye(k)[y]
    truth, score = (y, probs[:, 1]) if k == 2 else (onehot.ravel(), probs.ravel())
    tables: dict[str, list[list[Any]]] = {
        "confusion": [[prepared.class_names[a], prepared.class_names[p]] for a, p in zip(y, pred, strict=True)]}
    if len(set(truth.tolist())) == 2:
        fpr, tpr, thresholds = roc_curve(truth, score)
        tables["roc"] = [[float(a), float(b), float(min(t, 1.0))] for a, b, t in zip(fpr, tpr, thresholds, strict=True)]
        prec, rec, thresholds = precision_recall_curve(truth, score)
        tables["precision_recall"] = [[float(r), float(p), float(t)] for r, p, t in
                                      zip(rec, prec, [*thresholds, 1.0], strict=True)]
        metrics["test/average_precision"] = float(average_precision_score(truth, score))
    else:
        tables["roc"], tables["precision_recall"] = [], []
    # accuracy per length bucket: the boundaries training's bucketing uses (quantiles of all the run's lengths)
    bounds = length_bounds(lengths_of(prepared), num_buckets, prepared.max_length)
    tables["length_buckets"] = [[label, n, right / n] for label, n, right in
                                by_length(lengths_of(prepared, "test"), pred == y, bounds)]
    return metrics, tables


def lengths_of(prepared: PreparedData, split: str | None = None) -> np.ndarray:
    """Each text's length in tokens as the model reads it (truncated at data.max_length), of one split or
    of all of them (train, val and test: what training's bucket boundaries come from)."""
    splits = [split] if split else [name for name in ("train", "val", "test") if name in prepared.splits]
    return np.array([len(s) for name in splits for s in prepared.splits[name]], dtype=int)


def length_bounds(lengths: np.ndarray, num_buckets: int, max_length: int) -> list[int]:
    """The length buckets' edges, 0 first and max_length + 1 last: training's bucket boundaries
    (:func:`~bilstm_exp.data.batching.bucket_boundaries`, quantiles of ``lengths``) in between."""
    return [0, *(b for b in bucket_boundaries(lengths, num_buckets) if b <= max_length), max_length + 1]


def by_length(lengths: np.ndarray, right: np.ndarray, bounds: list[int]) -> list[tuple[str, int, int]]:
    """(bucket, texts, right predictions) per non-empty length bucket; a bucket is labelled by its token
    range, e.g. ``0-24``."""
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        inside = (lengths >= lo) & (lengths < hi)
        if inside.any():
            rows.append((f"{lo}-{hi - 1}", int(inside.sum()), int(right[inside].sum())))
    return rows


def by_class(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> list[tuple[str, int, int]]:
    """(class, texts, right predictions) per class present in ``y_true``: the accuracy within a class is
    its recall."""
    return [(name, int((y_true == k).sum()), int(((y_true == k) & (y_pred == k)).sum()))
            for k, name in enumerate(class_names) if (y_true == k).any()]
