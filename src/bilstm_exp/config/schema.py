"""Config schema and validation.

The dataclasses below are the schema of every config group and hold every default value.
:func:`register_schemas` stores each option's defaults in Hydra's ConfigStore as
``schema/<group>/<option>``; each YAML in ``conf/<group>/`` extends its schema through its defaults
list (``- /schema/<group>/<option>@_here_``) and keeps only what differs, so a default lives in one
place. The stored nodes are plain (untyped) copies of the defaults on purpose: a typed node would
make Hydra reject a wrong type or a misspelt key while composing, inside ``@hydra.main``, with its
own message and exit code 1; instead :func:`validate` checks the composed config and answers with
the dotted key, what is allowed and the fix (exit 2 at the command line).

:func:`validate` turns the composed DictConfig into typed dataclasses: OmegaConf's structured
configs catch unknown keys and wrong types; each dataclass's ``__post_init__`` checks value ranges.
Every problem becomes a :class:`ConfigError`.

``SCHEMAS`` (group -> option -> dataclass) is the table of options; the builders that read them are
registries keyed by the same names (``architectures.REGISTRY``, ``optim.OPTIMIZERS``,
``data.SOURCES``) and check at import that each name has its schema here.

This module must not import TensorFlow (nor Hydra at import): bad input is refused in about a second.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from bilstm_exp import extras, plugins
from bilstm_exp.errors import ConfigError
from bilstm_exp.tracking import redaction


def _check(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}. Fix: {fix}")


def _positive(value: Any, key: str, example: Any) -> None:
    _check(value > 0, key, f"must be > 0, got {value}", f"set a positive value, e.g. {key}={example}")


def _fraction(value: float, key: str, example: float, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    bound = "[0, 1)" if upper_open else "[0, 1]"
    _check(ok, key, f"must be in {bound}, got {value}", f"e.g. {key}={example}")


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    _check(
        value in allowed,
        key,
        f"'{value}' is not one of {', '.join(allowed)}",
        f"pick one, e.g. {key}={allowed[0]}",
    )


# --------------------------------------------------------------------------- data


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
    num_buckets: int = 8  # bucket boundaries at quantiles of the training lengths
    split_seed: int = 42  # seeds the data itself: generation (synthetic), max_samples subsample, split, folds
    folds: int | None = None  # K >= 2: stratified K-fold cross-validation (one child run per fold); null: one split

    def __post_init__(self) -> None:
        if self.max_samples is not None:
            _positive(self.max_samples, "data.max_samples", 400)
        _check(self.vocab_size > 2, "data.vocab_size", f"must be > 2, got {self.vocab_size}",
               "e.g. data.vocab_size=20000")
        _check(self.min_token_frequency >= 1, "data.min_token_frequency",
               f"must be >= 1, got {self.min_token_frequency}", "e.g. data.min_token_frequency=2")
        _positive(self.max_length, "data.max_length", 400)
        _choice(self.truncating, ("post", "pre"), "data.truncating")
        _check(0 < self.val_fraction < 0.5, "data.val_fraction",
               f"must be in (0, 0.5), got {self.val_fraction}", "e.g. data.val_fraction=0.1")
        _check(0 < self.test_fraction < 0.5, "data.test_fraction",
               f"must be in (0, 0.5), got {self.test_fraction}", "e.g. data.test_fraction=0.1")
        train = 1.0 - self.val_fraction - self.test_fraction
        _check(train >= max(self.val_fraction, self.test_fraction), "data.val_fraction + data.test_fraction",
               f"{self.val_fraction} + {self.test_fraction} leave {train:.2g} of the examples for training, less "
               "than for validation or testing", "keep the train share the largest, e.g. data.val_fraction=0.1 "
               "data.test_fraction=0.1")
        _choice(self.padding, ("bucket", "max"), "data.padding")
        _positive(self.num_buckets, "data.num_buckets", 8)
        _check(self.split_seed >= 0, "data.split_seed", f"must be >= 0, got {self.split_seed}",
               "e.g. data.split_seed=42")
        if self.folds == 0:
            self.folds = None  # 0 reads as "no cross-validation", like null
        if self.folds is not None:
            _check(self.folds >= 2, "data.folds", f"must be >= 2 (or null for one split), got {self.folds}",
                   "e.g. data.folds=5")


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
        _positive(self.num_samples, "data.num_samples", 2000)
        _check(self.num_classes >= 2, "data.num_classes", f"must be >= 2, got {self.num_classes}",
               "e.g. data.num_classes=2")
        _positive(self.median_length, "data.median_length", 150)
        _positive(self.length_sigma, "data.length_sigma", 0.6)
        _fraction(self.label_noise, "data.label_noise", 0.02)


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
        _check(bool(self.path), "data.path", "is required with data=file",
               "pass the file, e.g. data.path=data/raw/reviews.csv")
        _choice(self.format, ("auto", "csv", "tsv", "parquet", "jsonl"), "data.format")
        _choice(self.on_bad_rows, ("error", "skip"), "data.on_bad_rows")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"data.encoding: unknown encoding '{self.encoding}'. Fix: a Python codec name, "
                              "e.g. data.encoding=utf-8, latin-1 or cp1252") from None
        if not self.header:
            for key in ("text_column", "label_column"):
                value = str(getattr(self, key))
                _check(value.isdigit(), f"data.{key}", f"'{value}' is a column name, but data.header=false "
                       "(the columns have no names)", f"give 0-based positions, e.g. data.{key}="
                       f"{1 if key == 'text_column' else 0}")


@dataclass
class TweetsDataConfig(DataConfig):
    name: str = "tweets"
    min_confidence: float = 0.6  # keep tweets whose annotators agreed at least this much

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction(self.min_confidence, "data.min_confidence", 0.6, upper_open=False)


@dataclass
class ImdbDataConfig(DataConfig):
    name: str = "imdb"


# --------------------------------------------------------------------------- model

CELLS = ("lstm", "gru")
MERGE_MODES = ("concat", "sum", "ave", "mul")


@dataclass
class ModelConfig:
    """Keys every architecture has; an architecture's schema subclasses it (architectures/)."""

    name: str = "basic"  # the architecture: an option of conf/model/ (architectures.REGISTRY)
    embedding_dim: int = 64  # embedding vector size
    cell: str = "lstm"  # recurrent cell: lstm or gru
    dropout: float = 0.0  # dropout on the recurrent layer's inputs, in [0, 1)
    recurrent_dropout: float = 0.0  # in [0, 1); non-zero disables the cuDNN kernel on a GPU (much slower)
    kernel: str = "fast"  # fast: the CPU fast path (FastLSTM + an XLA optimizer step), cuDNN on a GPU; keras
    embedding_dropout: float = 0.0  # spatial dropout after the embedding: drops whole word-vector channels, [0, 1)
    output_dropout: float = 0.0  # dropout on the features the output layer reads, in [0, 1)
    pretrained_embeddings: str | None = None  # word-vector file to start the embedding from (null: random init)
    pretrained_format: str = "auto"  # auto (from suffix/header), word2vec (text), word2vec_binary, glove (no header)
    embeddings_trainable: bool = True  # false: pretrained vectors stay frozen during training

    def __post_init__(self) -> None:
        _positive(self.embedding_dim, "model.embedding_dim", 64)
        _choice(self.cell, CELLS, "model.cell")
        _choice(self.kernel, ("fast", "keras"), "model.kernel")
        _fraction(self.dropout, "model.dropout", 0.2)
        _fraction(self.recurrent_dropout, "model.recurrent_dropout", 0.0)
        _fraction(self.embedding_dropout, "model.embedding_dropout", 0.2)
        _fraction(self.output_dropout, "model.output_dropout", 0.3)
        _choice(self.pretrained_format, VECTOR_FORMATS, "model.pretrained_format")
        if self.pretrained_embeddings is None:
            _check(self.embeddings_trainable, "model.embeddings_trainable",
                   "false freezes randomly initialised embeddings", "set model.pretrained_embeddings=PATH "
                   "(a word2vec or GloVe file) or leave model.embeddings_trainable=true")
            return
        extras.require("gensim", "embeddings", "model.pretrained_embeddings")  # gensim reads the vectors
        _, dim = probe_vectors(self.pretrained_embeddings, self.pretrained_format)  # readable, before TensorFlow
        _check(dim == self.embedding_dim, "model.embedding_dim",
               f"is {self.embedding_dim} but the vectors in {self.pretrained_embeddings} have {dim} dimensions",
               f"set model.embedding_dim={dim}, or use {self.embedding_dim}-dimensional vectors")


VECTOR_FORMATS = ("auto", "word2vec", "word2vec_binary", "glove")


def probe_vectors(path: str, fmt: str = "auto") -> tuple[str, int]:
    """(format, dimension) of a word-vector file from its first line only, or a ConfigError.

    word2vec text and binary files (and fastText's .vec) start with a ``count dimension`` line; GloVe
    text files start with the first word and its numbers. ``auto``: binary for a ``.bin`` suffix, else
    word2vec when the first line is two integers, else glove. A ``.gz`` file is read compressed.
    """
    key, file = "model.pretrained_embeddings", Path(path).expanduser()
    _check(bool(path.strip()) and file.is_file(), key, f"'{path}': no such file",
           "point it at a word2vec or GloVe vector file (make one with `bilstm-exp pretrain-embeddings`), "
           "or set it to null")
    try:
        with (gzip.open if file.suffix == ".gz" else open)(file, "rb") as handle:
            first = handle.readline(1 << 20).decode("utf-8").split()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ConfigError(f"{key}: cannot read '{path}' ({type(error).__name__}: {error}). Fix: check the file "
                          "and its permissions; gzip files need a .gz suffix") from None
    header = len(first) == 2 and all(token.isdigit() for token in first)
    if fmt == "auto":
        fmt = "word2vec_binary" if ".bin" in file.suffixes else "word2vec" if header else "glove"
    fix = "set model.pretrained_format to word2vec, word2vec_binary or glove to match the file"
    if fmt == "glove":
        _check(not header and len(first) >= 2, key, f"'{path}' does not look like GloVe text (the first line "
               "should be a word and its numbers)", fix)
        try:
            [float(value) for value in first[1:]]
        except ValueError:
            raise ConfigError(f"{key}: '{path}' does not look like GloVe text (non-numbers on the first line). "
                              f"Fix: {fix}") from None
        return fmt, len(first) - 1
    _check(header and int(first[1]) > 0, key, f"'{path}' has no word2vec header line ('count dimension') "
           f"as model.pretrained_format={fmt} expects", fix)
    return fmt, int(first[1])


@dataclass
class UnidirectionalModelConfig(ModelConfig):
    name: str = "unidirectional"
    lstm_units: int = 64  # units of the single forward layer

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self.lstm_units, "model.lstm_units", 64)


@dataclass
class BasicModelConfig(UnidirectionalModelConfig):
    name: str = "basic"
    lstm_units: int = 64  # units per direction
    merge_mode: str = "concat"  # how the two directions combine: concat, sum, ave, mul

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.merge_mode, MERGE_MODES, "model.merge_mode")


@dataclass
class AttentionModelConfig(BasicModelConfig):
    name: str = "attention"
    attention_units: int = 64  # width of the scoring layer: score_t = V tanh(W1 h_t + W2 q)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self.attention_units, "model.attention_units", 64)


@dataclass
class StackedModelConfig(ModelConfig):
    name: str = "stacked"
    layer_sizes: list[int] = field(default_factory=lambda: [64, 32])  # units per direction, per layer, bottom first
    merge_mode: str = "concat"  # how the two directions combine: concat, sum, ave, mul

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.layer_sizes) > 0, "model.layer_sizes", "must list at least one layer",
               "e.g. model.layer_sizes=[64,32]")
        for size in self.layer_sizes:
            _positive(size, "model.layer_sizes", "[64,32]")
        _choice(self.merge_mode, MERGE_MODES, "model.merge_mode")


# --------------------------------------------------------------------------- optimizer


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant, cosine or exponential
    warmup_epochs: float = 0.0  # linear warm-up from 0 to learning_rate over this many epochs
    decay_rate: float = 0.5  # exponential: learning-rate factor per epoch
    min_fraction: float = 0.0  # cosine: final learning rate as a fraction of learning_rate

    def __post_init__(self) -> None:
        _choice(self.name, ("constant", "cosine", "exponential"), "optimizer.schedule.name")
        _check(self.warmup_epochs >= 0, "optimizer.schedule.warmup_epochs",
               f"must be >= 0, got {self.warmup_epochs}", "e.g. optimizer.schedule.warmup_epochs=1")
        _check(0 < self.decay_rate <= 1, "optimizer.schedule.decay_rate",
               f"must be in (0, 1], got {self.decay_rate}", "e.g. optimizer.schedule.decay_rate=0.5")
        _fraction(self.min_fraction, "optimizer.schedule.min_fraction", 0.0)


@dataclass
class OptimizerConfig:
    name: str = "adam"  # an option of conf/optimizer/ (optim.OPTIMIZERS)
    learning_rate: float = 1e-3  # initial step size
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        _check(0 < self.learning_rate < float("inf"), "optimizer.learning_rate",
               f"must be a finite value > 0, got {self.learning_rate}", "e.g. optimizer.learning_rate=0.001")


@dataclass
class AdamWOptimizerConfig(OptimizerConfig):
    name: str = "adamw"
    weight_decay: float = 0.004  # decoupled weight decay

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.weight_decay >= 0, "optimizer.weight_decay",
               f"must be >= 0, got {self.weight_decay}", "e.g. optimizer.weight_decay=0.004")


@dataclass
class SGDOptimizerConfig(OptimizerConfig):
    name: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9  # in [0, 1)
    nesterov: bool = True  # Nesterov momentum

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction(self.momentum, "optimizer.momentum", 0.9)


@dataclass
class RMSpropOptimizerConfig(OptimizerConfig):
    name: str = "rmsprop"
    rho: float = 0.9  # moving-average factor of squared gradients
    momentum: float = 0.0  # in [0, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction(self.rho, "optimizer.rho", 0.9)
        _fraction(self.momentum, "optimizer.momentum", 0.0)


# --------------------------------------------------------------------------- clipping


CLIPPING_MODES = ("none", "norm", "value", "global_norm")


@dataclass
class ClippingConfig:
    name: str = "none"  # none, norm (clipnorm), value (clipvalue), global_norm (global_clipnorm)
    threshold: float | None = None  # norm: max L2 norm per variable; value: max |element|; global_norm: global L2

    def __post_init__(self) -> None:
        _choice(self.name, CLIPPING_MODES, "clipping.name")
        if self.name == "none":
            _check(self.threshold is None, "clipping.threshold",
                   f"must be null with clipping=none, got {self.threshold}",
                   "pick a clipping option, e.g. clipping=norm")
            return
        _check(self.threshold is not None and self.threshold > 0, "clipping.threshold",
               f"must be > 0 with clipping={self.name}, got {self.threshold}",
               "e.g. clipping.threshold=1.0")


# --------------------------------------------------------------------------- training, tracking


MONITORS = ("val/loss", "val/accuracy", "val/auc")  # per-epoch validation metrics (val/auc: two classes)
# metrics every finished run logs (the kept weights' evaluation), usable as tracking.champion_metric
RUN_METRICS = tuple(f"{split}/{name}" for split in ("val", "test") for name in ("loss", "accuracy", "auc", "macro_f1"))


def metric_mode(metric: str) -> str:
    """min for losses, max for everything else (accuracy, AUC, F1)."""
    return "min" if metric.rsplit("/", 1)[-1].endswith("loss") else "max"


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True  # stop when training.monitor stops improving
    patience: int = 2  # epochs without improvement of training.monitor before stopping

    def __post_init__(self) -> None:
        _check(self.patience >= 0, "training.early_stopping.patience",
               f"must be >= 0, got {self.patience}", "e.g. training.early_stopping.patience=2")


@dataclass
class TrainingConfig:
    epochs: int = 20  # at most this many passes; early stopping ends a default run first (README: Defaults)
    batch_size: int = 32  # examples per step (bucketing keeps it per bucket)
    deterministic: bool = False  # enable_op_determinism: identical metrics for a seed, slower
    steps_per_execution: int = 1  # train steps per tf.function call; >1 cuts Python overhead
    mixed_precision: bool = False  # float16 compute with float32 output on a GPU; leave off on a CPU
    verbose: str = "auto"  # Keras progress: auto, 0, 1 or 2
    log_level: str = "quiet"  # quiet: library logs, warnings, progress bars silenced (bilstm_exp.quiet); verbose
    resume: bool = False  # continue an interrupted run from its last checkpointed epoch (checkpoints/<run_id>/)
    resume_run_id: str | None = None  # the run to resume; null: the newest checkpoint of this config
    monitor: str = "val/loss"  # THE selection metric: early stopping, kept weights, champion, sweep best, objective
    monitor_mode: str | None = None  # min or max; null: min for losses, max otherwise
    restore_best_weights: bool = True  # keep the best epoch's weights on training.monitor (false: the last epoch's)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    strategy: str = "default"  # default: one process; mirrored: all local GPUs; multi_worker: the TF_CONFIG cluster

    def __post_init__(self) -> None:
        _positive(self.epochs, "training.epochs", 3)
        _choice(self.strategy, ("default", "mirrored", "multi_worker"), "training.strategy")
        _positive(self.batch_size, "training.batch_size", 32)
        _positive(self.steps_per_execution, "training.steps_per_execution", 1)
        _choice(str(self.verbose), ("auto", "0", "1", "2"), "training.verbose")
        _choice(self.log_level, ("quiet", "verbose"), "training.log_level")
        _choice(self.monitor, MONITORS, "training.monitor")
        if self.monitor_mode is None:
            self.monitor_mode = metric_mode(self.monitor)
        _choice(self.monitor_mode, ("min", "max"), "training.monitor_mode")
        if self.resume_run_id is not None:
            _check(self.resume, "training.resume_run_id", "is set but training.resume is false",
                   f"add training.resume=true to resume run {self.resume_run_id}")
            _check(len(self.resume_run_id) == 32 and all(c in "0123456789abcdef" for c in self.resume_run_id),
                   "training.resume_run_id", f"'{self.resume_run_id}' is not an MLflow run id (32 hex digits)",
                   "copy the run id from the MLflow UI or the checkpoints/ folder name")


MAX_EXPERIMENT_NAME = 500  # MLflow's limit (mlflow.utils.validation); checked here, before any data is read


@dataclass
class TrackingConfig:
    name: str = "local"  # local (sqlite file in the working directory) or server
    tracking_uri: str | None = None  # local: sqlite:///mlflow.db; server: this or MLFLOW_TRACKING_URI
    experiment_name: str = "bilstm-exp"  # MLflow experiment the runs go to
    registered_model_name: str = "bilstm-sentiment"  # model registry name each run registers a version under
    register_model: Any = "auto"  # auto: register unless a smoke run (data.max_samples set); true; false
    sweep_registers: str = "best"  # in a -m sweep: best (the best job's model only), all (every job), none
    champion_metric: str | None = None  # the alias `champion` moves to a version that beats it; null: training.monitor
    champion_greater_is_better: bool | None = None  # null: from training.monitor_mode (min for losses)

    def __post_init__(self) -> None:
        _choice(self.name, ("local", "server"), "tracking.name")
        _check(bool(self.experiment_name.strip()), "tracking.experiment_name", "must not be empty",
               "e.g. tracking.experiment_name=bilstm-exp")
        _check(len(self.experiment_name) <= MAX_EXPERIMENT_NAME, "tracking.experiment_name",
               f"{len(self.experiment_name)} characters, and MLflow refuses names over {MAX_EXPERIMENT_NAME}",
               "pick a shorter plain name, e.g. tracking.experiment_name=bilstm-exp")
        _check(bool(self.registered_model_name.strip()) and not set("/:") & set(self.registered_model_name),
               "tracking.registered_model_name", f"must be non-empty without '/' or ':', got "
               f"'{self.registered_model_name}'", "e.g. tracking.registered_model_name=bilstm-sentiment")
        if isinstance(self.register_model, str) and self.register_model.lower() in ("true", "false"):
            self.register_model = self.register_model.lower() == "true"
        _check(self.register_model in (True, False, "auto"), "tracking.register_model",
               f"must be auto, true or false, got {self.register_model!r}", "e.g. tracking.register_model=auto")
        _choice(self.sweep_registers, ("best", "all", "none"), "tracking.sweep_registers")
        if self.champion_metric is not None:
            _choice(self.champion_metric, RUN_METRICS, "tracking.champion_metric")


@dataclass
class ProfilingConfig:
    name: str = "standard"  # standard: timings and throughput; trace: plus a TensorFlow profiler trace
    latency_samples: int = 50  # single-text predictions timed for latency/predict_p50_ms (0: skip)
    trace_start_step: int = 5  # profiling=trace: training steps skipped before the trace (tracing, warm-up)
    trace_steps: int = 10  # profiling=trace: training steps recorded by the TensorFlow profiler

    def __post_init__(self) -> None:
        _check(self.latency_samples >= 0, "profiling.latency_samples",
               f"must be >= 0, got {self.latency_samples}", "e.g. profiling.latency_samples=50")
        _check(self.trace_start_step >= 0, "profiling.trace_start_step",
               f"must be >= 0, got {self.trace_start_step}", "e.g. profiling.trace_start_step=5")
        _positive(self.trace_steps, "profiling.trace_steps", 10)


@dataclass
class ExperimentConfig:
    seed: int
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    clipping: ClippingConfig
    training: TrainingConfig
    tracking: TrackingConfig
    profiling: ProfilingConfig

    def __post_init__(self) -> None:
        # one selection criterion: the champion follows training.monitor unless set
        tracking, training = self.tracking, self.training
        if tracking.champion_metric is None:
            tracking.champion_metric = training.monitor
        if tracking.champion_greater_is_better is None:
            mode = training.monitor_mode if tracking.champion_metric == training.monitor else metric_mode(
                tracking.champion_metric)
            tracking.champion_greater_is_better = mode == "max"
        _check(not (training.resume and self.data.folds), "training.resume",
               "cannot resume a cross-validation (data.folds) run", "drop training.resume and start it again")


# group -> option name -> schema; a group with a single schema maps every name to it
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "file": FileDataConfig,
             "tweets": TweetsDataConfig, "imdb": ImdbDataConfig},
    "model": {"basic": BasicModelConfig, "attention": AttentionModelConfig,
              "stacked": StackedModelConfig, "unidirectional": UnidirectionalModelConfig},
    "optimizer": {"adam": OptimizerConfig, "adamw": AdamWOptimizerConfig,
                  "sgd": SGDOptimizerConfig, "rmsprop": RMSpropOptimizerConfig},
    "clipping": {name: ClippingConfig for name in CLIPPING_MODES},
    "training": {"default": TrainingConfig},
    "tracking": {"local": TrackingConfig, "server": TrackingConfig},
    "profiling": {"standard": ProfilingConfig, "trace": ProfilingConfig},
}
SCHEMA_GROUP = "schema"  # conf/<group>/<option>.yaml extends /schema/<group>/<option> from the ConfigStore
# top-level keys beside seed and the groups: a project's plugin modules (bilstm_exp.plugins), and the
# installed package's version (``${bilstm_exp_version:}``: a param of a project's DVC train stage, so an
# upgrade re-runs training; bilstm-exp init writes both)
TOP_LEVEL = ("plugins", "bilstm_exp_version")
PLUGIN_BASES = {"model": ModelConfig, "optimizer": OptimizerConfig, "data": DataConfig}  # groups open to plugins
VERSION_RESOLVER = "bilstm_exp_version"


RENAMED = {  # keys of earlier versions, and what replaced them
    "training.early_stopping.monitor": "use training.monitor (e.g. training.monitor=val/accuracy): one metric now "
                                       "decides early stopping, the kept weights, the champion and every ranking",
}


def check_renamed(overrides: list[str]) -> None:
    """Refuse a key an earlier version had, naming what replaced it (Hydra would say "not in struct")."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RENAMED:
            raise ConfigError(f"{key}: this key is gone. Fix: {RENAMED[key]}")


def check_option_keys(overrides: list[str], defaults: dict[str, str]) -> None:
    """Refuse ``group.key=value`` when the group's chosen option (picked in ``overrides``, else in
    ``defaults``) has no ``key`` but another option of the group has: Hydra would only say "Key 'path'
    is not in struct"; this names the option to add (``data.path=...`` needs ``data=file``)."""
    check_renamed(overrides)
    if any(o.startswith(("experiment=", "hparams_search=")) for o in overrides):
        return  # a preset may pick options itself
    chosen = dict(defaults)
    chosen.update({name: value for name, eq, value in (o.partition("=") for o in overrides)
                   if eq and name in SCHEMAS})
    for override in overrides:
        dotted, eq, _ = override.partition("=")
        group, dot, key = dotted.partition(".")
        if not (eq and dot) or group not in SCHEMAS or chosen.get(group) not in SCHEMAS[group]:
            continue
        key = key.split(".")[0]
        has = lambda schema, key=key: key in {f.name for f in dataclasses.fields(schema)}  # noqa: E731
        if has(SCHEMAS[group][chosen[group]]):
            continue
        options = [option for option, schema in SCHEMAS[group].items() if has(schema)]
        if not options:
            raise _unknown_key(f"{group}.{key}", SCHEMAS[group][chosen[group]], override)
        owners = " and ".join(f"{group}={o}" for o in options)
        raise ConfigError(f"{dotted}: the {group} option '{chosen[group]}' has no key '{key}'; "
                          f"{owners} {'has' if len(options) == 1 else 'have'} it. "
                          f"Fix: add {group}={options[0]}, e.g. {group}={options[0]} {override}")


def _unknown_key(dotted: str, schema: type, override: str) -> ConfigError:
    """A key no option of its group has: the allowed keys, and the closest one as the fix."""
    import difflib

    group, key = dotted.split(".", 1)
    allowed = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(key, allowed, n=1)
    fix = (f"did you mean {group}.{close[0]}? e.g. {override.replace(dotted, f'{group}.{close[0]}', 1)}" if close
           else "remove it or correct its spelling")
    return ConfigError(f"{dotted}: unknown key. Allowed keys for this {group} option: {', '.join(allowed)}. Fix: {fix}")


def schema_defaults(group: str, option: str) -> dict[str, Any]:
    """The defaults of one option's schema as plain data: what its YAML extends."""
    return OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group][option]))


def register_schemas() -> None:
    """Store every option's defaults in Hydra's ConfigStore as ``schema/<group>/<option>``.

    Call it before Hydra composes conf/ (storing again is harmless). Besides the package's own entry
    points (``compose.compose``, ``python -m bilstm_exp``), the Hydra plugin module
    ``hydra_plugins.bilstm_exp_schemas`` calls it whenever Hydra scans its plugins, which is how DVC's
    own composition (``dvc exp run -S ...``) sees the schemas without importing this package itself.
    """
    from hydra.core.config_store import ConfigStore

    from bilstm_exp import __version__

    if not OmegaConf.has_resolver(VERSION_RESOLVER):
        OmegaConf.register_new_resolver(VERSION_RESOLVER, lambda: __version__)
    store = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for option in options:
            store.store(group=f"{SCHEMA_GROUP}/{group}", name=option, node=schema_defaults(group, option),
                        provider="bilstm_exp")


def schema_digest() -> str:
    """md5 of every registered default: changes whenever a default in this module does (for drift checks).
    A plugin's schema does not count: it is known only once a config naming it is validated."""
    tree = {group: {option: schema_defaults(group, option) for option, schema in options.items()
                    if schema.__module__ == __name__}
            for group, options in SCHEMAS.items()}
    return hashlib.md5(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def _schema_for(group: str, node: Any) -> type:
    options = SCHEMAS[group]
    if len(set(options.values())) == 1:
        return next(iter(options.values()))
    name = node.get("name") if isinstance(node, DictConfig) else None
    plugin = " (your own: list the module that registers it in plugins:)" if group in PLUGIN_BASES else ""
    _check(name in options, f"{group}.name", f"'{name}' is not one of {', '.join(options)}",
           f"choose an option, e.g. {group}={next(iter(options))}{plugin}")
    return options[name]


def _explain(group: str, schema: type, error: OmegaConfBaseException) -> ConfigError:
    key = f"{group}.{error.full_key}" if getattr(error, "full_key", None) else group
    text = str(error).splitlines()[0]
    if isinstance(error, ConfigKeyError):
        allowed = ", ".join(f.name for f in dataclasses.fields(schema))
        return ConfigError(f"{key}: unknown key. Allowed keys for this {group} option: {allowed}. "
                           "Fix: remove it or correct its spelling")
    if isinstance(error, MissingMandatoryValue):
        return ConfigError(f"{key}: is required and has no value. Fix: pass it, e.g. {key}=...")
    return ConfigError(f"{key}: {text}. Fix: give a value of the type that {schema.__name__} declares "
                       "(src/bilstm_exp/config/schema.py)")


def validate(cfg: DictConfig | dict) -> ExperimentConfig:
    """Check a composed config and return it as typed dataclasses, or raise ConfigError."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    known = set(SCHEMAS) | {"seed", *TOP_LEVEL}
    extra = sorted(set(cfg.keys()) - known - {"hydra", "experiment", "hparams_search"})
    if extra:
        raise ConfigError(f"{extra[0]}: unknown top-level key. Allowed: {', '.join(sorted(known))}. "
                          "Fix: remove it or correct its spelling")
    plugins.load(_plugin_modules(cfg.get("plugins")))  # a plugin's schema joins SCHEMAS before the groups are read
    seed = cfg.get("seed", 42)
    _check(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed",
           f"must be a non-negative integer, got {seed!r}", "e.g. seed=42")
    groups: dict[str, Any] = {}
    for group in SCHEMAS:
        node = cfg.get(group)
        _check(node is not None, group, "is missing", f"add {group} to the defaults list in conf/config.yaml")
        schema = _schema_for(group, node)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), node)
            groups[group] = OmegaConf.to_object(merged)
        except ConfigError:
            raise
    env_refs = check_names(cfg)  # before any value is resolved into a message
        except OmegaConfBaseException as error:
            raise _explain(group, schema, error) from None
    config = ExperimentConfig(seed=seed, **groups)
    # leaves resolved from ${oc.env:...}: recorded as their interpolation, never their value (redaction.scrub)
    config.env_refs = env_refs
    return config


def _plugin_modules(value: Any) -> list[str]:
    """The top-level ``plugins:`` key: a list of module names (one name alone is taken as a list)."""
    if value is None:
        return []
    value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
    _check(isinstance(value, (list, str)), "plugins", f"must be a list of module names, got {value!r}",
           "e.g. plugins: [my_models.wide] in conf/config.yaml")
    return [value] if isinstance(value, str) else value


def add_option(group: str, name: str, schema: type | None = None) -> type:
    """The schema of option ``name`` of ``group`` for a registry: the one SCHEMAS lists, or ``schema``,
    which a plugin passes (bilstm_exp.plugins) and which joins SCHEMAS so :func:`validate` knows it."""
    options = SCHEMAS[group]
# What MLflow stores as a name (the experiment, the registered model, its versions and aliases; run
# names and tags built from the options' names): stored as it is, so it can never be masked.
NAME_KEYS = {"tracking.experiment_name": "tracking.experiment_name=bilstm-exp",
             "tracking.registered_model_name": "tracking.registered_model_name=bilstm-sentiment",
             **{f"{group}.name": f"{group}=<an option of conf/{group}/>" for group in ("data", "model", "optimizer",
                                                                                        "clipping", "tracking")}}


def check_names(cfg: DictConfig) -> dict[str, str]:
    """Refuse an environment interpolation (``${oc.env:...}``, also through another key) in a name;
    return every leaf from the environment: dotted key -> its interpolation text."""
    env_refs = redaction.references(cfg)
    for key, example in NAME_KEYS.items():
        if key in env_refs:
            raise ConfigError(f"{key}: '{env_refs[key]}' takes its value from the environment, and MLflow stores a "
                              "name as it is (experiments, registered models, versions, aliases, tags), where it "
                              f"cannot be masked. Fix: write the name itself, e.g. {example}")
    return env_refs


    if schema is None or options.get(name) is schema:
        if name not in options:
            raise ValueError(f"{group} option {name!r} has no schema: pass schema= (a dataclass subclassing "
                             f"{PLUGIN_BASES[group].__name__}) and give it a conf/{group}/{name}.yaml")
        return options[name]
    if name in options:
        raise ValueError(f"{group} option {name!r} exists already ({options[name].__name__}). Fix: name yours "
                         "differently, or override the packaged YAML in your conf/ instead")
    base = PLUGIN_BASES[group]
    defaults = {f.name: f.default for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    if not (isinstance(schema, type) and issubclass(schema, base) and defaults.get("name") == name):
        raise ValueError(f"the schema of {group} option {name!r} must be a @dataclass subclassing {base.__name__} "
                         f"whose name defaults to {name!r} (name: str = {name!r})")
    options[name] = schema
    return schema


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The validated config as plain nested dicts (for YAML and params)."""
    return dataclasses.asdict(config)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'lstm_units': 64}} -> {'model.lstm_units': 64}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
