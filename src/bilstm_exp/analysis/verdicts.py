"""Verdicts in words: does the best configuration beat the runner-up by more than the noise?

The difference of two groups' scores is tested over the folds or seeds they share (paired t-test),
else with Welch's t-test (:mod:`bilstm_exp.analysis.statistics`); with one run on a side the verdict
says it cannot tell and how to repeat. :mod:`bilstm_exp.analysis.baseline` words every configuration
against a baseline with the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

from bilstm_exp.analysis.formatting import number, p_value
from bilstm_exp.analysis.groups import Group, pair_labels
from bilstm_exp.analysis.statistics import Difference, difference

REPEAT = "repeat with -m seed=1,2,3 or data.folds=5"
FRACTIONS = ("accuracy", "auc", "precision", "recall", "f1")  # metrics in [0, 1]: differences in points


@dataclass
class Verdict:
    text: str
    real: bool | None  # None: cannot tell
    test: str = ""
    p: float | None = None
    difference: float | None = None
    low: float | None = None
    high: float | None = None


def test_name(diff: Difference) -> str:
    """``paired t-test over 5 folds`` or ``Welch's t-test, n=3 vs 4``."""
    if not diff.paired:
        return f"Welch's t-test, n={diff.n_a} vs {diff.n_b}"
    kinds = {key[0] for key in diff.paired}
    unit = "folds" if kinds == {"fold"} else "seeds" if kinds == {"seed"} else "pairs"
    return f"paired t-test over {len(diff.paired)} {unit}"


def one_run(a: Group, b: Group, column: str, name_a: str, name_b: str) -> str | None:
    """Why two groups cannot be told apart (one run on a side), or None when both have two or more."""
    if a.n(column) > 1 and b.n(column) > 1:
        return None
    who = "one run each" if a.n(column) == b.n(column) == 1 else f"one run of {name_a if a.n(column) == 1 else name_b}"
    return f"cannot tell: {who}; {REPEAT}"


def units(metric: str) -> tuple[float, str]:
    """(scale, unit) of a difference in ``metric``: percentage points for accuracies and other fractions."""
    if metric.rsplit("/", 1)[-1] in FRACTIONS or "accuracy" in metric:
        return 100.0, "points"
    return 1.0, metric


def amount(metric: str, value: float) -> str:
    """``1.2 points`` or ``0.021 val/loss``."""
    scale, unit = units(metric)
    return f"{number(scale * value, 2)} {unit}"


def interval(metric: str, diff: Difference, worse: bool = False) -> str:
    """``95% CI low to high, test, p`` with the bounds in the units of :func:`amount` (``worse``: the
    interval of how much worse, the negated difference)."""
    scale, _ = units(metric)
    low, high = (-diff.high, -diff.low) if worse else (diff.low, diff.high)
    return f"95% CI {number(scale * low, 2)} to {number(scale * high, 2)}, {test_name(diff)}, {p_value(diff.p)}"


def verdict(groups: list[Group], metric: str, mode: str) -> Verdict:
    """Does the best group beat the runner-up by more than the noise? In words."""
    scored = [g for g in groups if g.n()]
    if len(scored) < 2:
        return Verdict("only one configuration: nothing to compare it with. Fix: train another, "
                       "e.g. -m model=basic,attention seed=1,2,3", None)
    best, second = scored[0], scored[1]
    first, runner_up = pair_labels(groups.index(best) + 1, best, groups.index(second) + 1, second)
    names = f"{first} vs {runner_up}"
    cannot = one_run(best, second, "score", first, runner_up)
    if cannot:
        return Verdict(f"{names}: {cannot}", None)
    diff = difference(best.by_pair("score"), second.by_pair("score"), higher_is_better=mode == "max")
    verb = "beats" if diff.real else "leads"
    text = (f"{first} {verb} {runner_up} by {number(diff.mean, 2)} {metric} (95% CI {number(diff.low, 2)} to "
            f"{number(diff.high, 2)}, {test_name(diff)}, {p_value(diff.p)}): "
            f"{'a real difference' if diff.real else 'within the noise'}")
    return Verdict(text, diff.real, test_name(diff), diff.p, diff.mean, diff.low, diff.high)
