"""Retrying a store request that failed for a passing reason, as MLflow's own client does for HTTP.

A busy store answers "database is locked" (a sqlite store, local or behind ``mlflow server``: MLflow
turns SQLAlchemy's ``OperationalError`` into ``TEMPORARILY_UNAVAILABLE``, HTTP 503) or 429/5xx once
MLflow's few HTTP retries are spent. Eight runs on one sqlite-backed server on a busy machine see
that. :func:`retrying` repeats a call with exponential backoff and jitter until a deadline
(``BILSTM_EXP_STORE_RETRY_S``, default 120 s); callers pass only calls that are safe to repeat (an
idempotent registration, ending a run, a batch of values already chosen). A server that does not
answer at all is not "transient" here: the session keeps the run offline instead.

A refusal that does not pass (HTTP 401/403) becomes a user error instead: :func:`refusal`.
No MLflow import at module level: :func:`transient` reads an exception's code and text.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from bilstm_exp import disk
from bilstm_exp.errors import TrackingError

T = TypeVar("T")

DEADLINE_ENV = "BILSTM_EXP_STORE_RETRY_S"
DEADLINE_S = 120.0
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 10.0
# MLflow error codes of a request the store refused without doing it (503, 429)
REFUSED_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
REFUSED_TEXTS = ("database is locked", "database table is locked", "deadlock detected",
                 "too many 429 error responses", "too many 502 error responses",
                 "too many 503 error responses", "too many 504 error responses")
# the request may have landed, or a concurrent writer inserted the same row first (eight runs logging the same
# dataset at once): repeating an idempotent request finds it there
MAYBE_DONE_TEXTS = ("too many 500 error responses", "failed with timeout exception", "unique constraint failed",
                    "duplicate key value violates unique constraint")


def deadline_s() -> float:
    """How long a run keeps retrying a busy store (``BILSTM_EXP_STORE_RETRY_S``, default 120 s)."""
    try:
        return max(0.0, float(os.environ.get(DEADLINE_ENV, DEADLINE_S)))
    except ValueError:
        return DEADLINE_S


def refused(error: BaseException) -> bool:
    """The store refused the request without doing it (busy, locked, rate-limited): repeating it is
    safe even for a request that is not idempotent (creating a run)."""
    code = getattr(error, "error_code", None)
    text = str(error).lower()
    if disk.is_full(error):  # MLflow calls a full sqlite store TEMPORARILY_UNAVAILABLE too; waiting frees nothing
        return False
    return code in REFUSED_CODES or any(t in text for t in REFUSED_TEXTS)


def transient(error: BaseException) -> bool:
    """A failure that passes (a busy store, a 429/5xx, a timed-out request, a row a concurrent writer
    inserted first), not a refusal of the request itself: repeating an idempotent request is the fix."""
    return refused(error) or any(t in str(error).lower() for t in MAYBE_DONE_TEXTS)


def retrying(call: Callable[[], T], idempotent: bool = True, deadline: float | None = None) -> T:
    """``call()``, repeated while it fails transiently (:func:`refused` only, when not ``idempotent``),
    with backoff and jitter, until ``deadline`` seconds (default :func:`deadline_s`) have passed;
    the last error is raised as it is."""
    retryable = transient if idempotent else refused
    end = time.monotonic() + (deadline_s() if deadline is None else deadline)
    wait = FIRST_WAIT_S
    while True:
        try:
            return call()
        except Exception as error:
            if not retryable(error) or time.monotonic() + wait > end:
                raise
        time.sleep(wait * random.uniform(0.5, 1.5))
        wait = min(wait * 2, MAX_WAIT_S)


def reason(error: BaseException) -> str:
    """What a transient failure was, in a few words, for a tag and a console line."""
    text = str(error).lower()
    for phrase in ("database is locked", "database table is locked", "deadlock detected"):
        if phrase in text:
            return phrase
    found = re.search(r"too many (\d{3}) error responses", text)
    if found:
        return f"HTTP {found.group(1)} after MLflow's retries"
    return first_line(error, 200)


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error in one line (MLflow's messages span several), for a tag or a console line."""
    text = (getattr(error, "message", None) or str(error) or type(error).__name__)
    return str(text).strip().splitlines()[0][:limit] if str(text).strip() else type(error).__name__


def refusal(error: BaseException, experiment_id: str | None, uri: str) -> TrackingError | None:
    """A server's 401/403 as a user error naming who, where (``uri``, redacted) and the fix; None for
    anything else."""
    from mlflow.exceptions import MlflowException

    status = error.get_http_status_code() if isinstance(error, MlflowException) else None
    if status not in (401, 403):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        return TrackingError(f"{uri} refused the credentials (HTTP 401). Fix: set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a user of that server")
    return TrackingError(f"user {user or '(anonymous)'} may not write to experiment {experiment_id} on {uri} "
                         "(HTTP 403). Fix: ask its owner or the server admin for EDIT permission (bilstm-exp "
                         "server user NAME --experiment ID:EDIT), or use another tracking.experiment_name")
