"""The statistics of a comparison: means with confidence intervals over seeds, Pareto fronts, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its t-distribution confidence interval; None for a single value."""
    from scipy import stats  # lazy: scipy is slow to import, and only a report needs it

    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def pareto_front(points: Sequence[tuple[float, float]], minimize_x: bool) -> list[bool]:
    """For (cost-or-benefit x, accuracy y) points: True where no other point is at least as good on both
    axes and better on one. minimize_x: x is a cost (memory); otherwise a benefit (throughput)."""

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        x_at_least = a[0] <= b[0] if minimize_x else a[0] >= b[0]
        return x_at_least and a[1] >= b[1] and a != b

    return [not any(dominates(other, p) for other in points) for p in points]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
