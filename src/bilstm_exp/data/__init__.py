"""Data: raw source -> stratified split (or folds) -> vocabulary -> token ids -> tf.data batches.

Owns the data sources (synthetic, csv/tsv/parquet/jsonl files, the tweets, imdb), splits and folds,
the vocabulary and tf.data batching. May import: ``config``, ``errors``. Knows nothing of MLflow.
"""
