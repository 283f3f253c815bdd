"""Serving: the registered model as an MLflow pyfunc (raw text in, probability and label out).

May import: ``data`` (the vocabulary and tokenizer), ``errors``. Never ``tracking`` or ``training``.
"""
