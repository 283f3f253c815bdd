"""The team tracking server: PostgreSQL + ``mlflow server`` with basic auth, its users and its CLI.

May import: ``errors``. It runs MLflow as a separate process and never imports the training code.
"""
