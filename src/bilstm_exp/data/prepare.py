"""Data preparation: a source's labelled texts -> checked split(s) -> vocabulary -> token ids.

Two steps, so a run checks everything a user handed over before it opens the tracking store or
imports TensorFlow (issue 26): :func:`check` reads the source (file, encoding, header, columns,
labels) and splits it (split sizes); :func:`prepare` (or :func:`prepare_folds`) then fits the
vocabulary on the train split and encodes. NumPy/pandas only: tf.data lives in :mod:`.batching`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bilstm_exp.config.data_schema import DataConfig
from bilstm_exp.data.sources import RawData, load_raw
from bilstm_exp.data.splits import fold_splits, heldout_test_split, hold_out, stratified_split, within
from bilstm_exp.data.vocabulary import Vocabulary, tokenize
from bilstm_exp.errors import DataError


@dataclass
class CheckedData:
    """A source's labelled texts, read, checked and split: everything but the vocabulary."""

    raw: RawData
    splits: list[dict[str, np.ndarray]]  # split name -> example indices; one split, or one per data.folds
    read_s: float  # seconds reading and splitting took


def check(cfg: DataConfig, seed: int | None = None, folds: int | None = None) -> CheckedData:
    """Read the source and split it (stratified; into ``folds`` folds if given), refusing bad input
    with one line: a missing or unreadable file, a wrong encoding, a missing column, a bad label, a
    split too small. ``seed`` (the data's: generation, subsample, split) defaults to ``data.split_seed``;
    the run's ``seed`` is for weights."""
    start = time.perf_counter()
    seed = cfg.split_seed if seed is None else seed
    raw = load_raw(cfg, seed)
    if cfg.heldout_as_test:  # the held-out part is the test split; everything else trains and validates
        splits = [heldout_test_split(raw.labels, cfg.heldout_fraction, cfg.val_fraction, seed, more_data=raw.more_data)]
        return CheckedData(raw, splits, time.perf_counter() - start)
    # data.heldout_fraction: the held-out part is in no split or fold, so a search never sees it
    keep = hold_out(raw.labels, cfg.heldout_fraction, seed)[0] if cfg.heldout_fraction else np.arange(len(raw.labels))
    labels = raw.labels[keep]
    if folds:
        splits = fold_splits(labels, folds, cfg.val_fraction, seed, more_data=raw.more_data)
    else:
        splits = [stratified_split(labels, cfg.val_fraction, cfg.test_fraction, seed, more_data=raw.more_data)]
    return CheckedData(raw, [within(keep, split) for split in splits], time.perf_counter() - start)


def prepare(cfg: DataConfig, seed: int | None = None, checked: CheckedData | None = None) -> PreparedData:
    """Check (unless ``checked`` is given: what :func:`check` returned), fit the vocabulary on the
    train split only, and encode."""
    checked = checked or check(cfg, seed)
    start = time.perf_counter()
    prepared = encode(cfg, checked.raw, checked.splits[0])
    prepared.prepare_s = checked.read_s + time.perf_counter() - start
    return prepared


def prepare_folds(cfg: DataConfig, checked: CheckedData | None = None) -> list[PreparedData]:
    """``data.folds`` prepared splits (:func:`~bilstm_exp.data.splits.fold_splits`), each with its own
    vocabulary, all tagged with one fingerprint of the fold set, and all with the embedding rows of the
    largest of those vocabularies (:attr:`PreparedData.embedding_rows`)."""
    checked = checked or check(cfg, folds=cfg.folds)
    parts = [encode(cfg, checked.raw, idx) for idx in checked.splits]
    digest = hashlib.md5(f"folds={len(parts)}".encode())
    for part in parts:
        digest.update(part.split_fingerprint().encode())
    rows = max((len(part.vocab) for part in parts), default=0)
    for k, part in enumerate(parts):
        part.fold, part.folds_fingerprint, part.embedding_rows = k, digest.hexdigest(), rows
    return parts


def encode(cfg: DataConfig, raw: RawData, idx: dict[str, np.ndarray]) -> PreparedData:
    """Split ``raw`` by ``idx``, fit the vocabulary on train only, encode, and collect stats."""
    texts = {name: [raw.texts[i] for i in ids] for name, ids in idx.items()}
    vocab = Vocabulary.fit(texts["train"], cfg.vocab_size, cfg.min_token_frequency)
    splits = {name: vocab.encode_batch(t, cfg.max_length, cfg.truncating) for name, t in texts.items()}
    labels = {name: raw.labels[ids] for name, ids in idx.items()}
    lengths = np.array([len(s) for s in splits["train"]])
    raw_lengths = np.array([len(tokenize(t)) for t in texts["train"]])
    stats = {
        "num_examples": {name: len(ids) for name, ids in idx.items()},
        "vocab_size": len(vocab),
        "class_counts": {name: np.bincount(lab, minlength=len(raw.class_names)).tolist()
                         for name, lab in labels.items()},
        "train_length": {q: float(np.percentile(raw_lengths, p))
                         for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "truncated_fraction": float(np.mean(raw_lengths > cfg.max_length)),
        "length_histogram": _histogram(lengths),
        **({"skipped_rows": raw.skipped_rows} if raw.skipped_rows is not None else {}),
    }
    return PreparedData(splits, labels, texts, vocab, raw.class_names, cfg.max_length,
                        cfg.truncating, stats)


def _histogram(lengths: np.ndarray, bins: int = 20) -> dict[str, int]:
    counts, edges = np.histogram(lengths, bins=bins)
    return {f"{edges[i]:.0f}-{edges[i + 1]:.0f}": int(c) for i, c in enumerate(counts)}


@dataclass
class PreparedData:
    """Token-id splits, the vocabulary and the class names: everything a run trains on."""

    splits: dict[str, list[np.ndarray]]  # split name -> token id arrays
    labels: dict[str, np.ndarray]
    texts: dict[str, list[str]]
    vocab: Vocabulary
    class_names: list[str]
    max_length: int
    truncating: str = "post"
    stats: dict[str, Any] = field(default_factory=dict)
    prepare_s: float | None = None  # seconds prepare() took (time/data_prepare_s); None when loaded from disk
    fold: int | None = None  # cross-validation: this fold's index (0-based)
    folds_fingerprint: str | None = None  # cross-validation: the fingerprint of the whole fold set
    # cross-validation: the model's embedding rows, the largest vocabulary of the fold set, so that every fold's
    # model has one shape and trains the previous fold's compiled steps (models/reuse.py; a fold's vocabulary
    # differs by a few hundred words). Rows past this fold's vocabulary are never looked up. None: len(vocab)
    embedding_rows: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """What a score was measured on, for "are these runs comparable?" (tag ``data.fingerprint``):
        md5 of the validation and test texts with their labels and the class names. Unlike :meth:`md5`
        it ignores the training split and the vocabulary, so runs differing in data.vocab_size or
        data.max_length stay comparable, while another data set, data.split_seed, data.num_samples or
        max_samples does not. A cross-validation fold carries its fold set's fingerprint."""
        return self.folds_fingerprint or self.split_fingerprint()

    def split_fingerprint(self) -> str:
        digest = hashlib.md5(json.dumps(self.class_names).encode())
        for name in ("val", "test"):
            digest.update(f"|{name}|".encode())
            for text in self.texts[name]:
                digest.update(text.encode("utf-8", "replace") + b"\0")
            digest.update(np.asarray(self.labels[name], dtype=np.int64).tobytes())
        return digest.hexdigest()

    def md5(self) -> str:
        """Content hash of what the model sees: token ids, labels and vocabulary."""
        digest = hashlib.md5()
        for name in ("train", "val", "test"):
            for seq in self.splits[name]:
                digest.update(seq.tobytes())
                digest.update(b"|")
            digest.update(self.labels[name].tobytes())
        digest.update(self.vocab.to_json().encode())
        return digest.hexdigest()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name in ("train", "val", "test"):
            arrays[f"{name}_ids"] = np.concatenate(self.splits[name])
            arrays[f"{name}_lengths"] = np.array([len(s) for s in self.splits[name]])
            arrays[f"{name}_labels"] = self.labels[name]
        np.savez_compressed(folder / "splits.npz", **arrays)
        (folder / "vocab.json").write_text(self.vocab.to_json())
        (folder / "texts.json").write_text(json.dumps(self.texts))
        meta = {"class_names": self.class_names, "max_length": self.max_length,
                "truncating": self.truncating, "stats": self.stats}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> PreparedData:
        if not (folder / "splits.npz").is_file():
            raise DataError(f"{folder}: no prepared data. Fix: run `bilstm-exp prepare` first")
        arrays = np.load(folder / "splits.npz")
        meta = json.loads((folder / "meta.json").read_text())
        splits, labels = {}, {}
        for name in ("train", "val", "test"):
            bounds = np.cumsum(arrays[f"{name}_lengths"])[:-1]
            splits[name] = np.split(arrays[f"{name}_ids"], bounds)
            labels[name] = arrays[f"{name}_labels"]
        return cls(splits, labels, json.loads((folder / "texts.json").read_text()),
                   Vocabulary.from_json((folder / "vocab.json").read_text()),
                   meta["class_names"], meta["max_length"], meta["truncating"], meta["stats"])
