"""SIGINT and SIGTERM held back while a step that must not be cut in half runs (an epoch being logged
and checkpointed), then delivered as usual.

No TensorFlow, no MLflow here.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HELD = {signal.SIGINT, signal.SIGTERM}


class Deferral:
    """SIGINT and SIGTERM recorded instead of handled between :meth:`hold` and :meth:`release`, which
    then hands the first one to the handler that was in place (so it arrives as usual, only later).

    Python handles signals in the main thread, whichever thread the kernel delivered them to, so
    swapping the Python-level handlers holds them back reliably; a thread's signal mask would not
    (TensorFlow's threads would still receive them). Must be used from the main thread.
    """

    def __init__(self):
        self.previous: dict[int, Any] = {}
        self.pending: list[int] = []

    def hold(self) -> Deferral:
        for sig in HELD:
            self.previous[sig] = signal.signal(sig, lambda signum, frame: self.pending.append(signum))
        return self

    def release(self) -> None:
        previous, self.previous = self.previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self.pending:
            sig = self.pending[0]
            handler = previous.get(sig)
            if callable(handler):
                handler(sig, None)  # e.g. the session's: raises Terminated / KeyboardInterrupt
            elif handler != signal.SIG_IGN:
                signal.raise_signal(sig)  # the default action


@contextmanager
def held_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then arrive as usual."""
    held = Deferral().hold()
    try:
        yield
    finally:
        held.release()
