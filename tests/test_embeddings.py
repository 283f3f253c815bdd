"""The knobs real text needs: pretrained word vectors (word2vec text/binary, GloVe), their coverage,
frozen or trainable embeddings, spatial and output dropout, a minimum token frequency, weight decay in
the Optuna search, and `bilstm-exp pretrain-embeddings`. Vector files are written by the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bilstm_exp.cli import main as cli
from bilstm_exp.config.compose import CONF_DIR, compose
from bilstm_exp.config.schema import validate
from bilstm_exp.data.vocabulary import Vocabulary, tokenize
from bilstm_exp.errors import ConfigError, DataError
from bilstm_exp.models import embeddings
from tests.conftest import ROOT, SUBPROCESS_S, tiny

WORDS = {"great": [0.5, 0.25, -1.0, 2.0], "awful": [-0.5, 1.5, 0.0, 0.125], "plot": [1.0, -2.0, 0.5, 0.75],
         "unusedword": [9.0, 9.0, 9.0, 9.0]}
VOCAB = Vocabulary(["great", "plot", "the", "movie", "awful"])  # ids 2..6; "the" and "movie" have no vector


def write_vectors(folder: Path, words: dict[str, list[float]] = WORDS) -> dict[str, Path]:
    """The same vectors as word2vec text, word2vec binary (written by gensim) and GloVe text."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=len(next(iter(words.values()))))
    kv.add_vectors(list(words), np.array(list(words.values()), dtype=np.float32))
    files = {"word2vec": folder / "vectors.txt", "word2vec_binary": folder / "vectors.bin",
             "glove": folder / "glove.4d.txt"}
    kv.save_word2vec_format(str(files["word2vec"]), binary=False)
    kv.save_word2vec_format(str(files["word2vec_binary"]), binary=True)
    files["glove"].write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in words.items()), encoding="utf-8")
    return files


def model_config(*overrides: str):
    return validate(compose(tiny("basic", "model.embedding_dim=4", *overrides))).model


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec_binary", "glove"])
def test_loader_reads_each_format_into_the_vocabulary_matrix(tmp_path, fmt):
    path = write_vectors(tmp_path)[fmt]
    for given in ("auto", fmt):  # the format is recognised from the file, or named
        cfg = model_config(f"model.pretrained_embeddings={path}", f"model.pretrained_format={given}")
        vectors = embeddings.for_vocabulary(cfg, VOCAB, [np.array([2, 3, 4, 5, 1, 1, 6, 2], dtype=np.int32)], seed=3)
        matrix = vectors.matrix
        assert matrix.shape == (len(VOCAB), 4) and matrix.dtype == np.float32
        for word in ("great", "plot", "awful"):
            np.testing.assert_allclose(matrix[VOCAB._index[word]], WORDS[word], rtol=1e-6)
        assert not matrix[0].any()  # padding
        assert np.all(np.abs(matrix[[1, 4, 5]]).sum(axis=1) > 0)  # out-of-vocabulary id and words without a vector
        # 2 of 5 vocabulary words lack a vector; 4 of 8 training tokens (the, movie, OOV, OOV) do
        assert vectors.metrics["embedding/oov_fraction"] == pytest.approx(2 / 5)
        assert vectors.metrics["embedding/oov_token_fraction"] == pytest.approx(4 / 8)
    assert embeddings.for_vocabulary(model_config(), VOCAB).matrix is None  # no file: random init as before


def test_missing_mismatched_or_misread_vector_files_are_config_errors_before_tensorflow(tmp_path):
    files = write_vectors(tmp_path)
    script = f"""
import sys
from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.errors import ConfigError
from bilstm_exp.models import vector_files
cases = [["model.pretrained_embeddings={tmp_path / 'missing.txt'}"],
         ["model.pretrained_embeddings={files['glove']}"],
         ["model.pretrained_embeddings={files['glove']}", "model.embedding_dim=4", "model.pretrained_format=word2vec"]]
for overrides in cases:
    try:
        vector_files.check(validate(compose(overrides)).model)  # the run's pre-flight
    except ConfigError as error:
        print(error)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=SUBPROCESS_S)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 4, out.stdout + out.stderr
    assert "missing.txt': no such file" in lines[0] and "Fix:" in lines[0]
    assert "model.embedding_dim: is 64 but the vectors in" in lines[1] and "have 4 dimensions" in lines[1]
    assert "set model.embedding_dim=4" in lines[1]
    assert "no word2vec header line" in lines[2] and "model.pretrained_format" in lines[2]
    assert lines[3] == "tensorflow imported: False"
    broken = tmp_path / "broken.txt"
    broken.write_text("3 4\ngreat 0.1 0.2 0.3 0.4\nplot 0.1 zero\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot be read as word2vec vectors"):
        embeddings.for_vocabulary(model_config(f"model.pretrained_embeddings={broken}"), VOCAB)
    with pytest.raises(ConfigError, match="model.embeddings_trainable"):
        model_config("model.embeddings_trainable=false", "model.self_trained_vectors=false")  # frozen random: a mistake


@pytest.mark.slow  # a whole training run: `make test` runs it, not the inner loop
def test_frozen_pretrained_embeddings_stay_unchanged_and_coverage_is_logged(tmp_path, workdir):
    """A tiny tracked run with frozen GloVe vectors for the synthetic cue words and a minimum frequency."""
    from mlflow.tracking import MlflowClient

    from bilstm_exp.data import sources
    from bilstm_exp.training import runner as training

    cues = sources._POSITIVE + sources._NEGATIVE
    rng = np.random.default_rng(0)
    table = {w: rng.normal(size=8).round(4).tolist() for w in [*cues, "notinthedata"]}
    vectors = write_vectors(tmp_path, table)
    overrides = tiny("basic", f"model.pretrained_embeddings={vectors['glove']}", "model.embeddings_trainable=false",
                     "model.embedding_dropout=0.2", "model.output_dropout=0.2", "data.min_token_frequency=3",
                     "tracking.register_model=false", "profiling.latency_samples=0", "model.kernel=keras")
    config = validate(compose(overrides))
    result = training.run(config, root=workdir, overrides=overrides)

    vocab = result.prepared.vocab
    counts = {w: sum(tokenize(t).count(w) for t in result.prepared.texts["train"]) for w in vocab.words}
    assert min(counts.values()) >= 3  # data.min_token_frequency=3
    assert len(vocab) < len(Vocabulary.fit(result.prepared.texts["train"], config.data.vocab_size))
    weights = result.classifier.model.get_layer("embedding").get_weights()[0]
    initial = embeddings.for_vocabulary(config.model, vocab, seed=config.seed).matrix
    np.testing.assert_array_equal(weights, initial)  # frozen: every row as it started, after a whole epoch
    covered = [w for w in vocab.words if w in table]
    assert covered and "notinthedata" not in vocab.words
    np.testing.assert_allclose(weights[[vocab._index[w] for w in covered]], [table[w] for w in covered], rtol=1e-5)
    logged = MlflowClient().get_run(result.run_id).data
    assert logged.metrics["embedding/oov_fraction"] == pytest.approx(1 - len(covered) / len(vocab.words))
    assert 0 < logged.metrics["embedding/oov_token_fraction"] < 1
    assert logged.params["model.embeddings_trainable"] == "False"


def test_trainable_pretrained_embeddings_move_with_training(tmp_path):
    from bilstm_exp.training import runner as training

    config = validate(compose(tiny("basic", f"model.pretrained_embeddings={write_vectors(tmp_path)['glove']}",
                                   "model.embedding_dim=4", "model.kernel=keras")))
    texts = ["great plot", "awful movie", "great movie the plot", "awful the plot"]

    # what compile_model reads of the prepared data (the training split: for model.self_trained_vectors)
    prepared = SimpleNamespace(vocab=VOCAB, num_classes=2, splits={"train": []}, embedding_rows=None)
    model = training.compile_model(config, prepared, 1)  # the embedding starts from model.pretrained_embeddings
    before = model.get_layer("embedding").get_weights()[0]
    np.testing.assert_allclose(before[VOCAB._index["plot"]], WORDS["plot"], rtol=1e-6)
    ids = np.zeros((4, 4), dtype=np.int32)
    for row, text in enumerate(texts):
        seq = VOCAB.encode(text, 4)
        ids[row, : len(seq)] = seq
    model.train_on_batch(ids, np.array([1, 0, 1, 0], dtype=np.int32))
    after = model.get_layer("embedding").get_weights()[0]
    assert not np.allclose(after[VOCAB._index["plot"]], before[VOCAB._index["plot"]])


def test_spatial_and_output_dropout_are_in_the_model_and_keep_the_mask():
    from bilstm_exp.models import build as models

    plain = models.build(model_config(), 30, 2)
    assert not {"embedding_dropout", "output_dropout"} & {layer.name for layer in plain.layers}  # defaults: as before
    model = models.build(model_config("model.embedding_dropout=0.3", "model.output_dropout=0.4"), 30, 2)
    spatial, output = model.get_layer("embedding_dropout"), model.get_layer("output_dropout")
    assert type(spatial).__name__ == "SpatialDropout1D" and spatial.rate == 0.3 and output.rate == 0.4
    assert model.layers.index(spatial) == model.layers.index(model.get_layer("embedding")) + 1
    assert model.layers.index(output) == model.layers.index(model.get_layer("output")) - 1
    # the mask passes through the spatial dropout: padding does not change a prediction
    short = np.array([[5, 9, 3]], dtype=np.int32)
    padded = np.array([[5, 9, 3, 0, 0, 0, 0]], dtype=np.int32)
    np.testing.assert_allclose(model.predict_on_batch(short), model.predict_on_batch(padded), atol=1e-6)


def test_min_token_frequency_drops_rare_words():
    texts = ["good good good film", "good film bad", "film odd"]
    assert Vocabulary.fit(texts, 100).words == ["good", "film", "bad", "odd"]
    assert Vocabulary.fit(texts, 100, min_frequency=2).words == ["good", "film"]
    # "bad" is seen once: out of vocabulary
    assert Vocabulary.fit(texts, 100, min_frequency=2).encode("bad film", 5).tolist() == [1, 3]
    with pytest.raises(ConfigError, match="data.min_token_frequency"):
        validate(compose(["data.min_token_frequency=0"]))


def test_optuna_search_space_has_weight_decay_and_dropouts():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from hydra_plugins.bilstm_exp_optuna_sweeper.sweeper import distribution

    config = validate(compose(["hparams_search=optuna"]))
    assert config.optimizer.name == "adamw"
    params = OmegaConf.load(CONF_DIR / "hparams_search" / "optuna.yaml").hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    space = {o.key_or_group: distribution(o) for o in parsed}
    decay = space["optimizer.weight_decay"]
    assert type(decay).__name__ == "FloatDistribution" and decay.log and (decay.low, decay.high) == (1e-5, 1e-2)
    for key in ("model.embedding_dropout", "model.output_dropout"):
        assert not space[key].log and (space[key].low, space[key].high) == (0, 0.5)


@pytest.mark.parametrize("method", ["word2vec", "fasttext"])
def test_pretrain_embeddings_writes_vectors_the_loader_reads(tmp_path, capsys, method):
    corpus = tmp_path / "unlabelled.csv"
    sentences = ["the plot was great", "a great movie with a fine plot", "an awful movie", "the cast was awful"]
    corpus.write_text("text\n" + "\n".join(sentences * 10) + "\n", encoding="utf-8")
    out = tmp_path / "vectors" / f"{method}.txt"
    cli.main(["pretrain-embeddings", "--input", str(corpus), "--out", str(out), "--method", method,
              "--dim", "8", "--epochs", "2", "--min-count", "2"])
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"wrote 11 {method} vectors of size 8 to ") and "40 texts" in summary
    cfg = validate(compose(tiny("basic", f"model.pretrained_embeddings={out}", "model.embedding_dim=8"))).model
    vectors = embeddings.for_vocabulary(cfg, Vocabulary.fit(sentences, 100), seed=0)
    assert vectors.metrics["embedding/oov_fraction"] == 0.0  # every word of the text has a vector
    with pytest.raises(SystemExit) as stopped:
        cli.main(["pretrain-embeddings", "--input", str(tmp_path / "missing.txt"), "--out", str(out)])
    assert stopped.value.code == 2 and "no such file" in capsys.readouterr().err
