"""The statistics behind "better by more than the noise": 95% confidence intervals and differences of means.

One place for the numbers that ``bilstm-exp compare`` prints and cross-validation logs (``cv/*_ci95``):
the half-width of the 95% interval of a mean (Student's t), and the difference between two configurations,
paired over the folds or seeds they share, else Welch's unequal-variance test. The standard library and SciPy
only, so any layer may use it (``statistics`` sums exactly: identical values have a spread of 0, not 1e-16).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from statistics import fmean, stdev, variance


def t_quantile(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def ci95(values: Sequence[float]) -> float | None:
    """Half-width of the 95% confidence interval of the mean (t distribution); None below n=2 (no spread)."""
    if len(values) < 2:
        return None
    return t_quantile(len(values) - 1) * stdev(values) / math.sqrt(len(values))


@dataclass
class Difference:
    """How much better ``a`` is than ``b`` (positive: better), its 95% interval and the test's p-value."""

    mean: float
    low: float
    high: float
    p: float
    paired: list[Hashable]  # the shared keys of a paired test; empty for Welch's test
    n_a: int
    n_b: int

    @property
    def real(self) -> bool:
        """Beyond the noise at the 5% level (the interval excludes 0)."""
        return self.p < 0.05


def difference(a: dict[Hashable, float], b: dict[Hashable, float], higher_is_better: bool) -> Difference:
    """``a`` minus ``b``, signed so that positive means better: a paired t-test over the keys both have
    (the same fold or seed) when they share two or more, else Welch's t-test over all values. Each side
    needs two values or more."""
    sign = 1.0 if higher_is_better else -1.0
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) >= 2:
        return _paired(sign, [a[k] for k in shared], [b[k] for k in shared], shared, len(a), len(b))
    return _welch(sign, list(a.values()), list(b.values()))


def _paired(sign: float, x: list[float], y: list[float], keys: list[Hashable], n_a: int, n_b: int) -> Difference:
    from scipy import stats

    diffs = [sign * (a - b) for a, b in zip(x, y, strict=True)]
    mean, sd, n = fmean(diffs), stdev(diffs), len(diffs)
    if sd == 0:
        p, half = (0.0 if mean else 1.0), 0.0
    else:
        p = float(stats.ttest_rel(x, y).pvalue)
        half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Difference(mean, mean - half, mean + half, p, keys, n_a, n_b)


def _welch(sign: float, x: list[float], y: list[float]) -> Difference:
    from scipy import stats

    mean = sign * (fmean(x) - fmean(y))
    vx, vy = variance(x) / len(x), variance(y) / len(y)
    if vx + vy == 0:
        p, half = (0.0 if mean else 1.0), 0.0
    else:
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
        df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
        half = t_quantile(df) * math.sqrt(vx + vy)
    return Difference(mean, mean - half, mean + half, p, [], len(x), len(y))
