"""Processes: this one's environment for a block, and whether another one is alive.

Used by the tracking (MLflow's system-metrics switch, a stale run's process), the team server (the
admin's credentials, the `mlflow server` process) and the models (a process's XLA cache folder).
No imports from the package.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block only (where a library reads its
    settings): afterwards each variable is as it was, unset if it was unset."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def alive(pid: int) -> bool:
    """Whether PID is a live process: it exists (another user's counts) and is not a zombie, a killed
    child its parent has not reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
