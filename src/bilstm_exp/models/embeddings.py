"""Word vectors: pretrained vectors for a run's vocabulary, and ``bilstm-exp pretrain-embeddings``.

* :func:`for_vocabulary` turns ``model.pretrained_embeddings`` (word2vec text or binary, fastText's
  ``.vec``, or GloVe text, read with gensim's ``KeyedVectors``) into the embedding matrix for the run's
  vocabulary: the file's vector for each word it has, a random vector (same spread as the file's) for
  each word it lacks and for the out-of-vocabulary id, zeros for padding. Its metrics say how much of
  the vocabulary (``embedding/oov_fraction``) and of the training tokens
  (``embedding/oov_token_fraction``) got no pretrained vector.
* :func:`for_run` picks a run's vectors: that file's, else (``model.self_trained_vectors``, the default)
  word2vec vectors trained on the run's own training split (:func:`self_trained`; a fold's, in a
  cross-validation, so the fold's test texts never shape them), or none (a random start).
* :func:`pretrain` trains word2vec or fastText vectors on unlabelled text (tokenised like the
  classifier's input, :func:`bilstm_exp.data.vocabulary.tokenize`) and writes them in word2vec text format, which
  ``model.pretrained_embeddings`` reads back.

No TensorFlow here; gensim is imported inside the functions that use it. The config's validation has
already checked the file's existence, format and dimension from its first line
(:func:`bilstm_exp.models.vector_files.check`), before TensorFlow was imported.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bilstm_exp.config.model_schema import ModelConfig
from bilstm_exp.data.prepare import PreparedData
from bilstm_exp.data.vocabulary import PAD_ID, Vocabulary, tokenize
from bilstm_exp.errors import ConfigError, DataError, UserError
from bilstm_exp.models import vector_files

METHODS = ("word2vec", "fasttext")
TRAINED_ON_TAG = "embedding.trained_on"  # model.self_trained_vectors: the texts the run's vectors learned from


@dataclass
class Vectors:
    """The embedding's initial weights for one vocabulary, and how well the vector file covers it."""

    matrix: np.ndarray | None  # (len(vocab), dim) float32; None: no pretrained vectors configured
    metrics: dict[str, float] = field(default_factory=dict)  # embedding/* coverage metrics
    has_vector: np.ndarray | None = None  # bool per id: True where the row came from the file
    tags: dict[str, str] = field(default_factory=dict)  # self-trained vectors: which texts trained them


def with_rows(matrix: np.ndarray | None, rows: int) -> np.ndarray | None:
    """``matrix`` with zero rows appended up to ``rows`` (a fold's model is as large as its fold set's
    largest vocabulary; the rows past this vocabulary are never looked up, so their values never matter)."""
    if matrix is None or len(matrix) >= rows:
        return matrix
    return np.vstack([matrix, np.zeros((rows - len(matrix), matrix.shape[1]), dtype=matrix.dtype)])


def load(path: str, fmt: str = "auto"):
    """A gensim ``KeyedVectors`` from a word2vec (text or binary) or GloVe (text, no header) file."""
    fmt, _ = vector_files.probe(path, fmt)
    from gensim.models import KeyedVectors

    try:
        return KeyedVectors.load_word2vec_format(str(Path(path).expanduser()), binary=fmt == "word2vec_binary",
                                                 no_header=fmt == "glove", unicode_errors="replace")
    except (ValueError, EOFError, OSError, IndexError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: cannot be read as {fmt} vectors ({first}). Fix: check the file, or set "
                        "model.pretrained_format (word2vec, word2vec_binary or glove) to match it") from None


def trains_its_own(cfg: ModelConfig) -> bool:
    """Whether a run trains its own word2vec vectors: model.self_trained_vectors (the default), unless a
    vector file is named (model.pretrained_embeddings wins)."""
    return cfg.pretrained_embeddings is None and cfg.self_trained_vectors


def for_run(cfg: ModelConfig, prepared: PreparedData, *, seed: int = 0) -> Vectors:
    """The embedding's initial weights for a run on ``prepared``: the vectors of model.pretrained_embeddings,
    vectors trained on the run's own training split (:func:`trains_its_own`), or none (random)."""
    if trains_its_own(cfg):
        return self_trained(cfg, prepared, seed=seed)
    return for_vocabulary(cfg, prepared.vocab, prepared.splits["train"], seed=seed)


def self_trained(cfg: ModelConfig, prepared: PreparedData, *, seed: int = 0) -> Vectors:
    """word2vec vectors trained on the training split only (:func:`training_split_vectors`): in a
    cross-validation each fold trains its own on its own training texts, so no test or validation text of
    the fold shapes them. The run records which texts (tag ``embedding.trained_on``) and how many
    (``embedding/self_trained_texts``), and how many words got a vector (``embedding/self_trained_words``)."""
    texts = prepared.texts["train"]
    start = time.perf_counter()
    vectors = training_split_vectors(cfg, prepared, seed=seed)
    if vectors is None:  # nothing to learn from: the embedding starts random, and the run says so
        return Vectors(None, {"embedding/self_trained_texts": len(texts), "embedding/self_trained_words": 0},
                       tags={TRAINED_ON_TAG: f"none: no word occurs twice in the {len(texts):,} training texts, "
                                             "so the embedding starts random"})
    out = matrix_for(prepared.vocab, vectors, prepared.splits["train"], seed=seed)
    out.metrics.update({"embedding/self_trained_texts": len(texts), "embedding/self_trained_words": len(vectors),
                        "time/self_trained_vectors_s": time.perf_counter() - start})
    split = "the training split" if prepared.fold is None else f"fold {prepared.fold}'s training split"
    out.tags = {TRAINED_ON_TAG: f"{split}: {len(texts):,} texts, none of its val or test texts"}
    return out


def training_split_vectors(cfg: ModelConfig, prepared: PreparedData, *, seed: int = 0):
    """gensim's KeyedVectors of word2vec trained on ``prepared``'s training texts only (pretrain-embeddings'
    defaults: skip-gram, 5 epochs, window 5, words seen twice or more, one worker: the same vectors for
    the same texts and seed), ``model.embedding_dim`` wide; None when no word occurs twice."""
    sentences = [tokens for tokens in (tokenize(text) for text in prepared.texts["train"]) if tokens]
    if not any(count >= 2 for count in Counter(t for tokens in sentences for t in tokens).values()):
        return None
    return train(sentences, method="word2vec", dim=cfg.embedding_dim, epochs=5, min_count=2, window=5,
                 skipgram=True, seed=seed, workers=1)


def for_vocabulary(cfg: ModelConfig, vocab: Vocabulary, train_ids: list[np.ndarray] | None = None, *,
                   seed: int = 0) -> Vectors:
    """The embedding matrix for ``vocab`` from ``cfg.pretrained_embeddings`` (``Vectors(None)`` without one).

    ``train_ids``: the training split's token ids, for ``embedding/oov_token_fraction``.
    """
    if cfg.pretrained_embeddings is None:
        return Vectors(None)
    vectors = load(cfg.pretrained_embeddings, cfg.pretrained_format)
    if vectors.vector_size != cfg.embedding_dim:
        raise ConfigError(f"model.embedding_dim: is {cfg.embedding_dim} but the vectors in "
                          f"{cfg.pretrained_embeddings} have {vectors.vector_size} dimensions. Fix: set "
                          f"model.embedding_dim={vectors.vector_size}")
    return matrix_for(vocab, vectors, train_ids, seed=seed)


def matrix_for(vocab: Vocabulary, vectors, train_ids: list[np.ndarray] | None = None, *, seed: int = 0) -> Vectors:
    """Rows from ``vectors`` (a ``KeyedVectors``) for the words it has; the rest random, padding zeros."""
    found = np.zeros(len(vocab), dtype=bool)
    rows = np.zeros((len(vocab), vectors.vector_size), dtype=np.float32)
    for index, word in enumerate(vocab.words, start=2):
        key = vectors.key_to_index.get(word)
        if key is not None:
            rows[index] = vectors.vectors[key]
            found[index] = True
    scale = float(rows[found].std()) if found.any() else 0.05
    missing = ~found
    missing[PAD_ID] = False
    rows[missing] = np.random.default_rng(seed).normal(0.0, scale, size=(int(missing.sum()), rows.shape[1]))
    words = max(len(vocab.words), 1)
    metrics = {"embedding/oov_fraction": 1.0 - float(found[2:].sum()) / words,
               "embedding/vectors_found": float(found.sum())}
    if train_ids:
        ids = np.concatenate(train_ids)
        ids = ids[ids != PAD_ID]
        metrics["embedding/oov_token_fraction"] = float(np.mean(~found[ids])) if ids.size else 0.0
    return Vectors(rows, metrics, found)


# --------------------------------------------------------------------------- pretrain-embeddings


@dataclass
class PretrainSummary:
    method: str
    words: int  # vectors written
    dim: int
    texts: int
    tokens: int
    seconds: float
    out: Path

    def line(self) -> str:
        return (f"wrote {self.words:,} {self.method} vectors of size {self.dim} to {self.out} "
                f"(trained on {self.texts:,} texts, {self.tokens:,} tokens, in {self.seconds:.1f} s)")


def read_corpus(path: Path, text_column: str = "text") -> list[str]:
    """Texts from a plain text file (one per line) or the ``text_column`` of a .csv/.tsv file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file. Fix: pass --input a text file (one text per line) or a CSV")
    if path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        try:
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", encoding="utf-8",
                                encoding_errors="replace")
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DataError(f"{path}: cannot be read as a table ({str(error).splitlines()[0]}). "
                            "Fix: check the file, or pass a plain text file") from None
        if text_column not in table.columns:
            raise DataError(f"{path}: no column '{text_column}' (found {', '.join(map(str, table.columns))}). "
                            "Fix: pass --text-column NAME")
        return [t for t in table[text_column].dropna().astype(str) if t.strip()]
    return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def pretrain(texts: list[str], out: Path, *, method: str = "word2vec", dim: int = 100, epochs: int = 5,
             min_count: int = 2, window: int = 5, skipgram: bool = True, seed: int = 42,
             workers: int = 1) -> PretrainSummary:
    """Train word2vec or fastText vectors on ``texts`` and write them to ``out`` in word2vec text format.

    ``workers=1`` (the default) makes the vectors the same for the same texts and seed.
    """
    if method not in METHODS:
        raise UserError(f"--method: '{method}' is not one of {', '.join(METHODS)}. Fix: e.g. --method word2vec")
    for name, value in (("--dim", dim), ("--epochs", epochs), ("--min-count", min_count), ("--window", window),
                        ("--workers", workers)):
        if value < 1:
            raise UserError(f"{name}: must be >= 1, got {value}. Fix: pass a positive number")
    sentences = [tokens for tokens in (tokenize(text) for text in texts) if tokens]
    if not sentences:
        raise DataError("no words in the input. Fix: pass a file with text in it")
    counts = Counter(token for tokens in sentences for token in tokens)
    if not any(count >= min_count for count in counts.values()):
        raise DataError(f"no word occurs --min-count={min_count} times in {len(sentences)} texts. "
                        "Fix: lower --min-count or pass more text")
    start = time.perf_counter()
    vectors = train(sentences, method=method, dim=dim, epochs=epochs, min_count=min_count, window=window,
                    skipgram=skipgram, seed=seed, workers=workers)
    out.parent.mkdir(parents=True, exist_ok=True)
    vectors.save_word2vec_format(str(out), binary=False)
    return PretrainSummary(method, len(vectors), dim, len(sentences), sum(counts.values()),
                           time.perf_counter() - start, out)


def train(sentences: list[list[str]], *, method: str, dim: int, epochs: int, min_count: int, window: int,
          skipgram: bool, seed: int, workers: int):
    """gensim's word2vec or fastText trained on tokenised ``sentences``: its ``KeyedVectors``."""
    from gensim.models import FastText, Word2Vec

    trainer = Word2Vec if method == "word2vec" else FastText
    return trainer(sentences=sentences, vector_size=dim, window=window, min_count=min_count, sg=int(skipgram),
                   epochs=epochs, seed=seed, workers=workers).wv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp pretrain-embeddings``."""
    parser.description = ("Train word vectors on unlabelled text (tokenised like the classifier's input) and write\n"
                          "them in word2vec text format; use them with model.pretrained_embeddings=OUT\n"
                          "model.embedding_dim=DIM.")
    parser.add_argument("--input", required=True, type=Path, help="a text file (one text per line) or a .csv/.tsv")
    parser.add_argument("--text-column", default="text", help="the text column of a .csv/.tsv input (default: text)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the vectors (word2vec text format)")
    parser.add_argument("--method", default="word2vec", choices=METHODS, help="word2vec (default) or fasttext")
    parser.add_argument("--dim", type=int, default=100, help="vector size (default: 100)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the text (default: 5)")
    parser.add_argument("--min-count", type=int, default=2, help="ignore words seen fewer times (default: 2)")
    parser.add_argument("--window", type=int, default=5, help="context words on each side (default: 5)")
    parser.add_argument("--cbow", action="store_true", help="CBOW instead of skip-gram (faster, weaker on rare words)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    parser.add_argument("--workers", type=int, default=1, help="training threads; 1 (default) is reproducible")


def command(args: argparse.Namespace) -> None:
    summary = pretrain(read_corpus(args.input, args.text_column), args.out, method=args.method, dim=args.dim,
                       epochs=args.epochs, min_count=args.min_count, window=args.window, skipgram=not args.cbow,
                       seed=args.seed, workers=args.workers)
    print(summary.line())
