"""The team tracking server: PostgreSQL + ``mlflow server`` with basic auth, its users and its CLI.

``common`` (host, role, ServerError, private files), ``run_as`` (the privilege drop PostgreSQL needs under
root), ``postgres`` (the cluster), ``mlflow_server`` (the process), ``server`` (both together: start,
attach, stop), ``users`` (users and grants), ``cli`` (``bilstm-exp server``), ``optuna_storage`` (the
shared Optuna study database).

May import: ``errors`` and ``extras``. It runs MLflow as a separate process and never imports the training code.
"""
