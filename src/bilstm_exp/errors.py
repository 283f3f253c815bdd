"""Errors that mean "your input is wrong", and the one place that turns them into a message and an exit code.

Every command runs inside :func:`exit_on_user_error`: a :class:`UserError` prints
``bilstm-exp: error: <problem>. Fix: <fix>`` on stderr and exits 2 (no traceback); an interrupt
(Ctrl-C, or SIGTERM turned into ``Terminated``) exits 130 or 143.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERROR_EXIT = 2


class UserError(Exception):
    """Bad input the user can fix; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A config value is unknown, of the wrong type or out of range."""


class DataError(UserError, ValueError):
    """Input data is missing, empty or malformed."""


class TrackingError(UserError, RuntimeError):
    """The tracking store is unreachable or misconfigured."""


def fail(message: object, code: int = USER_ERROR_EXIT) -> None:
    """Print ``bilstm-exp: error: MESSAGE`` on stderr and exit."""
    print(f"bilstm-exp: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


@contextmanager
def exit_on_user_error(interrupted: str | None = None) -> Iterator[None]:
    """The command-line error boundary. ``interrupted``: what to tell the user after Ctrl-C/SIGTERM
    (without it an interrupt propagates as usual)."""
    try:
        yield
    except UserError as error:
        fail(error)
    except KeyboardInterrupt as interrupt:
        if interrupted is None:
            raise
        print(f"bilstm-exp: interrupted: {interrupted}", file=sys.stderr, flush=True)
        raise SystemExit(143 if type(interrupt).__name__ == "Terminated" else 130) from None
