"""tf.data pipelines: token-id splits -> right-padded batches, grouped by length into buckets.

TensorFlow is imported inside :func:`make_dataset` only, so the rest of ``data`` stays light.
"""

from __future__ import annotations

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
                 max_length: int, boundaries: list[int] | None = None, shuffle: bool = False,
                 seed: int = 0):
    """Right-padded batches (so the cuDNN LSTM kernel stays usable), cached and prefetched.

    ``padding="bucket"`` groups texts of similar length (``bucket_by_sequence_length``) and pads
    each batch to its bucket's upper boundary (the last bucket: :func:`closing_boundary`), so a run sees
    one sequence length per bucket: a compiled recurrent kernel (``model.kernel=fast``: XLA) is
    compiled once per bucket, not once per batch. ``padding="max"`` pads every batch to ``max_length``.
    """
    import tensorflow as tf

    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    padded = np.zeros((len(sequences), max(lengths)), dtype=np.int32)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
    ds = (tf.data.Dataset.from_tensor_slices((padded, lengths, labels.astype(np.int32)))
          .map(lambda x, n, y: (x[:n], y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .cache())
    if shuffle:
        ds = ds.shuffle(len(sequences), seed=seed, reshuffle_each_iteration=True)
    if padding == "bucket":
        ds = _bucketed(ds, lengths, batch_size, boundaries or [])
    else:
        ds = ds.padded_batch(batch_size, padded_shapes=([max_length], []), padding_values=(PAD_ID, 0))
    # bucket membership depends only on length, so every pass has the same number of batches;
    # declaring it lets Keras show progress and know the epoch length from the first epoch
    planned = planned_padding(lengths, batch_size, padding=padding, max_length=max_length, boundaries=boundaries)
    return ds.apply(tf.data.experimental.assert_cardinality(planned.batches)).prefetch(tf.data.AUTOTUNE)


def _bucketed(ds, lengths: np.ndarray, batch_size: int, boundaries: list[int]):
    """``ds`` batched by length bucket, each batch padded to its bucket's boundary."""
    import tensorflow as tf

    bounds = _closed(boundaries, lengths)
    return ds.bucket_by_sequence_length(
        element_length_func=lambda x, y: tf.shape(x)[0],
        bucket_boundaries=bounds,
        bucket_batch_sizes=[batch_size] * (len(bounds) + 1),
        padded_shapes=([None], []),
        padding_values=(PAD_ID, 0),
        pad_to_bucket_boundary=True,
    )


def _closed(boundaries: list[int], lengths: np.ndarray) -> list[int]:
    """The bucket boundaries ``bucket_by_sequence_length`` gets: pad_to_bucket_boundary needs every length
    below the last boundary, so the last bucket is closed above the longest text."""
    return [b for b in boundaries if b <= int(lengths.max())] + [closing_boundary(int(lengths.max()))]


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
                    boundaries: list[int] | None = None) -> PaddingStats:
    """What :func:`padding_stats` counts in a pass over :func:`make_dataset`'s batches, from the lengths
    alone: a bucketed text is padded to its bucket's boundary less one (``pad_to_bucket_boundary``), a
    padded-to-max one to ``max_length``. No pass over the data (each run of a cross-validation saves one)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = int(lengths.sum())
    if padding == "bucket":
        bounds = np.asarray(_closed(boundaries or [], lengths))
        bucket = np.searchsorted(bounds, lengths, side="right")
        total = int((bounds[bucket] - 1).sum())
        batches = int(sum(-(-count // batch_size) for count in np.bincount(bucket)))
    else:
        total, batches = len(lengths) * max_length, -(-len(lengths) // batch_size)
    return PaddingStats(1.0 - real / total if total else 0.0, real, batches)
