"""Paired comparisons of a task's methods over the same test examples: the accuracy difference with its paired
bootstrap interval and exact McNemar test, the table that lists them, and what the test set can resolve."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from tunebench.report.blocks import Table
from tunebench.report.groups import Group, Sweep
from tunebench.report.stats import (
    detectable_difference,
    discordance,
    mcnemar_p,
    paired_bootstrap,
    size_to_detect,
)

BASELINE = "none"  # the untuned model: a row to measure gains against, never a recommendation
RESOLVE_POINTS = 2.0  # the difference the notes say what test size would resolve
EXACT = "test_correct"  # per-example outcomes: the headline accuracy (exact match on generate tasks)
CHOICE = "test_choice_correct"  # per-example choice accuracy (closed-set generate tasks)


@dataclass
class Paired:
    """first against second on the same n test examples; differences and interval in points."""

    first: Group
    second: Group
    n: int
    difference: float
    low: float
    high: float
    p: float  # exact McNemar; with several seeds, the least significant seed pair
    discordant: float  # share of examples exactly one of the two gets right (mean over seed pairs)

    @property
    def separated(self) -> bool:
        """Does the paired 95% interval exclude 0?"""
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        """'+3.2 points, 95% CI −4.8 to +11.1, n = 63'."""
        return f"{signed(self.difference)} points, 95% CI {signed(self.low)} to {signed(self.high)}, n = {self.n}"


def signed(points: float) -> str:
    return f"{points:+.1f}".replace("-", "−")


def outcomes(group: Group, key: str = EXACT) -> list[list[int]] | None:
    """Each run's per-example test outcomes (0/1 in dataset order) under key; None when a run lacks them (older
    results, or no choice accuracy) or the runs disagree on the test size."""
    lists = [r.result.get(key) for r in group.runs]
    if any(x is None for x in lists) or len({len(x) for x in lists}) != 1:
        return None
    return lists


def compare(first: Group, second: Group, key: str = EXACT) -> Paired | None:
    """first against second on the outcomes under key, or None when either lacks them or their test sets differ
    in size."""
    a, b = outcomes(first, key), outcomes(second, key)
    if a is None or b is None or len(a[0]) != len(b[0]):
        return None
    difference, low, high = paired_bootstrap(a, b)
    pairs = _seed_pairs(first, second, key)
    return Paired(
        first,
        second,
        len(a[0]),
        100 * difference,
        100 * low,
        100 * high,
        max(mcnemar_p(x, y) for x, y in pairs),
        sum(discordance(x, y) for x, y in pairs) / len(pairs),
    )


def _seed_pairs(first: Group, second: Group, key: str) -> list[tuple[list[int], list[int]]]:
    """Runs paired by seed where both have it; otherwise in order, the shorter list repeated (the untuned
    baseline's single run against each seed of a trained method)."""
    by_seed = [{r.grid.get("seed"): r.result[key] for r in g.runs} for g in (first, second)]
    common = sorted(set(by_seed[0]) & set(by_seed[1]), key=str)
    if common:
        return [(by_seed[0][s], by_seed[1][s]) for s in common]
    a, b = list(by_seed[0].values()), list(by_seed[1].values())
    return [(a[i % len(a)], b[i % len(b)]) for i in range(max(len(a), len(b)))]


def without_outcomes(groups: Sequence[Group]) -> list[str]:
    """The labels of the groups the paired test cannot use."""
    return [g.label for g in groups if outcomes(g) is None]


def all_pairs(groups: Sequence[Group], key: str = EXACT) -> list[Paired]:
    return [p for a, b in itertools.combinations(groups, 2) if (p := compare(a, b, key)) is not None]


def paired_table(pairs: Sequence[Paired], measure: str = "accuracy") -> Table:
    rows = [
        [
            f"**{p.first.label}** − **{p.second.label}**",
            str(p.n),
            signed(p.difference),
            f"{signed(p.low)} to {signed(p.high)}",
            f"{p.p:.3g}",
            f"{100 * detectable_difference(p.discordant, p.n):.1f}",
            f"{size_to_detect(p.discordant, RESOLVE_POINTS / 100):,}" if p.discordant else "—",
        ]
        for p in pairs
    ]
    return Table(
        ["Methods", "n", "Difference (points)", "95% CI", "McNemar p", "Detectable (points)", "n for 2 points"],
        rows,
        f"Over the same test examples: the {measure} difference; its paired bootstrap 95% interval (10,000 "
        "resamples, fixed seed; the seeds are resampled, then the examples); the exact McNemar test (binomial on "
        "the discordant pairs; with several seeds, the least significant seed pair). Detectable: the smallest "
        "difference this n detects two-sided at 95% with 80% power, (1.96 + 0.84)·√(p_d / n) with p_d the "
        "observed share of discordant examples; n for 2 points: the test size at which that falls to 2 points.",
    )


def test_set_notes(groups: Sequence[Group], sweeps: Sequence[Sweep], pairs: Sequence[Paired]) -> list[str]:
    """What the comparison rests on: the test size, examples dropped, seeds, learning-rate trials, and the
    smallest difference the test set can resolve."""
    runs = [r for g in groups for r in g.runs]
    sizes = sorted({r.result["test_size"] for r in runs if "test_size" in r.result})
    task_sizes = sorted({((r.result.get("task") or {}).get("sizes") or {}).get("test") for r in runs} - {None})
    if sizes:
        out = [f"Test set: n = {' / '.join(map(str, sizes))} examples."]
    else:
        listed = " / ".join(map(str, task_sizes))
        known = f"= {listed} as the task lists it (before any dropped)" if task_sizes else "not recorded"
        out = [f"Test set: n {known}; these results carry no per-example outcomes, so no paired test."]
    dropped = [_dropped(r.result["too_long_dropped"]) for r in runs if r.result.get("too_long_dropped")]
    dropped = list(dict.fromkeys(dropped))
    if dropped:
        out.append(f"Examples dropped as too long: {' / '.join(dropped)}.")
    seeds = {g.label: g.n for g in groups}
    out.append(
        f"Seeds: {next(iter(seeds.values()))} per method."
        if len(set(seeds.values())) == 1
        else f"Seeds: {_per_label(seeds)}."
    )
    trials = _lr_trials(groups, sweeps)
    if trials:
        same = len(set(trials.values())) == 1
        out.append(
            f"Learning-rate trials: {next(iter(trials.values()))} per method."
            if same
            else f"Unequal tuning budgets: learning-rate trials {_per_label(trials)}; the methods tried more "
            "often had more chances to do well on validation."
        )
    if pairs:
        detectable = [100 * detectable_difference(p.discordant, p.n) for p in pairs]
        needed = [size_to_detect(p.discordant, RESOLVE_POINTS / 100) for p in pairs if p.discordant]
        out.append(
            f"Smallest detectable difference at this n: {min(detectable):.1f} to {max(detectable):.1f} points "
            "(two-sided 95%, 80% power, from each pair's observed discordance)"
            + (f"; resolving a 2-point difference needs about {max(needed):,} test examples." if needed else ".")
        )
    return out


def _dropped(by_split: dict) -> str:
    return ", ".join(f"{count} {split}" for split, count in by_split.items())


def _per_label(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {count}" for label, count in counts.items())


def _lr_trials(groups: Sequence[Group], sweeps: Sequence[Sweep]) -> dict[str, int]:
    """Learning rates tried per trained method (a swept one: its sweep's rates; otherwise one)."""
    swept = {s.label: len(s.by_lr) for s in sweeps}
    return {g.label: swept.get(g.method, 1) for g in groups if g.method != BASELINE}
