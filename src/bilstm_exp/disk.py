"""A full disk, wherever it shows, as one line naming what is full.

A write to a full disk (or an exhausted quota) surfaces in a different shape in each library: an
``OSError`` with errno ENOSPC or EDQUOT (Python, shutil, MLflow's artifact copy), h5py's
``errno = 28`` text (Keras weights), sqlite's ``database or disk is full`` wrapped by SQLAlchemy and
MLflow (the tracking store). :func:`is_full` recognises all of them anywhere along an exception's
chain; :class:`DiskFull` is the user error a run ends with (``failure_reason=disk_full``), and
:func:`where` names a path with its file system's free space, so the line says what to clean.

Layer 0: nothing from this package but :mod:`bilstm_exp.errors`.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from bilstm_exp.errors import UserError

_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded", "errno = 28")
# MLflow logs every SQLAlchemy error it re-raises, with its traceback; a full disk is said once, by us.
_MLFLOW_DB_LOGGER = "mlflow.store.db.utils"


class DiskFull(UserError):
    """A write failed because its disk (or quota) is full; the message names where and the fix."""

    failure_reason = "disk_full"


def is_full(error: BaseException | None) -> bool:
    """True when ``error``, or an error it was raised from or while handling, says the disk is full."""
    return any((isinstance(e, OSError) and e.errno in _ERRNOS) or says_full(str(e)) for e in _chain(error))


def says_full(text: str) -> bool:
    """A message (a library's, a log record's) that says the disk is full."""
    return any(phrase in text.lower() for phrase in _TEXTS)


def full_path(error: BaseException) -> str | None:
    """The file a full-disk ``OSError`` along the chain names, if any (shutil and open() name it)."""
    return next((str(e.filename) for e in _chain(error)
                 if isinstance(e, OSError) and e.errno in _ERRNOS and e.filename), None)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        yield error
        seen.add(id(error))
        error = error.__cause__ or error.__context__


def where(path: Path | str) -> str:
    """``PATH (file system at MOUNT: FREE free of TOTAL)``: what to clean, measured now."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return str(path)
    return f"{path} (file system at {mount_point(probe)}: {_size(usage.free)} free of {_size(usage.total)})"


def mount_point(path: Path) -> Path:
    """The folder the file system holding ``path`` is mounted at."""
    mount = Path(os.path.abspath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return mount


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def remove_quietly(path: Path) -> None:
    """Delete a half-written file after a failed write (frees the space it took; never raises)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


class _NotDiskFull:
    """A logging filter: drops MLflow's own record (and traceback) of a full disk."""

    @staticmethod
    def filter(record) -> bool:
        return not (says_full(record.getMessage()) or (record.exc_info is not None and is_full(record.exc_info[1])))


def silence_library_reports() -> None:
    """MLflow logs a full sqlite store as an ERROR with its traceback before raising it; the run's one
    line says it instead. Idempotent (the same filter object is added once)."""
    import logging

    logging.getLogger(_MLFLOW_DB_LOGGER).addFilter(_FILTER)


_FILTER = _NotDiskFull()
