"""The tracking store: which URI, is it reachable, which experiment, and the one batched-logging helper.

No Keras and no TensorFlow here: `bilstm-exp sync`, `compare` and the Hydra sweep callback use it.
"""

from __future__ import annotations

import math
import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bilstm_exp.config import TrackingConfig
from bilstm_exp.errors import TrackingError

SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")

# MLflow's per-request limits (log_batch)
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 100
PARAM_MAX_CHARS = 250


# --------------------------------------------------------------------------- secrets


def redact(uri: str) -> str:
    """The URI without user info and without secret-looking query values."""
    parts = urllib.parse.urlsplit(uri)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(any(w in k.lower() for w in SECRET_WORDS) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.urlencode([(k, "***" if any(w in k.lower() for w in SECRET_WORDS) else v)
                                    for k, v in pairs])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_secret(key: str, value: Any) -> bool:
    """True for a key that names a secret or a value that embeds credentials."""
    if any(word in key.lower() for word in SECRET_WORDS):
        return True
    return isinstance(value, str) and "://" in value and redact(value) != value


def param_value(value: Any) -> str:
    """The one rule for long values: at most 250 characters, cut ones end in '...[cut]'
    (the full value is in the run's config.yaml artifact)."""
    text = str(value)
    return text if len(text) <= PARAM_MAX_CHARS else text[: PARAM_MAX_CHARS - 8] + "...[cut]"


# --------------------------------------------------------------------------- batched logging


def as_params(params: dict[str, Any]) -> list[Param]:
    """Params for MLflow: values cut to 250 characters, anything secret dropped."""
    return [Param(k, param_value(v)) for k, v in params.items() if not is_secret(k, v)]


def as_metrics(metrics: dict[str, float], step: int | None = None) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]


def as_tags(tags: dict[str, Any]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in tags.items()]


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


def resolve_uri(cfg: TrackingConfig, root: Path) -> str:
    if cfg.name == "local":
        return cfg.tracking_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise TrackingError("tracking=server needs a server URI. Fix: set MLFLOW_TRACKING_URI "
                            "or tracking.tracking_uri=http://127.0.0.1:5000")
    if cfg.tracking_uri and redact(cfg.tracking_uri) != cfg.tracking_uri:
        raise TrackingError(f"tracking.tracking_uri holds credentials ({redact(uri)}). Fix: put them in "
                            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    return uri


def is_http(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """A server answers its /health; a local store is always 'reachable'."""
    if not is_http(uri):
        return True
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when the store cannot be reached. Creates a local store."""
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
    if scheme == "sqlite":
        db = Path(urllib.parse.urlsplit(uri).path[1:] if uri.startswith("sqlite:////") else uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise TrackingError(f"tracking store {uri}: folder {db.parent} does not exist. "
                                "Fix: create it or point tracking.tracking_uri elsewhere")
    try:
        MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates a new store once
    except MlflowException as error:
        raise TrackingError(f"tracking store {redact(uri)} cannot be opened: {error.message.splitlines()[0]}. "
                            "Fix: check the URI, or use tracking=local") from None


def setup(cfg: TrackingConfig, root: Path) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    uri = resolve_uri(cfg, root)
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / "mlartifacts").resolve().as_uri() if cfg.name == "local" and not cfg.tracking_uri else None
    try:
        return client.create_experiment(cfg.experiment_name, artifact_location=location)
    except MlflowException:  # created by a parallel process in between
        return client.get_experiment_by_name(cfg.experiment_name).experiment_id


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


# --------------------------------------------------------------------------- reading runs


def child_runs(client: MlflowClient, parent_run_id: str) -> list:
    """All child runs of a parent run (a sweep's jobs), any status."""
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)


def history(client: MlflowClient, run, metric: str) -> list[float]:
    """The metric's values in step order (finite values only)."""
    points = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
    return [m.value for m in points if math.isfinite(m.value)]


def best_value(client: MlflowClient, run, metric: str, mode: str = "max") -> float | None:
    """Best value over the run's history (the best epoch), or None when the run did not log it."""
    values = history(client, run, metric)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def check_resumable(run_id: str) -> None:
    """The run to resume exists in the current store and has not FINISHED."""
    import mlflow

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(f"run {run_id} (from its checkpoint) is not in the tracking store "
                            f"{redact(mlflow.get_tracking_uri())}. Fix: resume with the store the run was "
                            f"tracked in (tracking.tracking_uri), or delete checkpoints/{run_id}/") from None
    if run.info.status == "FINISHED":
        raise TrackingError(f"run {run_id} has already FINISHED. Fix: start a new run without training.resume, "
                            f"or delete checkpoints/{run_id}/")
