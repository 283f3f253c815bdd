"""Run artifacts as files: training curves, confusion matrix, classification report, attention heatmap.

Plain NumPy + matplotlib (Agg backend); every function writes into a folder and returns the paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train against validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(len(values)), values, style, label=(prefix or "train_").rstrip("_"))
        ax.set(title=key, xlabel="epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path) -> Path:
    k = len(class_names)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(1.2 * k + 3, 1.2 * k + 2))
    ax.imshow(counts, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path) -> Path:
    from sklearn.metrics import classification_report as report

    path.write_text(report(y_true, y_pred, labels=list(range(len(class_names))), target_names=class_names,
                           zero_division=0))
    return path


def attention_heatmap(examples: list[dict], folder: Path) -> list[Path]:
    """``examples``: [{"tokens": [...], "weights": [...], "label": ..., "prediction": ...}] ->
    attention.png (one row per example, tokens on the x axis) and attention.json."""
    json_path = folder / "attention.json"
    json_path.write_text(json.dumps(examples, indent=1))
    width = max(len(e["tokens"]) for e in examples)
    fig, axes = plt.subplots(len(examples), 1, figsize=(min(0.32 * width + 2, 40), 1.1 * len(examples) + 1),
                             squeeze=False)
    for ax, example in zip(axes[:, 0], examples):
        weights = np.asarray(example["weights"])[None, :]
        ax.imshow(weights, cmap="Reds", aspect="auto", vmin=0)
        ax.set_xticks(range(len(example["tokens"])))
        ax.set_xticklabels(example["tokens"], rotation=90, fontsize=7)
        ax.set_yticks([])
        ax.set_title(f"true: {example['label']}  predicted: {example['prediction']}", fontsize=8, loc="left")
    fig.tight_layout()
    png_path = folder / "attention.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [png_path, json_path]


def entropy(weights: np.ndarray, mask: np.ndarray) -> float:
    """Mean Shannon entropy (nats) of attention distributions over their real tokens."""
    w = np.where(mask, weights, 0.0)
    logs = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0)
    return float(np.mean(-(w * logs).sum(axis=1)))
