"""The study's statistics: t-intervals over seeds, Wilson intervals for accuracy, the early loss spike."""

from __future__ import annotations

import math
import statistics

# two-sided 95% Student t quantiles by degrees of freedom (df > 30: normal)
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
}


def t95(df: int) -> float:
    if df <= 0:
        return math.nan
    if df in _T95:
        return _T95[df]
    if df > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]  # the next smaller df: a slightly wider interval


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval over the values); half-width NaN for one value."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], math.nan
    return statistics.fmean(vals), t95(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))


def wilson95(correct: int, total: int) -> tuple[float, float, float]:
    """(accuracy, low, high): the Wilson score interval for a binomial proportion (Wilson 1927),
    95% (z = 1.96). At 0 or ``total`` correct the bound is exactly 0 or 1 (floating point would give
    -1e-17 or 1 - 1e-16, printed "-0.00%"), and the bounds stay in [0, 1]."""
    if total <= 0:
        return math.nan, math.nan, math.nan
    z, p = 1.96, correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == total else min(1.0, centre + half)
    return p, lo, hi


def early_spike(evals: list[dict], key: str, until_step: int) -> float:
    """The largest rise of ``key`` above its step-0 value during steps 1..until_step (negative: it only fell)."""
    start = next((e[key] for e in evals if e["step"] == 0 and key in e), None)
    window = [e[key] for e in evals if 0 < e["step"] <= until_step and key in e]
    if start is None or not window:
        return math.nan
    return max(window) - start
