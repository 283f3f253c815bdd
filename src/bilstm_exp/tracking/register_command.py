"""The registry by hand: `bilstm-exp register --run RUN_ID` registers a finished run's logged model
later; `bilstm-exp promote --model NAME --version N --reason TEXT` moves the champion alias.

For a run whose store refused its registration past the retries (tag ``registry.failed``: a sqlite
database that stayed locked under many concurrent runs, a server answering 5xx), or a run that was
not meant to register (a smoke run). It registers with the run's own settings (its params
``tracking.registered_model_name`` and champion metric) and decides on the ``champion`` alias as the
run would have; a run has at most one version, so registering twice changes nothing.
MLflow is imported when the command runs: `bilstm-exp --help` stays light.
"""

from __future__ import annotations

import argparse

from bilstm_exp.errors import TrackingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp register``."""
    parser.description = __doc__.split("\n\n")[1]
    parser.add_argument("--run", dest="run_id", required=True, help="the id of a FINISHED run that logged a model")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")


def command(args: argparse.Namespace) -> None:
    import mlflow

    from bilstm_exp.tracking import model_registry as registry
    from bilstm_exp.tracking import retry, store
    from bilstm_exp.tracking.session import Session

    uri = store.existing_store(args.tracking_uri)
    client = store.open_store(uri, write=True)
    run = _finished_run(client, args.run_id, store.redact(uri))
    model_uri = registry.logged_model_uri(client, run)
    if model_uri is None:
        raise TrackingError(f"run {args.run_id} logged no model (a sweep's or a cross-validation's parent run has "
                            "none). Fix: pass the id of a training run, e.g. the sweep's best_run_id tag")
    name, metric, greater = registry.configured(run)
    mlflow.set_tracking_uri(uri)  # mlflow.register_model writes to the fluent API's store
    version = retry.retrying(lambda: registry.register(client, model_uri, name, args.run_id,
                                                       dict(run.data.metrics), metric, greater))
    if registry.FAILED_TAG in run.data.tags:
        Session.attach(uri, args.run_id).forget_tags([registry.FAILED_TAG])
    tags = version.tags or {}
    print(f"run {args.run_id}: {name} version {version.version}, champion {tags.get('champion.decision', '?')} "
          f"({tags.get('champion.reason', '')})")


def _finished_run(client, run_id: str, where: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no run {run_id} in {where}. Fix: pass --run of a run in that store, or "
                            "--tracking-uri of the store the run was recorded in") from None
    if run.info.status != "FINISHED":
        raise TrackingError(f"run {run_id} ended {run.info.status}: only a FINISHED run's model is registered. "
                            "Fix: resume it (training.resume=true) or train it again")
    return run


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp promote``."""
    parser.add_argument("--model", required=True, help="registered model name, e.g. bilstm-sentiment")
    parser.add_argument("--version", required=True, type=int, help="the version to serve as champion")
    parser.add_argument("--reason", required=True, help="why (recorded as the version's champion.reason tag)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")


def promote_command(args: argparse.Namespace) -> None:
    """Move ``NAME@champion`` to the version, recording who (MLFLOW_TRACKING_USERNAME, else the login) and why."""
    import getpass
    import os

    from bilstm_exp.tracking import model_registry as registry
    from bilstm_exp.tracking import store

    client = store.open_store(store.existing_store(args.tracking_uri), write=True)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    version = registry.promote(client, args.model, args.version, args.reason, user)
    previous = version.tags.get("champion.previous_version", "none")
    print(f"{args.model}@{registry.CHAMPION} -> version {version.version} (was {previous}); promoted by {user}: "
          f"{args.reason.strip()}")
