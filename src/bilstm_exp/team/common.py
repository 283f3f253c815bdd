"""What every part of the team server shares: the loopback host, the database role, the error it raises,
and two small helpers for private files and free ports."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from bilstm_exp.errors import UserError

HOST = "127.0.0.1"
DB_ROLE = "bilstm"


class ServerError(UserError, RuntimeError):
    """A service could not be installed, started or reached; the message names the fix."""


def free_port() -> int:
    """A localhost port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether nothing listens on PORT of the loopback host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def write_private(path: Path, text: str) -> Path:
    """Write TEXT to PATH readable by its owner only (0600 from the start, not chmod-after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def tail(path: Path, chars: int = 2000) -> str:
    """The end of a log file, for an error message ("" when it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
