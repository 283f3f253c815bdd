"""bilstm-exp's Optuna sweeper: Hydra's ``Sweeper`` interface on a current Optuna (>= 4).

``hydra-optuna-sweeper`` 1.3 pins ``optuna<3``; this plugin keeps its config syntax
(``hydra/sweeper=optuna``, ``hydra.sweeper.params`` with ``choice``/``interval``/``range``/
``tag(log, ...)``, ``direction``, ``n_trials``, ``n_jobs``, ``storage``, ``study_name``, the
``hydra/sweeper/sampler`` group) on Optuna's public ask-and-tell API, and adds ``objectives`` for
multi-objective searches. ``config`` registers the configs (Hydra imports it while scanning its
plugins); ``sweeper`` holds the plugin and imports Optuna only when a sweep starts.
"""
