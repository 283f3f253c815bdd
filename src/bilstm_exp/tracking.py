"""MLflow tracking: store set-up, run lifecycle, per-epoch logging, model logging and registry.

Nothing here knows about LSTMs: it records whatever the training loop hands it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bilstm_exp import offline
from bilstm_exp.config import TrackingConfig
from bilstm_exp.errors import TrackingError

SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM so the run can end KILLED, not stay RUNNING."""


# --------------------------------------------------------------------------- store


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


# --------------------------------------------------------------------------- run lifecycle


def check_resumable(run_id: str) -> None:
    """The run to resume exists in the configured store and has not FINISHED."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(f"run {run_id} (from its checkpoint) is not in the tracking store "
                            f"{redact(mlflow.get_tracking_uri())}. Fix: resume with the store the run was "
                            f"tracked in (tracking.tracking_uri), or delete checkpoints/{run_id}/") from None
    if run.info.status == "FINISHED":
        raise TrackingError(f"run {run_id} has already FINISHED. Fix: start a new run without training.resume, "
                            f"or delete checkpoints/{run_id}/")



@contextmanager
def run(experiment_id: str, run_name: str | None = None, tags: dict[str, str] | None = None,
        parent_run_id: str | None = None, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that always ends: FINISHED, FAILED (exception, tag ``error``) or KILLED
    (Ctrl-C or SIGTERM). SIGTERM is turned into :class:`Terminated` for the duration.

    ``run_id`` reopens an existing (KILLED or FAILED) run, to resume it. Logging goes through a
    :class:`Connection`: a server that goes down mid-run does not stop training (see there)."""

    signals: list[str] = []  # the interrupts received; they decide KILLED even when a library
    # wrapped the KeyboardInterrupt in an exception of its own on the way up

    def on_sigterm(signum, frame):
        signals.append("terminated")
        raise Terminated("SIGTERM")

    def on_sigint(signum, frame):
        signals.append("interrupted")
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.signal(signal.SIGINT, on_sigint)
    global _connection
    outer = _connection
    with short_http_retries():
        if run_id is not None:
            active = mlflow.start_run(run_id=run_id)
        else:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags,
                                      parent_run_id=parent_run_id)
        _connection = connection = Connection(mlflow.get_tracking_uri(), active)
        try:
            yield active
        except BaseException as error:
            if signals or _caused_by_interrupt(error):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                reason = signals[0] if signals else (
                    "terminated" if _caused_by_interrupt(error, Terminated) else "interrupted")
                connection.end("KILLED", {"failure_reason": reason})
            else:
                connection.end("FAILED", {"error": f"{type(error).__name__}: {error}"[:1000],
                                          "failure_reason": getattr(error, "failure_reason", "exception")})
            raise
        else:
            connection.end("FINISHED")
        finally:
            _connection = outer
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def _caused_by_interrupt(error: BaseException, kind: type[BaseException] = KeyboardInterrupt) -> bool:
    """True when ``error`` is, or was raised while handling, an interrupt of ``kind``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


# --------------------------------------------------------------------------- a server that goes down

# In-run HTTP retries: a down server costs seconds per attempt, not MLflow's default ~4 minutes.
# Values the user has set in the environment win.
RUN_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
RETRY_INTERVAL_S = 10.0  # while the server is down, buffered logging is retried at most this often
SETTLE_ATTEMPTS, SETTLE_WAIT_S = 3, 5.0  # before the results: tries to reach the server, and the wait between

_connection: Connection | None = None


@contextmanager
def short_http_retries() -> Iterator[None]:
    added = {k: v for k, v in RUN_HTTP_RETRIES.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class Connection:
    """The active run's link to its store, with a journal of everything logged.

    A logging call that fails because the server is unreachable (its ``/health`` does not answer)
    is buffered; training goes on, and the buffer is delivered, in order, on a later call once the
    server answers again (tried at most every :data:`RETRY_INTERVAL_S`). Before the results are
    recorded, :meth:`settle` tries a few more times; if the server is still down, the run continues
    in a local store (:mod:`bilstm_exp.offline`) that holds everything logged so far, and its end
    prints the `bilstm-exp sync` command that uploads it. Errors from a reachable store (a rejected
    value, a local sqlite file) are raised as before.
    """

    def __init__(self, uri: str, active: mlflow.ActiveRun):
        self.uri, self.run_id = uri, active.info.run_id
        self.experiment_id = active.info.experiment_id
        experiment = MlflowClient(uri).get_experiment(self.experiment_id)
        self.journal = offline.Journal(experiment.name, active.info.run_name, active.info.start_time,
                                       params=dict(active.data.params), tags=dict(active.data.tags))
        self.pending: list[tuple[list[Param], list[Metric], list[RunTag]]] = []
        self.next_try = 0.0
        self.down = False
        self.offline_folder: Path | None = None
        self.offline_uri: str | None = None
        self.offline_run_id: str | None = None

    @property
    def run_ids(self) -> set[str]:
        return {self.run_id, self.offline_run_id} - {None}

    @property
    def is_http(self) -> bool:
        return urllib.parse.urlsplit(self.uri).scheme in ("http", "https")

    def reachable(self) -> bool:
        if not self.is_http:
            return True
        import requests

        try:
            return requests.get(self.uri.rstrip("/") + "/health", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    def log_batch(self, params: list[Param] = (), metrics: list[Metric] = (), tags: list[RunTag] = ()) -> None:
        params, metrics, tags = list(params), list(metrics), list(tags)
        self.journal.add(params, metrics, tags)
        if self.offline_uri:
            offline.replay(MlflowClient(self.offline_uri), self.offline_run_id,
                           offline.Journal("", None, 0, {p.key: p.value for p in params}, metrics,
                                           {t.key: t.value for t in tags}))
            return
        self.pending.append((params, metrics, tags))
        if time.monotonic() >= self.next_try:
            self.flush()

    def flush(self) -> bool:
        """Deliver the buffered requests in order; False when the server is unreachable."""
        client = MlflowClient(self.uri)
        try:
            while self.pending:
                params, metrics, tags = self.pending[0]
                for start in range(0, len(params), 100):
                    client.log_batch(self.run_id, params=params[start:start + 100], synchronous=True)
                for start in range(0, len(metrics), 1000):
                    client.log_batch(self.run_id, metrics=metrics[start:start + 1000], synchronous=True)
                if tags:
                    client.log_batch(self.run_id, tags=tags, synchronous=True)
                self.pending.pop(0)
        except Exception:
            if self.reachable():
                raise
            if not self.down:
                _warn(f"tracking server {redact(self.uri)} is unreachable; training continues, logging is "
                      f"buffered and retried every {RETRY_INTERVAL_S:.0f} s")
            self.down, self.next_try = True, time.monotonic() + RETRY_INTERVAL_S
            return False
        if self.down:
            _warn(f"tracking server {redact(self.uri)} is reachable again; buffered logging delivered")
        self.down = False
        return True

    def settle(self) -> None:
        """Before recording results: deliver the buffer, or continue offline if the server stays down."""
        if self.offline_uri or not self.is_http:
            return
        for attempt in range(SETTLE_ATTEMPTS):
            if self.reachable() and self.flush():
                return
            if attempt + 1 < SETTLE_ATTEMPTS:
                time.sleep(SETTLE_WAIT_S)
        self.go_offline()

    def resilient(self, record):
        """``record()``; if it fails because the server went down, continue offline and record again
        (``record`` must be repeatable: artifacts and models, not metrics)."""
        try:
            return record()
        except Exception:
            if self.offline_uri or self.reachable():
                raise
        self.go_offline()
        return record()

    def go_offline(self) -> None:
        """Continue the run in a local store holding everything logged so far."""
        if self.offline_uri:
            return
        folder = Path.cwd() / offline.FOLDER / self.run_id
        self.offline_uri, self.offline_run_id = offline.create(folder, self.journal, redact(self.uri), self.run_id)
        self.offline_folder = folder
        self.pending.clear()
        run = MlflowClient(self.offline_uri).get_run(self.offline_run_id)
        from mlflow.tracking import fluent  # the fluent API (log_artifact, log_model) now writes there

        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == self.run_id:
            stack[-1] = mlflow.ActiveRun(run)
        mlflow.set_tracking_uri(self.offline_uri)
        _warn(f"tracking server {redact(self.uri)} is still unreachable; the run continues in {folder}")

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        if tags:
            self.log_batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if not self.offline_uri and not self.flush():
            self.go_offline()
        if not self.offline_uri:
            try:
                mlflow.end_run(status)
                return
            except Exception:
                if self.reachable():
                    raise
                self.go_offline()
        from mlflow.tracking import fluent

        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id in self.run_ids:
            stack.pop()
        MlflowClient(self.offline_uri).set_terminated(self.offline_run_id, status)
        mlflow.set_tracking_uri(self.uri)
        _warn(f"run {self.run_id} ended {status} and is kept in {self.offline_folder} because the tracking server "
              f"was unreachable. Upload it when the server is back:\n    "
              f"{offline.sync_command_line(self.offline_folder, redact(self.uri))}")


def _warn(message: str) -> None:
    print(f"bilstm-exp: warning: {message}", file=sys.stderr, flush=True)


def settle() -> None:
    """Deliver what the active run has buffered; if its server stays down, continue it offline."""
    if _connection is not None:
        _connection.settle()


def resilient(record):
    """Run ``record()`` (artifact and model logging) so that a server lost meanwhile sends it offline."""
    return record() if _connection is None else _connection.resilient(record)


def _send(run_id: str | None, params: list[Param] = (), metrics: list[Metric] = (),
          tags: list[RunTag] = ()) -> None:
    """One run's logging: through the active run's connection, or straight to the store."""
    run_id = run_id or mlflow.active_run().info.run_id
    if _connection is not None and run_id in _connection.run_ids:
        _connection.log_batch(params, metrics, tags)
        return
    client = MlflowClient()
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100], synchronous=True)
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000], synchronous=True)
    if tags:
        client.log_batch(run_id, tags=list(tags), synchronous=True)


PARAM_MAX_CHARS = 250


def param_value(value: Any) -> str:
    """The one rule for long values: at most 250 characters, cut ones end in '...[cut]'
    (the full value is in the run's config.yaml artifact)."""
    text = str(value)
    return text if len(text) <= PARAM_MAX_CHARS else text[: PARAM_MAX_CHARS - 8] + "...[cut]"


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log params in batches of 100 (MLflow's request limit), dropping anything secret."""
    _send(run_id, params=[Param(k, param_value(v)) for k, v in params.items() if not is_secret(k, v)])


def log_metrics(metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """One batched request per call (up to 1,000 metrics), never one request per metric."""
    now = int(time.time() * 1000)
    _send(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])


def log_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    _send(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# --------------------------------------------------------------------------- Keras callback


def metric_name(keras_key: str) -> str:
    """Keras log keys -> stable MLflow names: loss -> train/loss, val_auc -> val/auc,
    grad_norm_mean -> grad/global_norm_mean; keys that already hold a '/' pass through."""
    if "/" in keras_key:
        return keras_key
    if keras_key.startswith("grad_norm_"):
        return "grad/global_" + keras_key[len("grad_"):]
    if keras_key.startswith("grad_"):
        return "grad/" + keras_key[len("grad_"):]
    if keras_key.startswith("val_"):
        return "val/" + keras_key[len("val_"):]
    if keras_key == "learning_rate":
        return "lr"
    return "train/" + keras_key


class MLflowLogger(keras.callbacks.Callback):
    """Logs every epoch's Keras logs to MLflow in one batched request (step = epoch index).

    Works with any ``model.fit``: ``model.fit(..., callbacks=[MLflowLogger()])`` inside an active
    MLflow run. Callbacks placed before it may add entries (e.g. ``time/epoch_s``) to ``logs``;
    they are logged in the same request. Also logs the optimizer's current learning rate as ``lr``.
    """

    def __init__(self, run_id: str | None = None):
        super().__init__()
        self.run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {metric_name(k): float(v) for k, v in (logs or {}).items()}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and "lr" not in metrics:
            metrics["lr"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        log_metrics(metrics, step=epoch, run_id=self.run_id)


# --------------------------------------------------------------------------- model


def log_model(python_model, artifacts: dict[str, str], signature, input_example) -> Any:
    """Log the pyfunc model with the package as code (portable: no install of bilstm-exp needed)."""
    import bilstm_exp

    package = Path(bilstm_exp.__file__).parent
    requirements = [f"{name}=={version}" for name, version in _versions(
        "mlflow", "tensorflow-cpu", "keras", "numpy", "pandas").items()]
    return mlflow.pyfunc.log_model(
        name="model", python_model=python_model, artifacts=artifacts, signature=signature,
        input_example=input_example, code_paths=[str(package)], pip_requirements=requirements)


@contextmanager
def registry_lock() -> Iterator[None]:
    """Serialise registry writes of parallel local runs (a sqlite store next to a lock file).

    Concurrent ``register_model`` calls can otherwise hand out duplicate version numbers and
    race on the champion alias. A server store is left to the server.
    """
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    with FileLock(uri[len("sqlite:///"):] + ".registry.lock", timeout=300):
        yield


def register(model_uri: str, name: str, run_id: str, metrics: dict[str, float], champion_metric: str,
             greater_is_better: bool = True) -> Any:
    """Register a model version, tag it, and move the ``champion`` alias to it only if it beats the
    current champion on ``champion_metric``. The decision and the delta become version tags, so
    the alias history is auditable in the registry.

    A run kept offline (its server down) registers nothing now: the wish is recorded and
    `bilstm-exp sync` registers the version when it uploads the run; returns None then."""
    if _connection is not None and _connection.offline_uri and run_id in _connection.run_ids:
        log_tags({offline.REGISTER_TAG: name, offline.CHAMPION_TAG: champion_metric,
                  offline.GREATER_TAG: str(greater_is_better).lower()}, run_id)
        return None
    client = MlflowClient()
    with registry_lock():
        version = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
        value = metrics.get(champion_metric)
        tags = {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()
                if k.startswith(("val/", "test/")) and isinstance(v, float)}
        try:
            current = client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            current = None
        best = None if current is None else _version_metric(client, current, champion_metric)
        if value is None:
            decision, reason = "kept", f"run has no {champion_metric}"
        elif best is None:
            decision, reason = "promoted", "first version with this metric"
        else:
            better = value > best if greater_is_better else value < best
            decision = "promoted" if better else "kept"
            reason = f"{champion_metric} {value:.6g} vs champion v{current.version} {best:.6g}"
            tags["champion.delta"] = f"{value - best:+.6g}"
            tags["champion.previous_version"] = str(current.version)
        tags.update({"champion.decision": decision, "champion.reason": reason, "champion.metric": champion_metric})
        for key, text in tags.items():
            client.set_model_version_tag(name, version.version, key, text)
        if decision == "promoted":
            client.set_registered_model_alias(name, "champion", version.version)
    return version


def _version_metric(client: MlflowClient, version, metric: str) -> float | None:
    try:
        return client.get_run(version.run_id).data.metrics.get(metric)
    except MlflowException:
        return None


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
