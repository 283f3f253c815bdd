"""The tracking store: which URI, is it reachable, which experiment, and the one batched-logging helper.

No Keras and no TensorFlow here: `bilstm-exp sync`, `compare` and the Hydra sweep callback use it.
MLflow itself (about a second to import) is imported where a function first needs it, so bad input
that is caught before the store is opened (a data file, a credential in a URI, an argparse error)
answers in half a second.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bilstm_exp import disk
from bilstm_exp.config.run_schema import TrackingConfig
from bilstm_exp.disk import DiskFull
from bilstm_exp.errors import TrackingError, UserError
from bilstm_exp.tracking import sqlite_file
from bilstm_exp.tracking.redaction import SECRET_WORDS, has_credentials, is_secret, redact, redact_text, scrub  # noqa: F401
from bilstm_exp.tracking.sqlite_file import sqlite_path, store_lock

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

# MLflow's per-request limits (log_batch)
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 100
PARAM_MAX_CHARS = 250


# --------------------------------------------------------------------------- secrets


def check_credentials(uri: str, where: str = "the tracking URI") -> None:
    """Refuse a URI that embeds credentials: MLflow prints the tracking URI ("View run at ..."), so
    they would land in logs. The fix names the environment variables MLflow reads instead."""
    if has_credentials(uri):
        raise TrackingError(f"{where} holds credentials ({redact(uri)}). Fix: remove them from the URI and put "
                            "them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or "
                            "MLFLOW_TRACKING_TOKEN")


def masked_config(config: Any) -> dict[str, Any]:
    """The validated config as nested dicts, safe to record (params, config.yaml, params.yaml):
    values from the environment as their ``${oc.env:NAME}`` text, secrets and credentials masked."""
    from bilstm_exp.config.plain import to_dict

    return scrub(to_dict(config), config.env_refs)


def param_value(value: Any) -> str:
    """The one rule for long values: at most 250 characters, cut ones end in '...[cut]'
    (the full value is in the run's config.yaml artifact)."""
    text = str(value)
    return text if len(text) <= PARAM_MAX_CHARS else text[: PARAM_MAX_CHARS - 8] + "...[cut]"


# --------------------------------------------------------------------------- batched logging


def as_params(params: dict[str, Any]) -> list[Param]:
    """Params for MLflow: values cut to 250 characters, anything secret dropped, environment values and
    credentials in text masked (:func:`bilstm_exp.tracking.redaction.redact_text`)."""
    from mlflow.entities import Param

    return [Param(k, param_value(redact_text(str(v)))) for k, v in params.items() if not is_secret(k, v)]


def as_metrics(metrics: dict[str, float], step: int | None = None) -> list[Metric]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]


def as_tags(tags: dict[str, Any]) -> list[RunTag]:
    """Tags for MLflow, credentials and environment values masked (the same rule as params)."""
    from mlflow.entities import RunTag

    return [RunTag(k, redact_text(str(v))) for k, v in tags.items()]


def log_batch(client: MlflowClient, run_id: str, params: Iterable[Param] = (), metrics: Iterable[Metric] = (),
              tags: Iterable[RunTag] = ()) -> None:
    """The one way this project writes to a run: synchronous ``log_batch`` requests within MLflow's
    limits (100 params, 1,000 metrics, 100 tags each), never one request per value."""
    params, metrics, tags = list(params), list(metrics), list(tags)
    for start in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=params[start:start + MAX_PARAMS], synchronous=True)
    for start in range(0, len(metrics), MAX_METRICS):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS], synchronous=True)
    for start in range(0, len(tags), MAX_TAGS):
        client.log_batch(run_id, tags=tags[start:start + MAX_TAGS], synchronous=True)


# --------------------------------------------------------------------------- the store


def default_uri(root: Path) -> str:
    """The embedded default store: ``mlflow.db`` in ``root`` (artifacts in ``root/mlartifacts``)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def resolve_uri(cfg: TrackingConfig, root: Path) -> str:
    """MLflow's own precedence, for every command: an explicit ``tracking.tracking_uri`` (or a
    command's ``--tracking-uri``) > ``MLFLOW_TRACKING_URI`` > ``root/mlflow.db``. ``tracking=server``
    has no default: it needs one of the first two. A URI with credentials in it is refused."""
    if cfg.tracking_uri:
        check_credentials(cfg.tracking_uri, "tracking.tracking_uri")
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if cfg.name == "server":
        raise TrackingError("tracking=server needs a server URI. Fix: set MLFLOW_TRACKING_URI "
                            "or tracking.tracking_uri=http://127.0.0.1:5000")
    return default_uri(root)


def is_http(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def shown_uri(uri: str) -> str:
    """The URI as a person should read and paste it: credentials removed, a sqlite file as an absolute
    path (``sqlite:////home/me/project/mlflow.db``), which opens the same store from any folder."""
    uri = redact(uri)
    db = sqlite_path(uri)
    return uri if db is None else f"sqlite:///{Path(urllib.parse.unquote(str(db))).resolve()}"


def reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """A server answers its /health; a local store is always 'reachable'."""
    if not is_http(uri):
        return True
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def check_store(uri: str, timeout_s: float = 5.0, write: bool = True) -> None:
    """Fail fast, naming the URI, when the store cannot be used: credentials in the URI, a server that
    does not answer its /health within ``timeout_s``, a sqlite file that is corrupt, damaged or
    (``write``) read-only. Creates and migrates a new local store, one process at a time
    (:func:`store_lock`); reading an existing one takes no lock, so a read-only store can be read."""
    check_credentials(uri)
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as error:
            reason = type(error).__name__
            raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable ({reason}). Fix: start "
                                "it (mlflow server --host 127.0.0.1 --port 5000), correct the URI, "
                                "or use tracking=local") from None
        return
    db = sqlite_path(uri)
    if db is not None:
        sqlite_file.check_file(db, uri, write)
    from mlflow.tracking import MlflowClient

    try:  # creates and migrates a new store, once; reading an existing one needs no lock (a read-only store)
        with store_lock(uri) if write or db is None or not db.exists() else contextlib.nullcontext():
            MlflowClient(uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as error:  # MlflowException, or SQLAlchemy's own errors
        first = (getattr(error, "message", None) or str(error) or type(error).__name__).splitlines()[0]
        raise TrackingError(f"tracking store {redact(uri)} cannot be opened: {first[:300]}. "
                            "Fix: check the URI, or use tracking=local") from None


def preflight(uri: str, experiment_name: str) -> None:
    """Every check of :func:`check_store` and :func:`setup` that creates nothing, for before the data
    is read: credentials, a down server, a corrupt or read-only sqlite file, a deleted experiment of
    that name (an existing local store is opened, a missing one is left for :func:`setup` to create)."""
    check_credentials(uri)
    db = sqlite_path(uri)
    if db is None:
        check_store(uri)
    else:
        sqlite_file.check_file(db, uri, write=True)
        if not db.is_file():
            return
        check_store(uri)
    from mlflow.tracking import MlflowClient

    _experiment(MlflowClient(uri), experiment_name, uri)


def existing_store(explicit: str | None = None) -> str:
    """The store a command that reads runs or models uses (predict, runs, compare): ``explicit``
    (--tracking-uri), else MLFLOW_TRACKING_URI, else ./mlflow.db; a sqlite store must already exist
    (opening a missing one would create an empty store and report nothing useful)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    db = sqlite_path(uri)
    if db is not None and db.is_dir():
        raise sqlite_file.not_a_file(db, uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no MLflow store at {db} (tracking URI {uri}). Fix: run in the folder you trained in, "
                            "or pass --tracking-uri sqlite:///PATH/mlflow.db or a server URI")
    return uri


def open_store(uri: str, write: bool = False) -> MlflowClient:
    """A client for a store checked by :func:`check_store`, with short HTTP retries for the rest of the
    process (one-shot commands that read runs or models: compare, predict, runs, sync): a server that
    is down fails within seconds, naming the URI, instead of after MLflow's ~4 minutes of retries."""
    check_store(uri, write=write)
    for key, value in RUN_HTTP_RETRIES.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _experiment(client: MlflowClient, name: str, uri: str):
    """The experiment named ``name`` if it is active; a deleted one is refused with the fix."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        target = f" --backend-store-uri {redact(uri)}" if not is_http(uri) else ""
        raise TrackingError(f"experiment '{redact_text(name)}' (id {experiment.experiment_id}) is deleted in the "
                            f"tracking store {redact(uri)}, and a new one cannot reuse its name. Fix: restore it "
                            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}), remove it for "
                            f"good (mlflow gc{target} --experiment-ids {experiment.experiment_id}), or set another "
                            "tracking.experiment_name")
    return experiment


def setup(cfg: TrackingConfig, root: Path) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(cfg, root)
    check_store(uri)
    disk.silence_library_reports()  # a full store is said in one line, not in MLflow's traceback too
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = _experiment(client, cfg.experiment_name, uri)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / "mlartifacts").resolve().as_uri() if uri == default_uri(root) else None
    try:
        with store_lock(uri):
            return client.create_experiment(cfg.experiment_name, artifact_location=location)
    except MlflowException as error:
        experiment = _experiment(client, cfg.experiment_name, uri)  # created by a parallel server run meanwhile?
        if experiment is not None:
            return experiment.experiment_id
        shown = redact_text(cfg.experiment_name)[:80] + ("..." if len(cfg.experiment_name) > 80 else "")
        raise TrackingError(f"tracking.experiment_name: MLflow refuses the name '{shown}' "
                            f"({error.message.splitlines()[0][:200]})."
                            " Fix: pick a shorter plain name, e.g. tracking.experiment_name=bilstm-exp") from None


# In-run HTTP retries: a down server costs seconds per attempt, not MLflow's default ~4 minutes.
# Values the user has set in the environment win.
RUN_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextmanager
def short_http_retries() -> Iterator[None]:
    added = {k: v for k, v in RUN_HTTP_RETRIES.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# --------------------------------------------------------------------------- a full disk


def store_full(uri: str, run_id: str) -> DiskFull:
    """The one line of a run whose store cannot record its end because the store's disk is full."""
    db = sqlite_path(uri)
    place = disk.where(db) if db is not None else redact(uri)
    return DiskFull(f"the tracking store cannot be written, its disk is full: {place}; run {run_id} is left "
                    "RUNNING (its last checkpoint, if any, is kept). Fix: free space there, then end the run with "
                    "`bilstm-exp runs --stale --close`, or continue it with the same overrides plus "
                    "training.resume=true")


@contextmanager
def ending_on_a_full_disk(uri: str, run_id: str, error: BaseException) -> Iterator[None]:
    """Around ending a run FAILED after ``error``. When the store's disk is full the end cannot be
    recorded: the run is left RUNNING (MLflow forgets it as its active run, so its exit hook cannot end
    it FINISHED later) and :func:`store_full` says so. A full disk elsewhere (artifacts, a checkpoint)
    after which the run did end FAILED becomes one line naming what is full."""
    try:
        yield
    except Exception as end_error:
        if not disk.is_full(end_error):
            raise
        forget_active_run({run_id})
        raise store_full(uri, run_id) from error
    if disk.is_full(error) and not isinstance(error, UserError):
        db = sqlite_path(uri)
        full = disk.full_path(error) or (str(db) if db is not None else "a file the run was writing")
        raise DiskFull(f"no space left on device for {disk.where(full)}; run {run_id} ended FAILED. Fix: free "
                       "space there and start the run again") from error


def forget_active_run(run_ids: set[str]) -> None:
    """MLflow's fluent API no longer holds one of ``run_ids`` as its active run (it has no public call
    for a run it must not end)."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id in run_ids:
        stack.pop()


# --------------------------------------------------------------------------- reading runs

# Tags a run's session writes and `bilstm-exp runs --stale` reads
HEARTBEAT_TAG = "bilstm_exp.heartbeat"  # UTC time of the last epoch logged (ISO 8601)
HOST_TAG, PID_TAG = "bilstm_exp.host", "bilstm_exp.pid"  # where the run's process lives


def child_runs(client: MlflowClient, parent_run_id: str) -> list:
    """All child runs of a parent run (a sweep's jobs), any status."""
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)


def history(client: MlflowClient, run, metric: str, before_step: int | None = None) -> list[float]:
    """The metric's values in step order (finite values only); with ``before_step``, only the steps before
    it (training logs the kept weights' ``val/*`` one step past the last epoch)."""
    points = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
    return [m.value for m in points if math.isfinite(m.value) and (before_step is None or m.step < before_step)]


def best_value(client: MlflowClient, run, metric: str, mode: str = "max") -> float | None:
    """Best value over the run's history (the best epoch), or None when the run did not log it."""
    values = history(client, run, metric)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def check_resumable(run_id: str | None, uri: str | None = None) -> None:
    """The run to resume (None: a new run, nothing to check) exists in the store at URI (default: the
    current one) and has not FINISHED."""
    if run_id is None:
        return
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or mlflow.get_tracking_uri()
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise TrackingError(f"run {run_id} (from its checkpoint) is not in the tracking store "
                            f"{redact(uri)}. Fix: resume with the store the run was "
                            f"tracked in (tracking.tracking_uri), or delete checkpoints/{run_id}/") from None
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(f"run {run_id} (from its checkpoint) is deleted in the tracking store "
                            f"{redact(uri)}. Fix: restore it (mlflow runs restore --run-id "
                            f"{run_id}) and resume again, or delete checkpoints/{run_id}/ and start a new run")
    if run.info.status == "FINISHED":
        raise TrackingError(f"run {run_id} has already FINISHED. Fix: start a new run without training.resume, "
                            f"or delete checkpoints/{run_id}/")
