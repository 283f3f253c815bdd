"""One MLflow run's lifecycle: start, log, survive a server outage, end with an honest status.

    with Session.start(experiment_id, run_name="basic-adam", tags={...}) as session:
        session.log_params({...})
        session.log_metrics({"val/loss": 0.4}, step=0)
        session.settle()                                 # before the results: server still down? go offline
        session.resilient(lambda: mlflow.log_artifact(...))

The run always ends, by one rule (:mod:`bilstm_exp.tracking.ending`): FINISHED, FAILED (an exception;
tags ``error`` and ``failure_reason``) or KILLED (Ctrl-C or SIGTERM; SIGTERM becomes ``Terminated``
while the session is open). The same session, without MLflow's fluent API (:meth:`Session.create`,
:meth:`Session.attach`, ``Session.start(..., fluent=False)``), records and ends the parent runs of
cross-validation and sweeps: every write of a run goes through a session.

A store that is busy (a locked sqlite database, HTTP 429/5xx) is retried with backoff up to a
deadline (:mod:`bilstm_exp.tracking.retry`); logging it still refuses is buffered like logging to a
server that is down. A registration the store still refuses after the retries leaves the run
FINISHED with its metrics, a ``registry.failed`` tag, and one line naming `bilstm-exp register`.

Logging to a server that is unreachable (its ``/health`` does not answer) is buffered and delivered
in order once it answers (tried at most every :data:`RETRY_INTERVAL_S`); :meth:`Session.settle`, before
the results, continues the run in a local store (:mod:`bilstm_exp.tracking.offline`) if it stays
down, and its end prints the `bilstm-exp sync` command. Other errors of a reachable store are raised.

Honest records (issue 12):

* every epoch's logging also sets the tag ``bilstm_exp.heartbeat`` (UTC time), and the run carries
  ``bilstm_exp.host`` / ``bilstm_exp.pid``: a run a ``kill -9`` left RUNNING is found and closed KILLED
  by ``bilstm-exp runs --stale --close`` (:mod:`bilstm_exp.tracking.runs`);
* registration and the run's end are one step for signals: a Ctrl-C or SIGTERM meanwhile waits (the
  run ends FINISHED with its one complete version, and a warning says so); a registration that fails
  midway, other than on a busy store, deletes the version it created: a FAILED or KILLED run has none;
* a resumed run that finishes loses the ``error`` / ``failure_reason`` tags of its interruption
  (kept as ``resumed_after``); an exception marked ``keeps_status`` (a corrupt checkpoint found
  while resuming) leaves the run's status as it was;
* an interrupt leaving the session carries the run id (``interrupt.run_id``) for the CLI's message.

The session is an object the caller passes around; there is no module-level "current run". No Keras.
"""

from __future__ import annotations

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
from bilstm_exp.tracking import offline, retry, store
from bilstm_exp.tracking.ending import Interrupts, as_interrupt, ending, heartbeat, process_tags
from bilstm_exp.tracking.store import HEARTBEAT_TAG

RETRY_INTERVAL_S = 10.0  # while the store is down or busy, buffered logging is retried at most this often
SETTLE_ATTEMPTS, SETTLE_WAIT_S = 3, 5.0  # before the results: tries to reach the server, and the wait between

T = TypeVar("T")

FAILURE_TAGS = ("error", "failure_reason")  # cleared when a resumed run finishes


def warn(message: str) -> None:
    print(f"bilstm-exp: warning: {message}", file=sys.stderr, flush=True)


class Session:
    """The active run's link to its store, with a journal of everything logged (see the module).
    ``fluent``: the run is MLflow's active run (artifacts and the model are logged through the fluent
    API, and it can continue offline); a parent run is not."""

    def __init__(self, uri: str, run: mlflow.entities.Run, fluent: bool = True):
        self.uri, self.run_id, self.fluent = uri, run.info.run_id, fluent
        self.experiment_id = run.info.experiment_id
        experiment = MlflowClient(uri).get_experiment(self.experiment_id)
        self.journal = offline.Journal(experiment.name, run.info.run_name, run.info.start_time,
                                       params=dict(run.data.params), tags=dict(run.data.tags))
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
              parent_run_id: str | None = None, run_id: str | None = None,
              fluent: bool = True) -> Iterator[Session]:
        """Open a run (``run_id`` reopens a KILLED or FAILED one, to resume it) and end it honestly;
        ``fluent=False``: a parent run whose children are this process's fluent runs."""
        with Interrupts() as interrupts, store.short_http_retries():
            session = cls._open(experiment_id, run_name, tags or {}, parent_run_id, run_id, fluent)
            interrupts.holder = session
            try:
                yield session
            except BaseException as error:
                interrupt = session.close_after(error, interrupts)
                if interrupt is not None:  # a library wrapped the interrupt: the CLI must still see one
                    raise interrupt from error
                raise
            else:
                session.finish()

    @classmethod
    def _open(cls, experiment_id: str, run_name: str | None, tags: dict[str, str], parent_run_id: str | None,
              run_id: str | None, fluent: bool) -> Session:
        """The run opened, or a server's refusal (401/403) as a user error."""
        uri, run_name = mlflow.get_tracking_uri(), run_name and store.redact_text(run_name)  # masked as tags are
        try:
            if not fluent:
                return cls.create(uri, experiment_id, run_name, tags, parent_run_id)
            if run_id is not None:
                return cls._reopen(uri, run_id)
            tags = {key: store.redact_text(str(value)) for key, value in tags.items()}
            active = retry.retrying(lambda: mlflow.start_run(
                experiment_id=experiment_id, run_name=run_name, tags={**tags, **process_tags()},
                parent_run_id=parent_run_id), idempotent=False)
        except BaseException as error:
            refusal = retry.refusal(error, experiment_id, store.redact(uri))
            if refusal is None:
                raise
            raise refusal from None
        return cls(uri, active)

    @classmethod
    def _reopen(cls, uri: str, run_id: str) -> Session:
        """A KILLED or FAILED run continued (training.resume): it remembers how it ended."""
        previous = MlflowClient(uri).get_run(run_id)
        session = cls(uri, mlflow.start_run(run_id=run_id))
        session.previous_status = previous.info.status
        session.previous_failure = {k: previous.data.tags[k] for k in FAILURE_TAGS if k in previous.data.tags}
        session.log_tags(process_tags())
        return session

    @classmethod
    def create(cls, uri: str, experiment_id: str, run_name: str | None, tags: dict[str, Any],
               parent_run_id: str | None = None) -> Session:
        """A new run through the client, not MLflow's active run: the parent of a cross-validation or a
        sweep, whose children are this process's fluent runs."""
        tags = {**{key: store.redact_text(str(value)) for key, value in tags.items()}, **process_tags()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = retry.retrying(lambda: MlflowClient(uri).create_run(experiment_id, run_name=run_name, tags=tags),
                             idempotent=False)
        return cls(uri, run, fluent=False)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> Session:
        """A session for an existing run, without the fluent API: a sweep's parent in a later hook, the
        run of a Keras logger given no session."""
        return cls(uri, retry.retrying(lambda: MlflowClient(uri).get_run(run_id)), fluent=False)

    def close_after(self, error: BaseException, interrupts: Interrupts) -> BaseException | None:
        """End the run after ``error`` (KILLED, FAILED, or as it was: an exception marked ``keeps_status``,
        e.g. a corrupt checkpoint found while resuming); returns the interrupt to raise instead of a
        library's wrapper of it, if any."""
        self.deferring = False
        status, tags = ending(error, interrupts.received)
        if status == "KILLED":
            interrupts.ignore()
            self.end(status, tags)
            return as_interrupt(error, tags["failure_reason"], self.run_id)
        if getattr(error, "keeps_status", False) and self.previous_status:
            self.end(self.previous_status)
        else:
            with store.ending_on_a_full_disk(self.uri, self.run_id, error):  # a full store: left RUNNING, said
                self.end(status, tags)
        return None

    def finish(self) -> None:
        """End FINISHED, not cut by a signal (it waits, with a warning); a resumed run loses the failure
        tags of its interruption (kept as ``resumed_after``)."""
        self.deferring = True
        if self.previous_failure:
            self.log_tags({"resumed_after": self.previous_failure.get("failure_reason", "failure")})
            self.forget_tags(list(self.previous_failure))
        self.end("FINISHED")
        self.deferring = False
        if self.deferred:
            warn(f"{self.deferred[0]} while the run was registering its model and ending: the run "
                 f"{self.run_id} was completed first and ended FINISHED")

    def end(self, status: str, tags: dict[str, str] | None = None, end_time: int | None = None) -> None:
        """The one way a run ends: its buffer delivered, then its status (``end_time``: a run synced from
        its offline copy keeps its own). A fluent run whose server is down (or whose store stays busy)
        ends in its offline copy, with the `bilstm-exp sync` command."""
        if tags:
            self.log_tags(tags)
        if not self.offline_uri and self.flush():
            try:
                retry.retrying(lambda: mlflow.end_run(status) if self.fluent
                               else MlflowClient(self.uri).set_terminated(self.run_id, status, end_time))
                return
            except Exception as error:
                if not self._passing(error):
                    raise
        if not self.offline_uri and not self.fluent:
            raise TrackingError(f"run {self.run_id} could not be ended {status}: the tracking store "
                                f"{store.redact(self.uri)} is unreachable or busy. Fix: once it answers, close "
                                "it with `bilstm-exp runs --stale --close`")
        self.go_offline()
        self._end_offline(status)

    def _end_offline(self, status: str) -> None:
        offline.end(self.run_ids, self.offline_uri, self.offline_run_id, status, self.uri)
        warn(f"run {self.run_id} ended {status} and is kept in {self.offline_folder} because the tracking server "
             f"was unreachable. Upload it when the server is back:\n    "
             f"{offline.sync_command_line(self.offline_folder, store.redact(self.uri))}")

    def _passing(self, error: BaseException) -> bool:
        """The store is down or busy (logging waits in the buffer), not refusing the request."""
        return retry.transient(error) or not store.reachable(self.uri)

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

    def resume(self, forget: list[str]) -> None:
        """RUNNING again (a resumed sweep's parent), the tags of its earlier end forgotten."""
        retry.retrying(lambda: MlflowClient(self.uri).update_run(self.run_id, "RUNNING"))
        self.forget_tags([key for key in forget if key in self.journal.tags])
        self.log_tags(process_tags())

    def forget_tags(self, keys: list[str]) -> None:
        """Delete tags the run carries (a resumed run's earlier end); kept offline, the copy has none."""
        for key in keys:
            self.journal.tags.pop(key, None)
        if self.offline_uri:
            return
        client = MlflowClient(self.uri)
        for key in keys:
            try:
                retry.retrying(lambda key=key: client.delete_tag(self.run_id, key))
            except Exception as error:
                if not self._passing(error) and key in client.get_run(self.run_id).data.tags:
                    raise

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
        """Deliver the buffered requests in order; False when the server is unreachable or the store busy."""
        client = MlflowClient(self.uri)
        try:
            while self.pending:
                store.log_batch(client, self.run_id, *self.pending[0])
                self.pending.pop(0)
        except Exception as error:
            if not self._passing(error):
                raise
            if not self.down:
                problem = (f"store {store.redact(self.uri)} is busy ({retry.reason(error)})"
                           if retry.transient(error) else f"server {store.redact(self.uri)} is unreachable")
                warn(f"tracking {problem}; training continues, logging is buffered and retried every "
                     f"{RETRY_INTERVAL_S:.0f} s")
            self.down, self.next_try = True, time.monotonic() + RETRY_INTERVAL_S
            return False
        if self.down:
            warn(f"tracking server {store.redact(self.uri)} is reachable again; buffered logging delivered")
        self.down = False
        return True

    def log_artifacts(self, local: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's files, as the run's artifacts (in its offline copy once it went offline)."""
        client = MlflowClient(self.offline_uri or self.uri)
        run_id = self.offline_run_id or self.run_id
        if Path(local).is_dir():
            client.log_artifacts(run_id, str(local), artifact_path)
        else:
            client.log_artifact(run_id, str(local), artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        MlflowClient(self.offline_uri or self.uri).log_dict(self.offline_run_id or self.run_id, data, artifact_file)

    def write(self, call: Callable[[MlflowClient, str], T]) -> T:
        """Any other write, ``call(client, run_id)`` (dataset inputs, a model's metrics), retried; offline: the copy."""
        return retry.retrying(lambda: call(MlflowClient(self.offline_uri or self.uri),
                                           self.offline_run_id or self.run_id))

    # ------------------------------------------------------------------ a server that goes down

    def settle(self) -> None:
        """Before recording results: deliver the buffer, or continue offline if the server stays down."""
        if self.offline_uri:
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
        offline.take_over(self.run_id, self.offline_uri, self.offline_run_id)
        warn(f"tracking server {store.redact(self.uri)} is still unreachable; the run continues in {folder}")

    # ------------------------------------------------------------------ registry

    def register(self, model_uri: str, name: str, metrics: dict[str, float], champion_metric: str,
                 greater_is_better: bool = True, run_id: str | None = None):
        """Register the model of this run, or of ``run_id`` (a sweep's best job); see
        :func:`registry.register`. Kept offline, nothing is registered now: the wish is recorded and
        `bilstm-exp sync` registers it on upload. A store still busy after the retries: the run keeps
        its status and metrics, without a version (:meth:`_not_registered`). Returns the version or None."""
        run_id = run_id or self.run_id
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
        before = self._versions(client, name, run_id)
        self.deferring = True  # a signal now would leave a half-tagged version: it waits for the run's end
        try:
            return retry.retrying(lambda: registry.register(client, model_uri, name, run_id, metrics,
                                                            champion_metric, greater_is_better))
        except BaseException as error:
            self.deferring = False
            if isinstance(error, Exception) and retry.transient(error) and store.reachable(self.uri):
                return self._not_registered(run_id, error)  # a half version is completed by `register` later
            for version in self._versions(client, name, run_id) - before:  # no half-registered version is left
                try:
                    client.delete_model_version(name, version)
                except Exception as failure:
                    warn(f"could not delete the half-registered version {version} of {name}: {failure}")
            raise

    def _not_registered(self, run_id: str, error: Exception) -> None:
        """The store refused the registration past the retries: a tag, one line, the command for later."""
        reason = retry.reason(error)
        self.log_tags({registry.FAILED_TAG: reason})
        print(store.redact_text(f"[bilstm-exp] run {self.run_id} is kept, but its model was not registered: the "
                                f"store stayed busy for {retry.deadline_s():.0f} s ({reason}). Register it later: "
                                f"{registry.register_command(run_id, self.uri)}"), flush=True)

    def _versions(self, client: MlflowClient, name: str, run_id: str) -> set[str]:
        try:
            return {v.version for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")}
        except Exception:  # a busy or unreachable store: no version to clean up is known
            return set()

