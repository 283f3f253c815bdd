"""The range checks every schema's ``__post_init__`` uses, with the one message format
``<key>: <problem>. Fix: <fix>`` (a :class:`ConfigError`)."""

from __future__ import annotations

from typing import Any

from bilstm_exp.errors import ConfigError


def check(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}. Fix: {fix}")


def positive(value: Any, key: str, example: Any) -> None:
    check(value > 0, key, f"must be > 0, got {value}", f"set a positive value, e.g. {key}={example}")


def fraction(value: float, key: str, example: float, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    bound = "[0, 1)" if upper_open else "[0, 1]"
    check(ok, key, f"must be in {bound}, got {value}", f"e.g. {key}={example}")


def choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    check(
        value in allowed,
        key,
        f"'{value}' is not one of {', '.join(allowed)}",
        f"pick one, e.g. {key}={allowed[0]}",
    )
