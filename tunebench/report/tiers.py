"""Methods grouped by what the paired test can tell apart: the summary table lists them tier by tier."""

from __future__ import annotations

from collections.abc import Sequence

from tunebench.report.groups import Group
from tunebench.report.paired import compare

TIERS_NOTE = (
    "Tier: tier 1 is the most accurate method and every method tied with it (its paired 95% interval against it "
    "includes 0); each later tier is the most accurate method left and the methods left that are tied with it. "
    "Methods in one tier are not separated by this test set."
)


def accuracy_tiers(groups: Sequence[Group]) -> dict[str, int] | None:
    """Each group's tier by label, or None when some pair cannot be compared (no per-example outcomes) or there
    is nothing to compare."""
    if len(groups) < 2:
        return None
    left = sorted(groups, key=lambda g: -g.accuracy)
    tiers: dict[str, int] = {}
    number = 0
    while left:
        leader, number = left[0], number + 1
        against = {g.label: compare(leader, g) for g in left[1:]}
        if not all(against.values()):
            return None
        tier = [leader, *(g for g in left[1:] if not against[g.label].separated)]
        tiers.update((g.label, number) for g in tier)
        left = [g for g in left if g not in tier]
    return tiers


def grouped_by_tier(groups: list[Group], tiers: dict[str, int] | None) -> list[Group]:
    """The groups tier by tier, in their given order within a tier; unchanged without tiers."""
    if tiers is None:
        return groups
    return sorted(groups, key=lambda g: tiers[g.label])  # stable: the method order within a tier
