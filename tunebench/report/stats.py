"""The statistics of a comparison: means with confidence intervals over seeds, paired tests over test examples
(bootstrap interval, exact McNemar, detectable difference), Pareto fronts, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same results give the same report
Z_TWO_SIDED_95, Z_POWER_80 = 1.959964, 0.841621


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


def paired_bootstrap(
    a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], confidence: float = 0.95, resamples: int = RESAMPLES
) -> tuple[float, float, float]:
    """Accuracy difference mean(a) - mean(b) and its paired bootstrap interval (low, high), as fractions.

    a and b: one 0/1 list per seed, every list over the same test examples in the same order. Each resample
    draws each method's seeds with replacement (when it has several), then the examples with replacement, the
    same examples for both methods: the pairing that makes the interval narrower than two unpaired ones."""
    a_runs, b_runs = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a_runs.shape[1]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    stats = []
    for start in range(0, resamples, 500):  # chunks: resamples x n at once would not fit for large test sets
        size = min(500, resamples - start)
        per_example = _seed_resample(rng, a_runs, size) - _seed_resample(rng, b_runs, size)  # (size, n)
        examples = rng.integers(0, n, size=(size, n))
        stats.append(np.take_along_axis(per_example, examples, axis=1).mean(axis=1))
    low, high = np.quantile(np.concatenate(stats), [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(a_runs.mean() - b_runs.mean()), float(low), float(high)


def _seed_resample(rng: np.random.Generator, runs: np.ndarray, size: int) -> np.ndarray:
    """(size, n): each example's mean outcome over a resample of the seeds (the seeds themselves when one)."""
    seeds = runs.shape[0]
    if seeds == 1:
        return np.broadcast_to(runs[0], (size, runs.shape[1]))
    weights = rng.multinomial(seeds, [1 / seeds] * seeds, size=size) / seeds
    return weights @ runs


def mcnemar_p(a: Sequence[int], b: Sequence[int]) -> float:
    """Exact two-sided McNemar test: the binomial test of the discordant pairs (a right, b wrong against the
    reverse) at one half; 1 when there are none."""
    from scipy import stats  # lazy: scipy is slow to import, and only a report needs it

    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    if a_only + b_only == 0:
        return 1.0
    return float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def discordance(a: Sequence[int], b: Sequence[int]) -> float:
    """The share of examples on which exactly one of the two is right."""
    return sum(1 for x, y in zip(a, b, strict=True) if bool(x) != bool(y)) / len(a)


def detectable_difference(discordant_share: float, n: int) -> float:
    """The smallest accuracy difference (a fraction) a paired test on n examples detects two-sided at 95% with 80%
    power: (z_0.975 + z_0.8) * sqrt(p_d / n), p_d the share of discordant pairs (the normal approximation to
    McNemar's test for a small difference)."""
    return (Z_TWO_SIDED_95 + Z_POWER_80) * math.sqrt(discordant_share / n)


def size_to_detect(discordant_share: float, difference: float) -> int:
    """The test size at which detectable_difference falls to difference (a fraction)."""
    return math.ceil((Z_TWO_SIDED_95 + Z_POWER_80) ** 2 * discordant_share / difference**2)
