"""tf.data pipelines: token-id splits -> right-padded batches, grouped by length into buckets.

TensorFlow is imported inside :func:`make_dataset` only, so the rest of ``data`` stays light.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from bilstm_exp.data.vocabulary import PAD_ID


def bucket_boundaries(lengths: np.ndarray, num_buckets: int) -> list[int]:
    """Boundaries at quantiles of the training lengths, so buckets hold similar counts.

    Equal-count buckets keep every bucket's batches full; equal-width buckets would leave the
    long tail with a few near-empty batches. Duplicates (many equal lengths) are dropped.
    """
    if num_buckets <= 1:
        return []
    qs = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:-1])
    return sorted({int(q) + 1 for q in qs})


LAST_BUCKET_STEP = 16  # the last bucket's padded length is rounded up to a multiple of this, less one


def closing_boundary(longest: int) -> int:
    """The last bucket's (exclusive) upper boundary: just above the longest text, rounded up to a multiple
    of LAST_BUCKET_STEP, so the folds of a cross-validation and the val/test splits, whose longest texts
    differ by a few tokens, share one padded length (one compiled loop) instead of one each."""
    return -(-(longest + 1) // LAST_BUCKET_STEP) * LAST_BUCKET_STEP


def make_dataset(sequences: list[np.ndarray], labels: np.ndarray, batch_size: int, *, padding: str,
                 max_length: int, boundaries: list[int] | None = None, longest: int | None = None,
                 shuffle: bool = False, seed: int = 0):
    """Right-padded batches (so the cuDNN LSTM kernel stays usable), prefetched.

    ``padding="bucket"`` groups texts of similar length into buckets and pads each bucket's texts to its
    upper boundary less one (the last bucket: :func:`closing_boundary`), so a run sees one sequence length
    per bucket: a compiled recurrent kernel (``model.kernel=fast``: XLA) is compiled once per bucket, not
    once per batch; a bucket's few texts past its last full batch may move up a bucket (:func:`assign`).
    ``padding="max"`` is one bucket, every text padded to ``max_length``. ``longest``: the longest text of
    all the splits sharing ``boundaries`` (default: this split's), so all close their last bucket alike.

    The texts are padded once, in NumPy, one array per bucket; tf.data then only moves whole rows of one
    width. ``shuffle``: each pass shuffles every bucket's texts and draws the buckets' batches in a random
    order (``sample_from_datasets``, weighted by their batch counts, so every batch comes once a pass); an
    unshuffled split goes bucket by bucket. A pass costs about a tenth of slicing, shuffling and bucketing
    the texts one by one in tf.data, and a new pipeline's first pass (a cross-validation's fold) costs what
    the later passes do: no cache to fill (benchmarks/pipeline_pass.md).
    """
    import tensorflow as tf

    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    labels = np.asarray(labels).astype(np.int32)
    if padding == "bucket" and len(lengths):
        bucket, widths = assign(lengths, _closed(boundaries or [], lengths, longest), batch_size)
    else:
        bucket, widths = np.zeros(len(lengths), dtype=np.int64), [max_length]
    parts, counts = [], []
    for index, width in enumerate(widths):
        rows = np.flatnonzero(bucket == index)
        if rows.size == 0:
            continue
        texts = right_padded([sequences[i] for i in rows], width)
        part = tf.data.Dataset.from_tensor_slices((texts, labels[rows]))
        if shuffle:
            part = part.shuffle(rows.size, seed=seed + index, reshuffle_each_iteration=True)
        parts.append(part.batch(batch_size))
        counts.append(-(-rows.size // batch_size))
    if not parts:  # no texts: no batches
        parts, counts = [tf.data.Dataset.from_tensor_slices((right_padded([], 1), labels)).batch(batch_size)], [0]
    if len(parts) == 1:
        ds = parts[0]
    elif shuffle:
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=[n / sum(counts) for n in counts], seed=seed,
                                                  rerandomize_each_iteration=True)
    else:
        ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
    # every pass has the same number of batches; declaring it lets Keras show progress and know the epoch
    # length from the first epoch (planned_padding counts the same from the lengths)
    return prefetched(ds.apply(tf.data.experimental.assert_cardinality(sum(counts))))


PREFETCH_BATCHES = 2


def prefetched(ds):
    """``ds`` prefetching PREFETCH_BATCHES batches, with tf.data's autotuning off.

    Batches come from arrays in memory: a fixed prefetch keeps the next ones ready. tf.data's autotuning
    (on by default) had nothing to tune here and stalled training: with it, 4-5 of 10 epochs of the
    default run began about 1.1 s late (up to 5 s), both cores idle, as Keras made the epoch's iterator
    (benchmarks/epoch_start.md)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def right_padded(sequences, width: int) -> np.ndarray:
    """``sequences`` as one int32 array, each row right-padded with PAD_ID to ``width``."""
    out = np.full((len(sequences), width), PAD_ID, dtype=np.int32)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def assign(lengths: np.ndarray, bounds: list[int], batch_size: int) -> tuple[np.ndarray, list[int]]:
    """Each text's bucket (an index into ``bounds``, closed above every length) and each bucket's width.

    A text goes to the bucket its length falls in, except a bucket's remainder: the texts past its last
    full batch would make a short batch, which costs a whole step (the recurrent kernel pads a short
    batch to the full size on a CPU, ``models.fast_lstm.pad_batches``; a step's fixed costs come with any
    batch). The longest of them move up to the next bucket where that pads fewer positions than the short
    batch would hold (``remainder x next width < batch size x width``), so most buckets end on a full batch
    and an epoch takes fewer steps (the default data: 55 -> 50). The last bucket keeps its short batch.
    """
    bucket, widths = np.searchsorted(bounds, lengths, side="right"), [b - 1 for b in bounds]
    for index in range(len(widths) - 1):
        rows = np.flatnonzero(bucket == index)
        remainder = rows.size % batch_size
        if remainder and remainder * widths[index + 1] < batch_size * widths[index]:
            bucket[rows[np.argsort(lengths[rows], kind="stable")[-remainder:]]] = index + 1
    return bucket, widths


def _closed(boundaries: list[int], lengths: np.ndarray, longest: int | None = None) -> list[int]:
    """The bucket boundaries of these lengths: the last bucket is closed above the longest text, this
    split's or ``longest`` if that is longer (:func:`closing_boundary`), so every text has a bucket. A
    bucket none of these texts falls in has no batches."""
    top = max(int(lengths.max()), longest or 0)
    return [b for b in boundaries if b <= top] + [closing_boundary(top)]


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


def planned_padding(lengths, batch_size: int, *, padding: str, max_length: int,
                    boundaries: list[int] | None = None, longest: int | None = None) -> PaddingStats:
    """What :func:`padding_stats` counts in a pass over :func:`make_dataset`'s batches, from the lengths
    alone: a bucketed text is padded to its bucket's width (:func:`assign`), a
    padded-to-max one to ``max_length``. No pass over the data (each run of a cross-validation saves one)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = int(lengths.sum())
    if padding == "bucket":
        bucket, widths = assign(lengths, _closed(boundaries or [], lengths, longest), batch_size)
        total = int(np.asarray(widths)[bucket].sum())
        batches = int(sum(-(-count // batch_size) for count in np.bincount(bucket)))
    else:
        total, batches = len(lengths) * max_length, -(-len(lengths) // batch_size)
    return PaddingStats(1.0 - real / total if total else 0.0, real, batches)
