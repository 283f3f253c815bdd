"""Data: raw source -> checked split (or folds) -> vocabulary -> token ids -> tf.data batches.

Owns the data sources (a registry: synthetic, csv/tsv/parquet/jsonl files, the tweets, imdb) in
``sources``, reading user files with one-line errors in ``tables`` (also used by ``predict``),
splits and folds in ``splits``, the vocabulary in ``vocabulary``, the two-step preparation (check,
then prepare) in ``prepare`` and tf.data batching in ``batching``. May import: ``config``,
``errors``. Knows nothing of MLflow; only ``batching`` imports TensorFlow.
"""
