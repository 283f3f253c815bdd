"""The ``model`` group's schemas: the keys every architecture has, and each architecture's own
(``models.architectures`` builds them by name). Checks values only: the word-vector file a config
names is read by the run's pre-flight (``models.vector_files``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bilstm_exp.config.checks import check, choice, fraction, positive

VECTOR_FORMATS = ("auto", "word2vec", "word2vec_binary", "glove")  # model.pretrained_format
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
    pretrained_embeddings: str | None = None  # word-vector file to start the embedding from (wins over self-trained)
    pretrained_format: str = "auto"  # auto (from suffix/header), word2vec (text), word2vec_binary, glove (no header)
    embeddings_trainable: bool = True  # false: the starting vectors stay frozen during training
    # without a vector file: word2vec vectors trained on the run's own training split (a fold's in a CV);
    # false starts the embedding from random numbers (benchmarks/real_text_defaults.md: why true)
    self_trained_vectors: bool = True

    def __post_init__(self) -> None:
        positive(self.embedding_dim, "model.embedding_dim", 64)
        choice(self.cell, CELLS, "model.cell")
        choice(self.kernel, ("fast", "keras"), "model.kernel")
        fraction(self.dropout, "model.dropout", 0.2)
        fraction(self.recurrent_dropout, "model.recurrent_dropout", 0.0)
        fraction(self.embedding_dropout, "model.embedding_dropout", 0.2)
        fraction(self.output_dropout, "model.output_dropout", 0.3)
        choice(self.pretrained_format, VECTOR_FORMATS, "model.pretrained_format")
        if self.pretrained_embeddings is None and not self.self_trained_vectors:
            check(self.embeddings_trainable, "model.embeddings_trainable",
                  "false freezes randomly initialised embeddings", "set model.pretrained_embeddings=PATH "
                  "(a word2vec or GloVe file) or model.self_trained_vectors=true, or leave "
                  "model.embeddings_trainable=true")
        # a vector file is read by the run's pre-flight (models.vector_files.check), not here


@dataclass
class UnidirectionalModelConfig(ModelConfig):
    name: str = "unidirectional"
    lstm_units: int = 64  # units of the single forward layer

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.lstm_units, "model.lstm_units", 64)


@dataclass
class BasicModelConfig(UnidirectionalModelConfig):
    name: str = "basic"
    lstm_units: int = 64  # units per direction
    merge_mode: str = "concat"  # how the two directions combine: concat, sum, ave, mul

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.merge_mode, MERGE_MODES, "model.merge_mode")


@dataclass
class AttentionModelConfig(BasicModelConfig):
    name: str = "attention"
    attention_units: int = 64  # width of the scoring layer: score_t = V tanh(W1 h_t + W2 q)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.attention_units, "model.attention_units", 64)


@dataclass
class StackedModelConfig(ModelConfig):
    name: str = "stacked"
    layer_sizes: list[int] = field(default_factory=lambda: [64, 32])  # units per direction, per layer, bottom first
    merge_mode: str = "concat"  # how the two directions combine: concat, sum, ave, mul

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.layer_sizes) > 0, "model.layer_sizes", "must list at least one layer",
              "e.g. model.layer_sizes=[64,32]")
        for size in self.layer_sizes:
            positive(size, "model.layer_sizes", "[64,32]")
        choice(self.merge_mode, MERGE_MODES, "model.merge_mode")
