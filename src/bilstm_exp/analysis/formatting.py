"""Numbers and parameter values short enough for a 120-column table, and text wrapped to that width.

Used by the comparison report's table, sentences and plot labels; standard library only.
"""

from __future__ import annotations

import math
import os.path
import textwrap
from typing import Any

WIDTH = 120  # every printed line fits


def number(value: float | None, digits: int = 4) -> str:
    """A number rounded to ``digits`` significant digits, thousands with separators."""
    if value is None or not math.isfinite(value):
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= 10 * scale or (scale > 1e3 and abs(value) >= scale):
            return f"{value / scale:.3g}{suffix}"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    text = f"{value:.{digits}g}"
    return text.replace("e-0", "e-").replace("e+0", "e")


def with_ci(mean: float | None, ci: float | None) -> str:
    """``mean ±half-width`` (the half-width left out when there is none)."""
    return number(mean) + (f" ±{number(ci, 2)}" if ci is not None else "")


def p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def param_value(value: Any, shorten: bool = True) -> str:
    """A param value, short: numbers rounded to 3 significant digits, long text cut."""
    if value is None:
        return "-"
    text = str(value).replace(" ", "")
    if "/" in text and "://" not in text:  # a path: its file name says more than its folders
        text = text.rstrip("/").rsplit("/", 1)[-1]
    try:
        parsed = float(text)
    except ValueError:
        return cut(text, 14) if shorten else text
    if parsed.is_integer() and "e" not in text.lower() and abs(parsed) < 1e6:
        return str(int(parsed))
    return number(parsed, 3)


def abbreviate(values: list[Any], width: int = 14) -> list[str]:
    """Each value short (:func:`param_value`); long texts lose the start and end they all share, so that
    what tells them apart stays: data/raw/reviews_2023_clean.tsv -> …2023…"""
    shown = [param_value(v, shorten=False) for v in values]
    texts = sorted({t for t in shown if t != "-"})
    if len(texts) < 2 or all(len(t) <= width for t in texts):
        return [cut(t, width) for t in shown]
    prefix = _whole_words(os.path.commonprefix(texts))
    suffix = _whole_words(os.path.commonprefix([t[::-1] for t in texts]))
    shortest = min(len(t) for t in texts)
    if prefix + suffix > shortest:  # one value is a prefix of another
        suffix = max(0, shortest - prefix)
    out = []
    for text in shown:
        if text == "-" or len(text) <= width:
            out.append(text)
            continue
        middle = text[prefix: len(text) - suffix] if suffix else text[prefix:]
        out.append(cut(("…" if prefix else "") + middle + ("…" if suffix else ""), width))
    return out


def _whole_words(common: str) -> int:
    """The length of ``common`` up to its last separator (so no word is cut), or all of it if none."""
    last = max(common.rfind(sep) for sep in "_-./:=,")
    return last + 1 if last >= 0 else len(common)


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def wrap(text: str, width: int = WIDTH, indent: str = "  ") -> str:
    """Each line of ``text`` wrapped to ``width``, continuation lines indented."""
    return "\n".join(textwrap.fill(part, width, subsequent_indent=indent, break_on_hyphens=False,
                                   break_long_words=True) for part in text.split("\n"))
