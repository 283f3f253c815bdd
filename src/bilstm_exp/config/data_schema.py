"""The ``data`` group's schemas: what every source shares (sizes, vocabulary, split, folds) and each
source's own keys (synthetic, file, tweets, imdb; ``data.sources`` builds them by name)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from bilstm_exp.config.checks import check, choice, fraction, positive
from bilstm_exp.errors import ConfigError


@dataclass
class DataConfig:
    name: str = "synthetic"  # the source: an option of conf/data/ (data.SOURCES)
    max_samples: int | None = None  # cap on examples used, for any source (None: all)
    vocab_size: int = 20000  # vocabulary incl. padding (id 0) and out-of-vocabulary (id 1), fitted on train only
    min_token_frequency: int = 1  # words seen fewer times in the training split map to out-of-vocabulary
    max_length: int = 400  # tokens kept per text
    truncating: str = "post"  # post: drop tokens past max_length; pre: drop from the start
    val_fraction: float = 0.1  # share of examples for validation (stratified, seeded split)
    test_fraction: float = 0.1  # share of examples for the test split
    padding: str = "bucket"  # bucket: length-bucketed batches (fast); max: pad every batch to max_length
    num_buckets: int = 8  # bucket boundaries at quantiles of the run's text lengths (all splits)
    split_seed: int = 42  # seeds the data itself: generation (synthetic), max_samples subsample, split, folds
    folds: int | None = None  # K >= 2: stratified K-fold cross-validation (one child run per fold); null: one split
    heldout_fraction: float = 0.0  # share set aside before any split or fold (a search's held-out part); 0: none
    heldout_as_test: bool = False  # true: the held-out part is the test split (train and val: the rest); no folds

    def __post_init__(self) -> None:
        if self.max_samples is not None:
            positive(self.max_samples, "data.max_samples", 400)
        check(self.vocab_size > 2, "data.vocab_size", f"must be > 2, got {self.vocab_size}",
              "e.g. data.vocab_size=20000")
        check(self.min_token_frequency >= 1, "data.min_token_frequency",
              f"must be >= 1, got {self.min_token_frequency}", "e.g. data.min_token_frequency=2")
        positive(self.max_length, "data.max_length", 400)
        choice(self.truncating, ("post", "pre"), "data.truncating")
        check(0 < self.val_fraction < 0.5, "data.val_fraction",
              f"must be in (0, 0.5), got {self.val_fraction}", "e.g. data.val_fraction=0.1")
        check(0 < self.test_fraction < 0.5, "data.test_fraction",
              f"must be in (0, 0.5), got {self.test_fraction}", "e.g. data.test_fraction=0.1")
        train = 1.0 - self.val_fraction - self.test_fraction
        check(train >= max(self.val_fraction, self.test_fraction), "data.val_fraction + data.test_fraction",
              f"{self.val_fraction} + {self.test_fraction} leave {train:.2g} of the examples for training, less "
              "than for validation or testing", "keep the train share the largest, e.g. data.val_fraction=0.1 "
              "data.test_fraction=0.1")
        choice(self.padding, ("bucket", "max"), "data.padding")
        positive(self.num_buckets, "data.num_buckets", 8)
        check(self.split_seed >= 0, "data.split_seed", f"must be >= 0, got {self.split_seed}",
              "e.g. data.split_seed=42")
        if self.folds == 0:
            self.folds = None  # 0 reads as "no cross-validation", like null
        if self.folds is not None:
            check(self.folds >= 2, "data.folds", f"must be >= 2 (or null for one split), got {self.folds}",
                  "e.g. data.folds=5")
        check(0.0 <= self.heldout_fraction < 0.5, "data.heldout_fraction",
              f"must be in [0, 0.5), got {self.heldout_fraction}", "e.g. data.heldout_fraction=0.2")
        if self.heldout_as_test:
            check(self.heldout_fraction > 0, "data.heldout_as_test", "needs a held-out part, but "
                  "data.heldout_fraction is 0", "set the search's share, e.g. data.heldout_fraction=0.2")
            check(self.folds is None, "data.heldout_as_test", f"tests on the held-out part once, but data.folds="
                  f"{self.folds}", "data.folds=null")


@dataclass
class SyntheticDataConfig(DataConfig):
    name: str = "synthetic"
    num_samples: int = 2000  # examples generated
    num_classes: int = 2  # 2: sigmoid + binary cross-entropy; more: softmax + sparse categorical
    median_length: int = 150  # tokens; lengths are log-normal with a long tail
    length_sigma: float = 0.6  # log-normal spread; 0.6 puts ~1% of texts past 600 tokens
    label_noise: float = 0.02  # share of labels flipped at random

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.num_samples, "data.num_samples", 2000)
        check(self.num_classes >= 2, "data.num_classes", f"must be >= 2, got {self.num_classes}",
              "e.g. data.num_classes=2")
        positive(self.median_length, "data.median_length", 150)
        positive(self.length_sigma, "data.length_sigma", 0.6)
        fraction(self.label_noise, "data.label_noise", 0.02)


@dataclass
class FileDataConfig(DataConfig):
    name: str = "file"
    path: str = ""  # the csv, tsv, parquet or jsonl file; required
    format: str = "auto"  # auto (from the suffix), csv, tsv, parquet, jsonl
    text_column: str = "text"  # column holding the text: its name, or its 0-based position (e.g. 1)
    label_column: str = "label"  # the label column (name or 0-based position): integers or strings (ids, sorted)
    header: bool = True  # csv/tsv: the first line names the columns; false: columns by position only
    encoding: str = "utf-8"  # csv/tsv/jsonl text encoding, e.g. latin-1, cp1252, utf-16
    on_bad_rows: str = "error"  # empty text, empty or unparseable label, wrong field count: error or skip (counted)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.path), "data.path", "is required with data=file",
              "pass the file, e.g. data.path=data/raw/reviews.csv")
        choice(self.format, ("auto", "csv", "tsv", "parquet", "jsonl"), "data.format")
        choice(self.on_bad_rows, ("error", "skip"), "data.on_bad_rows")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"data.encoding: unknown encoding '{self.encoding}'. Fix: a Python codec name, "
                              "e.g. data.encoding=utf-8, latin-1 or cp1252") from None
        if not self.header:
            for key in ("text_column", "label_column"):
                value = str(getattr(self, key))
                check(value.isdigit(), f"data.{key}", f"'{value}' is a column name, but data.header=false "
                      "(the columns have no names)", f"give 0-based positions, e.g. data.{key}="
                      f"{1 if key == 'text_column' else 0}")


@dataclass
class TweetsDataConfig(DataConfig):
    name: str = "tweets"
    min_confidence: float = 0.6  # keep tweets whose annotators agreed at least this much

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction(self.min_confidence, "data.min_confidence", 0.6, upper_open=False)


@dataclass
class ImdbDataConfig(DataConfig):
    name: str = "imdb"
