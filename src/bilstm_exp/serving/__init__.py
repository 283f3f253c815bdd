"""Serving: the registered model as an MLflow pyfunc (raw text in, probability and label out) in
``model``, and `bilstm-exp predict` in ``predict``.

May import: ``data`` (the vocabulary, the tokenizer, the file readers), ``errors``; ``predict`` also
``tracking.store`` (to find and check the store it loads a model from). Never ``training``.
"""
