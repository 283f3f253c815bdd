"""MLflow tracking (no module knows about LSTMs). Owns, lowest layer first:

    redaction, lineage   secrets masked in every value; git/DVC lineage tags (an MLflow context provider)
    retry                a busy store's errors told apart and retried with backoff and a deadline
    store, sqlite_file   which store (URI, checks), the experiment, batched logging, reading runs
    model_registry       the logged pyfunc model, its one version per run, the ``champion`` alias
    offline, runs        the local copy of a run whose server is down, `sync`; `runs --stale --close`
    datasets             a run's splits as MLflow datasets (the UI's Datasets column)
    ending               the one rule a run ends by (FINISHED, FAILED, KILLED), signals, liveness tags
    session              one run's lifecycle: every write of a run (single, sweep or CV parent) goes here
    callback             the Keras ``MLflowLogger`` (the only module here that imports Keras)
    register_command     `bilstm-exp register` (a run's model, after its store refused it) and `promote`

May import ``errors``, ``disk``, ``config`` and ``data``; never ``training``, ``stages`` or ``cli``. This
``__init__`` imports nothing, so ``from bilstm_exp.tracking import store`` stays light.
"""
