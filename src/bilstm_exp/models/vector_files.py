"""Word-vector files (word2vec text or binary, fastText's .vec, GloVe text), judged from their first line.

:func:`check` is a run's pre-flight for ``model.pretrained_embeddings``: the file exists, reads as
the configured format and has ``model.embedding_dim`` dimensions. The entry points call it after the
config is validated and before TensorFlow is imported or the store is touched (``cli.train.train``,
the DVC train stage), so a wrong path fails in a second; ``models.embeddings`` reads the file later
with the format :func:`probe` recognised. The config's own validation opens no file.
No gensim, no TensorFlow here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from bilstm_exp.config.checks import check as _require
from bilstm_exp.config.model_schema import ModelConfig
from bilstm_exp.errors import ConfigError


def check(cfg: ModelConfig) -> None:
    """The configured vector file is readable and as wide as the embedding, or a ConfigError."""
    if cfg.pretrained_embeddings is None:
        return
    _, dim = probe(cfg.pretrained_embeddings, cfg.pretrained_format)
    _require(dim == cfg.embedding_dim, "model.embedding_dim",
             f"is {cfg.embedding_dim} but the vectors in {cfg.pretrained_embeddings} have {dim} dimensions",
             f"set model.embedding_dim={dim}, or use {cfg.embedding_dim}-dimensional vectors")


def probe(path: str, fmt: str = "auto") -> tuple[str, int]:
    """(format, dimension) of a word-vector file from its first line only, or a ConfigError.

    word2vec text and binary files (and fastText's .vec) start with a ``count dimension`` line; GloVe
    text files start with the first word and its numbers. ``auto``: binary for a ``.bin`` suffix, else
    word2vec when the first line is two integers, else glove. A ``.gz`` file is read compressed.
    """
    key, file = "model.pretrained_embeddings", Path(path).expanduser()
    _require(bool(path.strip()) and file.is_file(), key, f"'{path}': no such file",
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
        _require(not header and len(first) >= 2, key, f"'{path}' does not look like GloVe text (the first line "
                 "should be a word and its numbers)", fix)
        try:
            [float(value) for value in first[1:]]
        except ValueError:
            raise ConfigError(f"{key}: '{path}' does not look like GloVe text (non-numbers on the first line). "
                              f"Fix: {fix}") from None
        return fmt, len(first) - 1
    _require(header and int(first[1]) > 0, key, f"'{path}' has no word2vec header line ('count dimension') "
             f"as model.pretrained_format={fmt} expects", fix)
    return fmt, int(first[1])
