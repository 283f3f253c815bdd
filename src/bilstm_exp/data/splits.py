"""Splits: which examples train, validate and test; one seeded stratified split, or K folds, and
the held-out part a search never sees (:func:`hold_out`, ``data.heldout_fraction``).

Every split is checked before anything is trained: no split empty, at least
:data:`MIN_TRAIN_EXAMPLES` to train on, every class in the train split. NumPy only.
"""

from __future__ import annotations

import numpy as np

from bilstm_exp.errors import DataError

MIN_TRAIN_EXAMPLES = 10  # fewer cannot train anything worth registering
MORE_DATA = "use more data"  # the default fix for too little data; callers name what applies to their source


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int, *,
                     more_data: str = MORE_DATA) -> dict[str, np.ndarray]:
    """Seeded split that keeps each class's share in train, val and test. ``more_data``: how to get
    more examples, for the message of a split too small (e.g. "raise data.num_samples")."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return check_sizes({name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}, labels, more_data)


def fold_splits(labels: np.ndarray, folds: int, val_fraction: float, seed: int, *,
                more_data: str = MORE_DATA) -> list[dict[str, np.ndarray]]:
    """Stratified K-fold over all examples: fold k's test split is the k-th part of every class, so
    each example is tested exactly once; its val split (``val_fraction`` of all examples, stratified)
    is carved from the other K-1 parts and the rest trains. Seeded, disjoint, deterministic."""
    rng = np.random.default_rng(seed)
    chunks = []  # per class: its K test parts
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < folds:
            raise DataError(f"class {cls} has {len(idx)} examples, fewer than data.folds={folds}. "
                            f"Fix: use fewer folds, or {more_data}")
        chunks.append((idx, np.array_split(idx, folds), int(round(len(idx) * val_fraction))))
    out = []
    for k in range(folds):
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for idx, parts_of_class, n_val in chunks:
            test = parts_of_class[k]
            rest = rng.permutation(np.setdiff1d(idx, test))
            parts["test"].append(test)
            parts["val"].append(rest[:n_val])
            parts["train"].append(rest[n_val:])
        out.append(check_sizes({name: np.sort(np.concatenate(c)) for name, c in parts.items()}, labels, more_data))
    return out


HELDOUT_STREAM = 1  # the held-out part draws from its own random stream: independent of folds and fractions


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, held out): a seeded, stratified ``fraction`` of every class set aside before any split.
    It depends on the seed and the fraction only, so every trial of a search (whatever its folds)
    and the final held-out run agree on it."""
    rng = np.random.default_rng([seed, HELDOUT_STREAM])
    held = [rng.permutation(np.flatnonzero(labels == cls)) for cls in np.unique(labels)]
    held_out = np.sort(np.concatenate([idx[:int(round(len(idx) * fraction))] for idx in held]))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def within(selection: np.ndarray, split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A split of ``labels[selection]`` as indices of the whole ``labels``."""
    return {name: selection[idx] for name, idx in split.items()}


def heldout_test_split(labels: np.ndarray, fraction: float, val_fraction: float, seed: int, *,
                       more_data: str = MORE_DATA) -> dict[str, np.ndarray]:
    """The split that measures one configuration on the held-out part (:func:`hold_out`): test is the
    held-out part, val a stratified ``val_fraction`` of the rest (the selection data), train the remainder."""
    selection, held_out = hold_out(labels, fraction, seed)
    rng, val = np.random.default_rng(seed), []
    for cls in np.unique(labels[selection]):
        idx = rng.permutation(selection[labels[selection] == cls])
        val.append(idx[:int(round(len(idx) * val_fraction))])
    val_idx = np.sort(np.concatenate(val))
    return check_sizes({"train": np.setdiff1d(selection, val_idx), "val": val_idx, "test": held_out}, labels,
                       more_data)


def check_sizes(out: dict[str, np.ndarray], labels: np.ndarray, more_data: str = MORE_DATA) -> dict[str, np.ndarray]:
    """Refuse splits too small to train or measure: an empty split, a train split under
    MIN_TRAIN_EXAMPLES, or a class missing from the train split; the message names the counts."""
    where = f"({len(labels)} examples: {', '.join(f'{name} {len(idx)}' for name, idx in out.items())})"
    for name in ("val", "test"):
        if len(out[name]) == 0:
            raise DataError(f"the {name} split is empty {where}. Fix: {more_data}, or raise data.{name}_fraction")
    if len(out["train"]) < MIN_TRAIN_EXAMPLES:
        raise DataError(f"the train split is too small: {len(out['train'])} examples, fewer than "
                        f"{MIN_TRAIN_EXAMPLES} {where}. Fix: {more_data}, or lower data.val_fraction / "
                        "data.test_fraction")
    missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[out["train"]]).tolist()))
    if missing:
        raise DataError(f"the train split has no example of class id(s) {missing} {where}. Fix: {more_data}, "
                        "or lower data.val_fraction / data.test_fraction")
    return out
