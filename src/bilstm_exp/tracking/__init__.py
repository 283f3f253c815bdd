"""MLflow tracking, in four small modules (none knows about LSTMs):

    store     which store (URI resolution, checks, secrets), the experiment, batched logging, reading runs
    session   one run's lifecycle: signals, buffering and retries, offline fallback (a Session object)
    registry  the logged pyfunc model, its registered version and the ``champion`` alias
    callback  the Keras ``MLflowLogger`` (the only one that imports Keras)

This package's ``__init__`` imports nothing, so ``from bilstm_exp.tracking import store`` stays light.
"""
