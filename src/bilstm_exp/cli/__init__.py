"""``bilstm-exp`` and ``python -m bilstm_exp``: the subcommands and the one error boundary.

The top layer: may import every package, lazily, so ``--help`` and usage errors load neither MLflow
nor TensorFlow.
"""
