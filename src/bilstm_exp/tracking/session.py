"""One MLflow run's lifecycle: start, log, survive a server outage, end with an honest status.

    with Session.start(experiment_id, run_name="basic-adam", tags={...}) as session:
        session.log_params({...})
        session.log_metrics({"val/loss": 0.4}, step=0)
        session.settle()                                 # before the results: server still down? go offline
        session.resilient(lambda: mlflow.log_artifact(...))

The run always ends: FINISHED, FAILED (an exception; tags ``error`` and ``failure_reason``) or
KILLED (Ctrl-C or SIGTERM; SIGTERM becomes :class:`Terminated` while the session is open).

A logging call that fails because the server is unreachable (its ``/health`` does not answer) is
buffered; training goes on, and the buffer is delivered in order on a later call once the server
answers (tried at most every :data:`RETRY_INTERVAL_S`). Before the results are recorded,
:meth:`Session.settle` tries a few more times; if the server is still down the run continues in a
local store (:mod:`bilstm_exp.tracking.offline`) holding everything logged so far, and its end prints the
`bilstm-exp sync` command that uploads it. Errors from a reachable store are raised as they are.

Honest records (issue 12):

* every epoch's logging also sets the tag ``bilstm_exp.heartbeat`` (UTC time), and the run carries
  ``bilstm_exp.host`` / ``bilstm_exp.pid``: a run a ``kill -9`` left RUNNING is found and closed KILLED
  by ``bilstm-exp runs --stale --close`` (:mod:`bilstm_exp.tracking.runs`);
* registration and the run's end are one step for signals: a Ctrl-C or SIGTERM arriving meanwhile
  is deferred (the run ends FINISHED with its one complete version, and a warning says so); a
  registration that fails midway deletes the version it created, so a FAILED or KILLED run has none;
* a resumed run that finishes loses the ``error`` / ``failure_reason`` tags of its interruption
  (kept as ``resumed_after``); an exception marked ``keeps_status`` (a corrupt checkpoint found
  while resuming) leaves the run's status as it was;
* an interrupt leaving the session carries the run id (``interrupt.run_id``) for the CLI's message.

The session is an object the caller passes around; there is no module-level "current run".
No Keras or TensorFlow here.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bilstm_exp.errors import TrackingError
from bilstm_exp.tracking import model_registry as registry
from bilstm_exp.tracking import offline, store
from bilstm_exp.tracking.store import HEARTBEAT_TAG, HOST_TAG, PID_TAG

RETRY_INTERVAL_S = 10.0  # while the server is down, buffered logging is retried at most this often
SETTLE_ATTEMPTS, SETTLE_WAIT_S = 3, 5.0  # before the results: tries to reach the server, and the wait between

T = TypeVar("T")

FAILURE_TAGS = ("error", "failure_reason")  # cleared when a resumed run finishes


def heartbeat() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_tags() -> dict[str, str]:
    return {HEARTBEAT_TAG: heartbeat(), HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM so the run can end KILLED, not stay RUNNING."""


def warn(message: str) -> None:
    print(f"bilstm-exp: warning: {message}", file=sys.stderr, flush=True)


class Session:
    """The active run's link to its store, with a journal of everything logged (see the module)."""

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
        self.deferring = False  # registering and ending: interrupts wait (see the module docstring)
        self.deferred: list[str] = []
        self.previous_status: str | None = None  # of a reopened (resumed) run
        self.previous_failure: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextmanager
    def start(cls, experiment_id: str, run_name: str | None = None, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, run_id: str | None = None) -> Iterator[Session]:
        """Open a run (``run_id`` reopens a KILLED or FAILED one, to resume it) and end it honestly."""
        signals: list[str] = []  # the interrupts received; they decide KILLED even when a library
        # wrapped the KeyboardInterrupt in an exception of its own on the way up
        opened: list[Session] = []

        def on_sigterm(signum, frame):
            if opened and opened[0].deferring:
                opened[0].deferred.append("terminated")
                return
            signals.append("terminated")
            raise Terminated("SIGTERM")

        def on_sigint(signum, frame):
            if opened and opened[0].deferring:
                opened[0].deferred.append("interrupted")
                return
            signals.append("interrupted")
            signal.default_int_handler(signum, frame)

        previous_term = signal.signal(signal.SIGTERM, on_sigterm)
        previous_int = signal.signal(signal.SIGINT, on_sigint)
        tags = {key: store.redact_text(str(value)) for key, value in (tags or {}).items()}
        with store.short_http_retries():
            previous = None
            try:
                if run_id is not None:
                    previous = MlflowClient().get_run(run_id)
                    active = mlflow.start_run(run_id=run_id)
                else:
                    active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                              tags={**tags, **process_tags()}, parent_run_id=parent_run_id)
            except BaseException as error:  # nothing was opened: put the handlers back, explain a refusal
                signal.signal(signal.SIGTERM, previous_term)
                signal.signal(signal.SIGINT, previous_int)
                refusal = _refusal(error, experiment_id)
                if refusal is None:
                    raise
                raise refusal from None
            session = cls(mlflow.get_tracking_uri(), active)
            opened.append(session)
            if previous is not None:
                session.previous_status = previous.info.status
                session.previous_failure = {k: previous.data.tags[k] for k in FAILURE_TAGS if k in previous.data.tags}
                session.log_tags(process_tags())
            try:
                yield session
            except BaseException as error:
                session.deferring = False
                if signals or caused_by_interrupt(error):
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    reason = signals[0] if signals else (
                        "terminated" if caused_by_interrupt(error, Terminated) else "interrupted")
                    session.end("KILLED", {"failure_reason": reason})
                    interrupt = error if isinstance(error, KeyboardInterrupt) else (
                        Terminated("SIGTERM") if reason == "terminated" else KeyboardInterrupt())
                    interrupt.run_id = session.run_id  # the CLI names the run in its message
                    if interrupt is not error:  # a library wrapped it: the CLI must still see an interrupt
                        raise interrupt from error
                elif getattr(error, "keeps_status", False) and session.previous_status:
                    session.end(session.previous_status)  # e.g. a corrupt checkpoint: the run is as it was
                else:
                    session.end("FAILED", {"error": store.redact_text(f"{type(error).__name__}: {error}")[:1000],
                                           "failure_reason": getattr(error, "failure_reason", "exception")})
                raise
            else:
                session.deferring = True  # ending FINISHED is not cut by a signal
                session.finish()
                session.deferring = False
                if session.deferred:
                    warn(f"{session.deferred[0]} while the run was registering its model and ending: the run "
                         f"{session.run_id} was completed first and ended FINISHED")
            finally:
                signal.signal(signal.SIGTERM, previous_term)
                signal.signal(signal.SIGINT, previous_int)

    def finish(self) -> None:
        """End FINISHED; a resumed run loses the failure tags of its interruption."""
        if self.previous_failure:
            for key in self.previous_failure:
                self.journal.tags.pop(key, None)
            self.log_tags({"resumed_after": self.previous_failure.get("failure_reason", "failure")})
            if not self.offline_uri:
                client = MlflowClient(self.uri)
                for key in self.previous_failure:
                    try:
                        client.delete_tag(self.run_id, key)
                    except Exception:
                        if store.reachable(self.uri):
                            raise
        self.end("FINISHED")

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        if tags:
            self.log_tags(tags)
        if not self.offline_uri and not self.flush():
            self.go_offline()
        if not self.offline_uri:
            try:
                mlflow.end_run(status)
                return
            except Exception:
                if store.reachable(self.uri):
                    raise
                self.go_offline()
        from mlflow.tracking import fluent

        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id in self.run_ids:
            stack.pop()
        MlflowClient(self.offline_uri).set_terminated(self.offline_run_id, status)
        mlflow.set_tracking_uri(self.uri)
        warn(f"run {self.run_id} ended {status} and is kept in {self.offline_folder} because the tracking server "
             f"was unreachable. Upload it when the server is back:\n    "
             f"{offline.sync_command_line(self.offline_folder, store.redact(self.uri))}")

    # ------------------------------------------------------------------ logging

    @property
    def run_ids(self) -> set[str]:
        return {self.run_id, self.offline_run_id} - {None}

    def log_params(self, params: dict[str, Any]) -> None:
        """Params, cut to 250 characters, anything secret dropped."""
        self.log_batch(params=store.as_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One batched request per call, never one request per metric. A per-epoch call (``step``)
        also updates the heartbeat tag, in the same request."""
        beat = store.as_tags({HEARTBEAT_TAG: heartbeat()}) if step is not None else []
        self.log_batch(metrics=store.as_metrics(metrics, step), tags=beat)

    def log_tags(self, tags: dict[str, Any]) -> None:
        self.log_batch(tags=store.as_tags(tags))

    def log_batch(self, params: list[Param] = (), metrics: list[Metric] = (), tags: list[RunTag] = ()) -> None:
        params, metrics, tags = list(params), list(metrics), list(tags)
        self.journal.add(params, metrics, tags)
        if self.offline_uri:
            store.log_batch(MlflowClient(self.offline_uri), self.offline_run_id, params, metrics, tags)
            return
        self.pending.append((params, metrics, tags))
        if time.monotonic() >= self.next_try:
            self.flush()

    def flush(self) -> bool:
        """Deliver the buffered requests in order; False when the server is unreachable."""
        client = MlflowClient(self.uri)
        try:
            while self.pending:
                store.log_batch(client, self.run_id, *self.pending[0])
                self.pending.pop(0)
        except Exception:
            if store.reachable(self.uri):
                raise
            if not self.down:
                warn(f"tracking server {store.redact(self.uri)} is unreachable; training continues, logging is "
                     f"buffered and retried every {RETRY_INTERVAL_S:.0f} s")
            self.down, self.next_try = True, time.monotonic() + RETRY_INTERVAL_S
            return False
        if self.down:
            warn(f"tracking server {store.redact(self.uri)} is reachable again; buffered logging delivered")
        self.down = False
        return True

    # ------------------------------------------------------------------ a server that goes down

    def settle(self) -> None:
        """Before recording results: deliver the buffer, or continue offline if the server stays down."""
        if self.offline_uri or not store.is_http(self.uri):
            return
        for attempt in range(SETTLE_ATTEMPTS):
            if store.reachable(self.uri) and self.flush():
                return
            if attempt + 1 < SETTLE_ATTEMPTS:
                time.sleep(SETTLE_WAIT_S)
        self.go_offline()

    def resilient(self, record: Callable[[], T]) -> T:
        """``record()``; if it fails because the server went down, continue offline and record again
        (``record`` must be repeatable: artifacts and models, not metrics)."""
        try:
            return record()
        except Exception:
            if self.offline_uri or store.reachable(self.uri):
                raise
        self.go_offline()
        return record()

    def go_offline(self) -> None:
        """Continue the run in a local store holding everything logged so far."""
        if self.offline_uri:
            return
        folder = Path.cwd() / offline.FOLDER / self.run_id
        self.offline_uri, self.offline_run_id = offline.create(folder, self.journal, store.redact(self.uri),
                                                               self.run_id)
        self.offline_folder = folder
        self.pending.clear()
        run = MlflowClient(self.offline_uri).get_run(self.offline_run_id)
        from mlflow.tracking import fluent  # the fluent API (log_artifact, log_model) now writes there

        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == self.run_id:
            stack[-1] = mlflow.ActiveRun(run)
        mlflow.set_tracking_uri(self.offline_uri)
        warn(f"tracking server {store.redact(self.uri)} is still unreachable; the run continues in {folder}")

    # ------------------------------------------------------------------ registry

    def register(self, model_uri: str, name: str, metrics: dict[str, float], champion_metric: str,
                 greater_is_better: bool = True):
        """Register the run's model (see :func:`registry.register`). A run kept offline registers
        nothing now: the wish is recorded and `bilstm-exp sync` registers it on upload; returns None."""
        if champion_metric not in metrics:
            logged = ", ".join(sorted(k for k in metrics if k.startswith(("val/", "test/", "train/")))[:12])
            raise TrackingError(f"tracking.champion_metric={champion_metric}: this run logged no such metric, so no "
                                f"version could ever be compared on it (it logged: {logged}). Fix: pick a logged "
                                "metric, e.g. tracking.champion_metric=val/accuracy")
        if self.offline_uri:
            self.log_tags({offline.REGISTER_TAG: name, offline.CHAMPION_TAG: champion_metric,
                           offline.GREATER_TAG: str(greater_is_better).lower()})
            return None
        client = MlflowClient(self.uri)
        before = self._versions(client, name)
        self.deferring = True  # a signal now would leave a half-tagged version: it waits for the run's end
        try:
            return registry.register(client, model_uri, name, self.run_id, metrics, champion_metric,
                                     greater_is_better)
        except BaseException:
            self.deferring = False
            for version in self._versions(client, name) - before:  # no half-registered version is left
                try:
                    client.delete_model_version(name, version)
                except Exception as error:
                    warn(f"could not delete the half-registered version {version} of {name}: {error}")
            raise

    def _versions(self, client: MlflowClient, name: str) -> set[str]:
        try:
            return {v.version for v in client.search_model_versions(f"name='{name}' and run_id='{self.run_id}'")}
        except Exception:
            return set()


def _refusal(error: BaseException, experiment_id: str | None) -> TrackingError | None:
    """A server's 401/403 as a user error naming who, where and the fix; None for anything else."""
    from mlflow.exceptions import MlflowException

    status = error.get_http_status_code() if isinstance(error, MlflowException) else None
    if status not in (401, 403):
        return None
    uri = store.redact(mlflow.get_tracking_uri())
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        return TrackingError(f"{uri} refused the credentials (HTTP 401). Fix: set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a user of that server")
    return TrackingError(f"user {user or '(anonymous)'} may not write to experiment {experiment_id} on {uri} "
                         "(HTTP 403). Fix: ask its owner or the server admin for EDIT permission (bilstm-exp "
                         "server user NAME --experiment ID:EDIT), or use another tracking.experiment_name")


def caused_by_interrupt(error: BaseException, kind: type[BaseException] = KeyboardInterrupt) -> bool:
    """True when ``error`` is, or was raised while handling, an interrupt of ``kind``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
