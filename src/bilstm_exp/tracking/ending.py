"""How a run ends: the one rule for its status and tags, and the signals that decide it.

    FINISHED   the work returned
    KILLED     Ctrl-C or SIGTERM arrived (tag ``failure_reason``: interrupted | terminated), even when a
               library wrapped the KeyboardInterrupt in an exception of its own on the way up
    FAILED     an exception (tags ``error``: its type and message, secrets masked, at most 1,000
               characters; ``failure_reason``: the exception's own, else ``exception``)

Used through :class:`bilstm_exp.tracking.session.Session` by single runs, cross-validation parents
and sweep parents alike. A run whose process dies (``kill -9``) cannot end itself: the liveness tags
of :func:`process_tags` (heartbeat, host, pid) let `bilstm-exp runs --stale --close` end it KILLED.
No MLflow here.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
from typing import Any

from bilstm_exp import disk
from bilstm_exp.tracking.redaction import redact_text
from bilstm_exp.tracking.store import HEARTBEAT_TAG, HOST_TAG, PID_TAG

ERROR_MAX_CHARS = 1000


def heartbeat() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_tags() -> dict[str, str]:
    """Where the run's process lives, and that it lived just now (updated with every epoch's logging)."""
    return {HEARTBEAT_TAG: heartbeat(), HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM so the run can end KILLED, not stay RUNNING."""


def caused_by_interrupt(error: BaseException | None, kind: type[BaseException] = KeyboardInterrupt) -> bool:
    """True when ``error`` is, or was raised while handling, an interrupt of ``kind``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def ending(error: BaseException | None, received: list[str] = ()) -> tuple[str, dict[str, str]]:
    """(status, tags) of a run that ended with ``error`` (None: it returned) after the interrupts
    ``received`` ("interrupted", "terminated") while it was open."""
    if received or caused_by_interrupt(error):
        reason = received[0] if received else ("terminated" if caused_by_interrupt(error, Terminated)
                                               else "interrupted")
        return "KILLED", {"failure_reason": reason}
    if error is None:
        return "FINISHED", {}
    return "FAILED", {"error": redact_text(f"{type(error).__name__}: {error}")[:ERROR_MAX_CHARS],
                      "failure_reason": getattr(error, "failure_reason", None) or (
                          "disk_full" if disk.is_full(error) else "exception")}


def as_interrupt(error: BaseException, reason: str, run_id: str) -> BaseException | None:
    """The interrupt a KILLED run re-raises, naming the run the CLI reports (the innermost one: a
    fold's, not its cross-validation parent's); None when ``error`` is that interrupt itself."""
    interrupt = error if isinstance(error, KeyboardInterrupt) else (
        Terminated("SIGTERM") if reason == "terminated" else KeyboardInterrupt())
    if getattr(interrupt, "run_id", None) is None:
        interrupt.run_id = run_id
    return None if interrupt is error else interrupt


class Interrupts:
    """SIGTERM and Ctrl-C while a run is open: recorded in ``received`` and raised in the main thread
    (SIGTERM as :class:`Terminated`), or, while ``holder.deferring`` (registering the model and ending
    the run), appended to ``holder.deferred`` and handled by no one: the run completes first."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.holder: Any = None  # the session, once open
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        self.previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
                         signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint)}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def ignore(self) -> None:
        """A second signal must not cut the clean-up of a KILLED run."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _deferred(self, reason: str) -> bool:
        if self.holder is not None and self.holder.deferring:
            self.holder.deferred.append(reason)
            return True
        self.received.append(reason)
        return False

    def _on_sigterm(self, signum, frame) -> None:
        if not self._deferred("terminated"):
            raise Terminated("SIGTERM")

    def _on_sigint(self, signum, frame) -> None:
        if not self._deferred("interrupted"):
            signal.default_int_handler(signum, frame)
