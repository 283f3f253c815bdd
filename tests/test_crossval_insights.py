"""What a cross-validation tells a user beyond its mean: test accuracy per class and per length bucket on
the parent run (its metrics, its table, its summary line); word vectors trained per fold on that fold's
training texts only (model.self_trained_vectors, on by default); later folds training the previous fold's
compiled model as a new model would train (models/reuse.py); and label smoothing (training.label_smoothing).

Real Hydra composition, a real MLflow sqlite store, real TensorFlow and gensim on tiny data.
"""

from __future__ import annotations

import csv
import os
import re
import threading

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.data import batching
from bilstm_exp.data import prepare as data
from bilstm_exp.models import embeddings, reuse
from bilstm_exp.training import crossval, runner
from tests.conftest import run_module, tiny

PLANTED = "zyzzyva"  # a word only fold 0's test texts contain


def parent_and_folds(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("cv.role") == "parent"]
    folds = sorted((r for r in runs if r.data.tags.get("cv.role") == "fold"), key=lambda r: int(r.data.tags["fold"]))
    return client, parent, folds


def test_a_cv_parent_shows_test_accuracy_per_class_and_length_bucket_and_names_the_weakest(cross_validated):
    """The session's 3-fold run of 3 classes with training.label_smoothing=0.1."""
    config, result, out = cross_validated.config, cross_validated.result, cross_validated.out
    client, parent, folds = parent_and_folds(cross_validated.folder)
    metrics = parent.data.metrics
    # per class: the mean over folds of the share of the class's test texts each fold's model got right
    classes = result.folds[0].prepared.class_names
    for k, name in enumerate(classes):
        per_fold = [np.mean(r.evaluation.y_pred[r.evaluation.y_true == k] == k) for r in result.folds]
        assert metrics[f"cv/test/accuracy/class/{name}_mean"] == pytest.approx(np.mean(per_fold))
        assert f"cv/test/accuracy/class/{name}_ci95" in metrics
    # per length bucket: contiguous token ranges from 0 to data.max_length, data.num_buckets of them at most
    buckets = sorted(tuple(map(int, m.group(1, 2))) for key in metrics
                     if (m := re.fullmatch(r"cv/test/accuracy/length/(\d+)-(\d+)_mean", key)))
    assert 2 <= len(buckets) <= config.data.num_buckets
    assert buckets[0][0] == 0 and buckets[-1][1] == config.data.max_length
    assert all(hi + 1 == lo for (_, hi), (lo, _) in zip(buckets, buckets[1:]))
    # the table: every test text counted once by class and once by length, the errors adding up to the folds'
    table = client.download_artifacts(parent.info.run_id, "reports/cv_breakdown.md")
    rows = [line.split("|")[1:-1] for line in open(table, encoding="utf-8") if line.startswith(("| class", "| length"))]
    texts = {by: sum(int(r[2].replace(",", "")) for r in rows if r[0].strip() == by) for by in ("class", "length")}
    wrong = {by: sum(int(r[3].replace(",", "")) for r in rows if r[0].strip() == by) for by in ("class", "length")}
    assert texts == {"class": 160, "length": 160}
    errors = sum(round(len(r.evaluation.y_true) * (1 - f.data.metrics["test/accuracy"]))
                 for r, f in zip(result.folds, folds, strict=True))
    assert wrong == {"class": errors, "length": errors}
    # the end summary names the weakest class: the one with the lowest mean
    weakest = min(classes, key=lambda name: metrics[f"cv/test/accuracy/class/{name}_mean"])
    [line] = [line for line in out.splitlines() if line.strip().startswith("weakest")]
    assert f"class {weakest} {metrics[f'cv/test/accuracy/class/{weakest}_mean']:.4f}" in line
    assert "tokens" in line and "reports/cv_breakdown.md" in line
    # training.label_smoothing is recorded like every key, on the parent and each fold
    assert {f.data.params["training.label_smoothing"] for f in folds} == {"0.1"}
    assert parent.data.params["training.label_smoothing"] == "0.1"
    assert all(np.isfinite(f.data.metrics["train/loss"]) for f in folds)


def test_label_smoothing_reaches_the_keras_loss_for_two_and_more_classes():
    """A confident right prediction costs (almost) nothing without smoothing and a fixed floor with it."""
    from bilstm_exp.models.build import loss

    sure = np.array([[0.001], [0.999]], dtype="float32"), np.array([[0], [1]])
    assert float(_value(loss(2), *sure)) < 0.01
    # targets 0.05 and 0.95: the cross-entropy of 0.999 against 0.95
    floor = -(0.95 * np.log(0.999) + 0.05 * np.log(0.001))
    assert float(_value(loss(2, 0.1), *sure)) == pytest.approx(floor, rel=1e-3)
    three = np.array([[0.998, 0.001, 0.001]], dtype="float32"), np.array([0])
    assert float(_value(loss(3), *three)) < 0.01
    target = np.array([1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert float(_value(loss(3, 0.1), *three)) == pytest.approx(-(target * np.log(three[0][0])).sum(), rel=1e-3)


def _value(fn, y_pred, y_true):
    import keras

    if isinstance(fn, str):
        fn = keras.losses.get(fn)
    return keras.ops.mean(fn(y_true, y_pred))


def test_a_label_smoothing_of_one_is_refused_in_one_line(tmp_path):
    """1.0 would train every class towards the same target; 1.5 and -0.1: tests/test_bad_input.py."""
    out = run_module(tiny("basic", "training.label_smoothing=1.0"), tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "training.label_smoothing: must be in [0, 1), got 1.0. Fix: e.g. training.label_smoothing=0.1" in line
    assert not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------- self-trained vectors per fold


def corpus(tmp_path, planted: set[str] = frozenset()):
    """A CSV of 120 short reviews; the texts in ``planted`` get the word PLANTED."""
    words = ["great", "awful", "film", "plot", "acting", "music", "long", "short", "moving", "dull"]
    rng = np.random.default_rng(0)
    rows = [(f"{' '.join(rng.choice(words, 6))} {'good' if i % 2 else 'bad'} review {i}", "pos" if i % 2 else "neg")
            for i in range(120)]
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"),
                                      *((f"{t} {PLANTED}" if t in planted else t, y) for t, y in rows)])
    return path


def file_config(path, *extra: str, folds: int | None = 3):
    return validate(compose(["data=file", f"data.path={path}", f"data.folds={folds or 'null'}", "model.lstm_units=8",
                             "model.embedding_dim=8", "model.kernel=keras", "training.epochs=1",
                             "profiling.latency_samples=0", "tracking.system_metrics=false", *extra]))


@pytest.mark.slow  # trains three folds and their word vectors
def test_each_fold_trains_its_vectors_on_its_own_training_texts_never_its_test_texts(workdir):
    # three texts that fold 0 tests on (folds depend on the labels and data.split_seed only) get a new word
    first = data.prepare_folds(file_config(corpus(workdir)).data)[0]
    path = corpus(workdir, set(first.texts["test"][:3]))
    config = file_config(path)  # the default: each fold trains its own vectors
    result = crossval.run(config, root=workdir)
    _, parent, folds = parent_and_folds(workdir)
    assert parent.data.params["model.self_trained_vectors"] == "True"
    for k, (run, fold) in enumerate(zip(result.folds, folds, strict=True)):
        train = run.prepared.texts["train"]
        # the fold run says which texts trained its vectors: its own training split, counted
        assert fold.data.tags["embedding.trained_on"] == (f"fold {k}'s training split: {len(train):,} texts, "
                                                          "none of its val or test texts")
        assert fold.data.metrics["embedding/self_trained_texts"] == len(train)
        vectors = embeddings.training_split_vectors(config.model, run.prepared, seed=config.seed)  # the fold's
        assert fold.data.metrics["embedding/self_trained_words"] == len(vectors)
        seen = sum(PLANTED in text.split() for text in train)
        assert (PLANTED in vectors.key_to_index) == (seen >= 2)  # word2vec keeps words seen twice
    assert sum(PLANTED in text for text in result.folds[0].prepared.texts["test"]) == 3
    fold0 = embeddings.training_split_vectors(config.model, result.folds[0].prepared, seed=config.seed)
    assert PLANTED not in fold0.key_to_index
    # trained on the whole corpus, test texts included, the vectors would have the word
    everything = data.prepare(file_config(path, folds=None).data)
    everything.texts["train"] = [t for part in everything.texts.values() for t in part]
    assert PLANTED in embeddings.training_split_vectors(config.model, everything, seed=config.seed).key_to_index


def test_vectors_trained_ahead_of_a_fold_are_the_ones_its_run_would_train(workdir):
    """A CV trains fold k+1's word2vec vectors in a thread while fold k trains: each fold still starts
    from exactly the vectors a run on its own training split trains; with no self-trained vectors,
    nothing is trained ahead."""
    config = file_config(corpus(workdir))
    folds = data.prepare_folds(config.data)
    ahead = crossval.VectorsAhead(config, folds)
    try:
        for k, fold in enumerate(folds):
            got = ahead.take(k)
            assert (ahead.upcoming is not None) == (k + 1 < len(folds))  # the next fold's are under way
            want = embeddings.for_run(config.model, fold, seed=config.seed)
            np.testing.assert_array_equal(got.matrix, want.matrix)
            assert got.tags == want.tags and got.metrics.keys() == want.metrics.keys()
    finally:
        ahead.close()
    plain = file_config(corpus(workdir), "model.self_trained_vectors=false")
    assert crossval.VectorsAhead(plain, folds).take(0) is None


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="a thread's nice value: Linux")
def test_vectors_trained_ahead_run_at_the_lowest_cpu_priority_beside_the_folds_training(workdir):
    """The next fold's vectors take the CPU the training leaves idle, not the training's own: their thread
    (and gensim's, which inherit its nice value) runs at nice 19, the rest of the process as it was."""
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    config, before = file_config(corpus(workdir)), nice()
    ahead = crossval.VectorsAhead(config, data.prepare_folds(config.data))
    try:
        assert ahead.pool.submit(nice).result() == 19
        assert nice() == before  # the training's thread keeps its priority
    finally:
        ahead.close()


# --------------------------------------------------------------------------- a later fold trains the kept model


@pytest.mark.slow  # three tiny runs
def test_a_later_fold_trains_the_kept_model_exactly_as_a_new_model(workdir):
    """Fold 1 trains fold 0's model object (Keras's traced steps kept) from the state a new model starts
    with: weights, dropout seeds, optimizer. Trained so and by a new model, the fold gives the same epochs
    and the same test predictions, to the bit (dropout and clipping on: every kind of state matters; the
    default kernel, whose optimizer step is one XLA cluster on a CPU)."""
    config = file_config(corpus(workdir), "data.vocab_size=20", "model.dropout=0.3", "clipping=global_norm",
                         "training.epochs=2", "tracking.register_model=false", "model.kernel=fast", folds=2)
    first, second = data.prepare_folds(config.data)
    assert len(first.vocab) == len(second.vocab) == 20  # capped: the same shapes
    kept = reuse.KeptModel()
    runner.run(config, root=workdir, prepared=first, kept=kept)
    model = kept.model
    again = runner.run(config, root=workdir, prepared=second, kept=kept)
    assert kept.model is model  # the same object trained both folds
    new = runner.run(config, root=workdir, prepared=second)
    per_epoch = [key for key in new.history if not key.startswith(("time/", "throughput/", "system/"))]
    assert {"loss", "val_loss", "grad_norm_mean"} <= set(per_epoch)
    assert {key: again.history[key] for key in per_epoch} == {key: new.history[key] for key in per_epoch}
    np.testing.assert_array_equal(again.evaluation.probabilities, new.evaluation.probabilities)


def test_folds_with_vocabularies_of_other_sizes_build_one_model_shape_and_pad_to_the_same_widths(workdir):
    """Each fold fits its own vocabulary, so their sizes differ (unless data.vocab_size caps them all);
    the folds' models still share one shape, as large as the largest vocabulary, so a later fold trains the
    kept model (its traced steps) rather than a new one, and every split of every fold pads to the same
    bucket widths (one compiled loop per width)."""
    rng = np.random.default_rng(1)  # 120 texts of 2-19 words drawn from 400: each training split has its own
    path = workdir / "varied.csv"
    path.write_text("text,label\n" + "".join(
        f"{' '.join(f'w{w}' for w in rng.integers(0, 400, rng.integers(2, 20)))} {'good' if i % 2 else 'bad'},"
        f"{'pos' if i % 2 else 'neg'}\n" for i in range(120)))
    config = file_config(path, "model.self_trained_vectors=false", "data.num_buckets=3")
    folds = data.prepare_folds(config.data)
    sizes = [len(fold.vocab) for fold in folds]
    assert len(set(sizes)) > 1, sizes  # this corpus's folds differ, as a real corpus's do
    assert {fold.embedding_rows for fold in folds} == {max(sizes)}
    kept, models = reuse.KeptModel(), []
    for fold in folds:
        fresh = runner.compile_model(config, fold, 4)
        assert fresh.get_layer("embedding").input_dim == max(sizes)
        models.append(kept.adopt(fresh, repr(config)))
    assert models[1] is models[0] and models[2] is models[0]  # one model object trains every fold
    bounds = [runner.buckets(config, fold) for fold in folds]
    assert bounds[1:] == [bounds[0]] * 2 and len(bounds[0]["boundaries"]) >= 1
    widths = set()
    for fold in folds:
        for pipeline in runner.datasets(config, fold).values():
            widths |= {int(x.shape[1]) for x, _ in pipeline.as_numpy_iterator()}
    closing = batching.closing_boundary(bounds[0]["longest"]) - 1
    assert widths <= {b - 1 for b in bounds[0]["boundaries"]} | {closing}, widths


def test_the_seed_set_again_for_a_later_fold_restarts_every_generator_as_keras_set_random_seed_does():
    """A later fold sets the run's seed again without clearing TensorFlow's caches (its instantiated
    functions): Python's, NumPy's and Keras's generators and TensorFlow's op seeds still restart exactly as
    ``keras.utils.set_random_seed`` restarts them."""
    import random

    import keras
    from tensorflow.python.eager import context

    def draws() -> tuple:
        return (random.random(), float(np.random.random()), float(keras.random.uniform(())),  # global seed generator
                context.context()._internal_operation_seed())

    keras.utils.set_random_seed(11)
    want = draws()
    runner.set_random_seed(11)  # TensorFlow has 11 already: its caches are kept
    assert draws() == want
    runner.set_random_seed(12)  # another seed: keras.utils.set_random_seed itself
    keras.utils.set_random_seed(12)
    other = draws()
    runner.set_random_seed(12)
    assert draws() == other != want


def test_a_model_of_other_shapes_or_settings_is_not_reused_and_a_reused_one_gets_the_new_state(workdir):
    config = file_config(corpus(workdir), "model.self_trained_vectors=false", folds=2)
    first = data.prepare_folds(config.data)[0]
    second = data.prepare_folds(file_config(corpus(workdir), "data.vocab_size=20", folds=2).data)[0]
    assert len(first.vocab) > len(second.vocab) == 20  # as a fold under data.vocab_size has fewer words
    kept, settings = reuse.KeptModel(), repr(config)
    one = runner.compile_model(config, first, 4)
    assert kept.adopt(one, settings) is one
    two = runner.compile_model(config, second, 4)
    assert kept.adopt(two, settings) is two  # another embedding shape: the new model, kept from now on
    three = runner.compile_model(config, second, 4)
    assert not np.array_equal(np.asarray(two.variables[0]), np.asarray(three.variables[0]))  # drawn later
    assert kept.adopt(three, settings) is two  # the same shapes and settings: the kept one, with three's state
    for mine, theirs in [*zip(two.variables, three.variables, strict=True),
                         *zip(two.optimizer.variables, three.optimizer.variables, strict=True)]:
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    other = file_config(corpus(workdir), "model.self_trained_vectors=false", "model.dropout=0.4", folds=2)
    four = runner.compile_model(other, second, 4)
    assert kept.adopt(four, repr(other)) is four  # a dropout rate is in the traced step: not reused


def test_training_texts_with_no_repeated_word_start_the_embedding_random_and_the_run_says_so(workdir):
    config = file_config(corpus(workdir), folds=None)
    prepared = data.prepare(config.data)
    prepared.texts["train"] = ["alpha beta", "gamma delta", "epsilon"]  # word2vec keeps words seen twice: none
    vectors = embeddings.for_run(config.model, prepared, seed=config.seed)
    assert vectors.matrix is None  # the embedding layer's own random start
    assert vectors.tags == {embeddings.TRAINED_ON_TAG: "none: no word occurs twice in the 3 training texts, so "
                                                       "the embedding starts random"}
    assert vectors.metrics == {"embedding/self_trained_texts": 3, "embedding/self_trained_words": 0}


def test_a_vector_file_wins_over_the_default_self_trained_vectors(workdir):
    (workdir / "v.txt").write_text("2 2\ngreat 0.5 0.5\nfilm -0.5 0.5\n", encoding="utf-8")
    config = file_config(corpus(workdir), f"model.pretrained_embeddings={workdir / 'v.txt'}", "model.embedding_dim=2",
                         folds=None)
    prepared = data.prepare(config.data)
    assert config.model.self_trained_vectors  # still the default, and the file is what the embedding starts from
    vectors = embeddings.for_run(config.model, prepared, seed=config.seed)
    row = prepared.vocab.words.index("great") + 2  # ids 0 and 1: padding and out-of-vocabulary
    assert vectors.matrix[row].tolist() == [0.5, 0.5] and not vectors.tags
    assert "embedding/self_trained_texts" not in vectors.metrics
