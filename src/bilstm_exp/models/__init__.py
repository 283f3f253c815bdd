"""Models: embedding -> architecture (a registry) -> head, the fast LSTM kernel, optimizers.

Owns the architectures (one module each in architectures/), the attention layer, FastLSTM, word
vectors, the optimizer, schedule and clipping. May import: ``config``, ``data``, ``errors``.
Knows nothing of MLflow.
"""
