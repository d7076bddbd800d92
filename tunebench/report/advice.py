"""The "What to use" advice and the flags: every sentence computed from the groups' numbers, nothing in it fixed
text about a method, and what makes the comparison less than like for like."""

from __future__ import annotations

from collections.abc import Sequence

from tunebench.report.formatting import fmt_accuracy_text, fmt_ratio, fmt_share
from tunebench.report.groups import Group, Sweep, completed_runs, select_learning_rates
from tunebench.report.load import ResultSet
from tunebench.report.paired import BASELINE, Paired, compare, signed, without_outcomes
from tunebench.report.settings import (
    differing_settings,
    environment_summary,
    epochs_of,
    lr_rule,
    pooling_of,
    precision_of,
)
from tunebench.report.stats import ratio
from tunebench.units import format_bytes

TOLERANCE_POINTS = 1.0  # "within a point of the best": the accuracy a cheaper method may give up
NEAR_CHANCE_POINTS = 5.0  # closer than this to chance, accuracy cannot rank the methods


def recommendation(groups: list[Group], num_labels: int | None) -> list[str]:
    """Plain-language advice for one task, every clause computed from the groups' numbers. Accuracy prefers a
    method only where the paired interval excludes 0; among the methods tied with the best, the lightest is
    chosen. The untuned baseline is never recommended."""
    if not groups:
        return ["No completed runs: nothing to recommend."]
    baseline = next((g for g in groups if g.method == BASELINE), None)
    candidates = [g for g in groups if g.method != BASELINE]
    if not candidates:
        return [f"Only the untuned baseline **{baseline.label}** completed: there is no method to recommend."]
    best = max(candidates, key=lambda g: g.accuracy)
    if len(candidates) == 1:
        only = f"Only **{best.label}** completed ({fmt_accuracy_text(best)}): there is nothing to compare."
        return [only, *_gains(candidates, baseline)]
    with_memory = [g for g in candidates if g.mean("peak_memory_bytes")]
    lowest = min(with_memory, key=lambda g: g.mean("peak_memory_bytes"), default=None)
    against_best = {g.label: compare(best, g) for g in candidates if g is not best}
    if all(against_best.values()):
        lines, chosen = _paired_choice(candidates, best, against_best, with_memory, lowest)
    else:
        lines, chosen = _tolerance_choice(candidates, best, with_memory, lowest)
        lines.append(_not_paired(without_outcomes(groups)))
    lines += _gains(candidates, baseline)
    lines += _against_baseline(groups, best)
    if lowest is not None and lowest is not chosen:
        lines.append(
            f"On the tightest memory budget, **{lowest.label}** needs the least: "
            f"{format_bytes(lowest.mean('peak_memory_bytes'))} at peak, "
            f"{best.accuracy - lowest.accuracy:.1f} points below the best."
        )
    lines.extend(_caveats(groups, best, num_labels))
    return lines


def _not_paired(labels: list[str]) -> str:
    if not labels:
        return "The paired test was not possible: the methods' test sets differ in size."
    return (
        f"The paired test was not possible: {_names_of(labels)} {'has' if len(labels) == 1 else 'have'} no "
        "per-example test outcomes (`test_correct`; older results), so accuracy is compared on seed intervals "
        f"and a {TOLERANCE_POINTS:g}-point tolerance instead."
    )


def _tolerance_choice(
    candidates: list[Group], best: Group, with_memory: list[Group], lowest: Group | None
) -> tuple[list[str], Group]:
    """Without per-example outcomes: the lightest method within a point of the best (the seed intervals say
    whether the seeds separate them)."""
    tied = [g for g in candidates if g is not best and best.overlaps(g) and g.n > 1 and best.n > 1]
    tie_note = f"; its 95% interval overlaps {_names(tied)}, so these seeds do not separate them" if tied else ""
    near = [g for g in candidates if best.accuracy - g.accuracy <= TOLERANCE_POINTS]
    lightest = min((g for g in near if g in with_memory), key=lambda g: g.mean("peak_memory_bytes"), default=best)
    fastest = max(near, key=lambda g: g.mean("tokens_per_second") or 0)
    return [
        f"**{best.label}** is the most accurate at {fmt_accuracy_text(best)}{tie_note}.",
        _choice(candidates, best, lightest, lowest, fastest),
    ], lightest


def _paired_choice(
    candidates: list[Group],
    best: Group,
    against_best: dict[str, Paired],
    with_memory: list[Group],
    lowest: Group | None,
) -> tuple[list[str], Group]:
    """With per-example outcomes: each method against the best on the paired interval; the lightest of the
    methods tied with the best is the one to use."""
    lines = [f"**{best.label}** is the most accurate at {fmt_accuracy_text(best)}."]
    for g in candidates:
        if g is best:
            continue
        paired = against_best[g.label]
        if paired.separated:
            lines.append(f"{best.label} is more accurate than {g.label}: {paired.text()}, McNemar p = {paired.p:.3g}.")
        else:
            lines.append(f"{best.label} and {g.label} are tied on accuracy: {paired.text()}.")
    tied = [g for g in candidates if g is best or not against_best[g.label].separated]
    lightest = min((g for g in tied if g in with_memory), key=lambda g: g.mean("peak_memory_bytes"), default=best)
    if lightest is not best:
        share = fmt_share(ratio(lightest.mean("peak_memory_bytes"), best.mean("peak_memory_bytes")))
        lines.append(
            f"**Use {lightest.label}**: tied on accuracy with {best.label} "
            f"({signed(-against_best[lightest.label].difference)} points) at {share} of its peak memory"
            f"{_speed_clause(lightest, best)}."
        )
    elif len(tied) > 1:
        lines.append(f"**Use {best.label}**: no method tied with it on accuracy needs less memory.")
    else:
        lines.append(
            f"**Use {best.label}**: the paired intervals put it ahead of every other method"
            f"{', and it needs the least memory' if best is lowest else ''}."
        )
    return lines, lightest


def _gains(candidates: list[Group], baseline: Group | None) -> list[str]:
    """Each method's gain over the untuned baseline, paired where the results allow."""
    if baseline is None:
        return []
    parts = []
    for g in candidates:
        paired = compare(g, baseline)
        parts.append(
            f"{g.label} {paired.text()}" if paired else f"{g.label} {signed(g.accuracy - baseline.accuracy)} points"
        )
    return [
        f"Gain over the untuned baseline {baseline.label}, never recommended ({fmt_accuracy_text(baseline)}): "
        + "; ".join(parts)
        + "."
    ]


def _choice(groups: list[Group], best: Group, lightest: Group, lowest: Group | None, fastest: Group) -> str:
    """'Use X': the lightest method within a point of the best, or the best itself and why.

    lightest and fastest: the lowest peak memory and the highest throughput within that point; lowest: the lowest
    peak memory of all."""
    if lightest is not best:
        gap = best.accuracy - lightest.accuracy
        claim = (
            f"as accurate as {best.label}"
            if gap < 0.05
            else f"unless the last {gap:.1f} points matter: it is within {TOLERANCE_POINTS:g} point of {best.label}"
        )
        return (
            f"**Use {lightest.label}**{':' if gap < 0.05 else ''} {claim} at "
            f"{fmt_share(ratio(lightest.mean('peak_memory_bytes'), best.mean('peak_memory_bytes')))} of its peak "
            f"memory{_speed_clause(lightest, best)}."
        )
    fastest_overall = max(groups, key=lambda g: g.mean("tokens_per_second") or 0)
    if best is lowest:
        why = "it is the most accurate and needs the least memory" + (
            ", and it is the fastest too" if best is fastest_overall else ""
        )
    else:
        why = f"no method within {TOLERANCE_POINTS:g} point of its accuracy needs less memory"
        if fastest is not best and best.mean("tokens_per_second"):
            speedup = ratio(fastest.mean("tokens_per_second"), best.mean("tokens_per_second"))
            why += f"; {fastest.label}, within that point too, has {fmt_ratio(speedup)} its throughput"
    return f"**Use {best.label}**: {why}."


def _against_baseline(groups: list[Group], best: Group) -> list[str]:
    """One sentence per other method: its accuracy, memory, throughput and checkpoint against full fine-tuning
    (the best method where there is no single full group)."""
    fulls = [g for g in groups if g.method == "full"]
    baseline = fulls[0] if len(fulls) == 1 else best
    base_name = "full fine-tuning" if baseline.method == "full" else baseline.label
    lines = []
    for g in groups:
        if g is baseline or g.method == BASELINE:  # the untuned model has its own line: its gains
            continue
        sentence = f"{g.label} {_accuracy_against(g, baseline, base_name)}"
        memory = ratio(g.mean("peak_memory_bytes"), baseline.mean("peak_memory_bytes"))
        if memory is not None:
            sentence += f" at {fmt_share(memory)} of its peak memory"
        extras = []
        throughput = ratio(g.mean("tokens_per_second"), baseline.mean("tokens_per_second"))
        if throughput is not None:
            extras.append(f"{fmt_ratio(throughput)} its throughput")
        checkpoint = ratio(g.mean("checkpoint_bytes"), baseline.mean("checkpoint_bytes"))
        if checkpoint is not None and checkpoint < 0.5:  # only worth saying when the saving is large
            size = format_bytes(g.mean("checkpoint_bytes"))
            extras.append(f"a {size} checkpoint ({fmt_share(checkpoint)} of its size)")
        lines.append(sentence + (f", with {' and '.join(extras)}" if extras else "") + ".")
    return lines


def _accuracy_against(g: Group, baseline: Group, base_name: str) -> str:
    """How g's accuracy stands against the baseline's: the paired verdict where the results allow one (a tie is
    said as a tie, never as a share), else the share of its accuracy."""
    paired = compare(g, baseline)
    if paired is not None:
        verdict = "is tied with" if not paired.separated else "is ahead of" if paired.difference > 0 else "is behind"
        return f"{verdict} {base_name} on accuracy ({paired.text()})"
    share = ratio(g.accuracy, baseline.accuracy)  # None when the baseline scored 0 (an untrained generator)
    reaches = f"reaches {fmt_share(share)} of" if share is not None else "is compared with"
    return f"{reaches} {base_name}'s accuracy ({g.accuracy - baseline.accuracy:+.1f} points)"


def _names(groups: Sequence[Group]) -> str:
    return _names_of([g.label for g in groups])


def _speed_clause(g: Group, reference: Group) -> str:
    """', at 2.1× its throughput' style: the tokens/s ratio, the speed the Pareto front uses."""
    speedup = ratio(g.mean("tokens_per_second"), reference.mean("tokens_per_second"))
    if speedup is None or 0.95 <= speedup <= 1.05:
        return ", at about the same throughput" if speedup is not None else ""
    return f", at {fmt_ratio(speedup)} its throughput (tokens/s)"


def _caveats(groups: list[Group], best: Group, num_labels: int | None) -> list[str]:
    out = []
    widths = [g.accuracy_ci for g in groups if g.accuracy_ci is not None]
    if num_labels:
        chance = 100 / num_labels
        why = None
        if best.accuracy - chance < NEAR_CHANCE_POINTS:
            why = f"the best accuracy is only {best.accuracy - chance:.1f} points above chance"
        elif best.accuracy_ci is not None and best.accuracy - best.accuracy_ci < chance:
            why = "the best method's 95% interval reaches below chance"
        if why:
            out.append(
                f"Caution: {why} ({chance:.0f}% with {num_labels} labels), so accuracy cannot rank these methods "
                "yet; train longer or on more data before choosing on accuracy. The cost figures stand."
            )
    if widths and max(widths) > NEAR_CHANCE_POINTS:
        seeds = sorted({g.n for g in groups if g.accuracy_ci is not None})
        out.append(
            f"The 95% intervals are wide (up to ±{max(widths):.1f} points with {'/'.join(map(str, seeds))} seeds): "
            "more seeds would narrow them."
        )
    single = [g for g in groups if g.n == 1]
    if single:
        typical = f" (the methods with several seeds vary by up to ±{max(widths):.1f} points)" if widths else ""
        out.append(
            f"{_names(single)} {'has' if len(single) == 1 else 'have'} a single seed: "
            f"differences of a few points may be seed noise{typical}."
        )
    return out


def _by_value(groups: Sequence[Group], value) -> dict[str, list[str]]:
    """value -> the labels of the groups whose runs have it."""
    out: dict[str, list[str]] = {}
    for g in groups:
        for v in dict.fromkeys(value(g, r) for r in g.runs):
            out.setdefault(v, []).append(g.label)
    return out


def _listing(by_value: dict[str, list[str]]) -> str:
    return "; ".join(f"{v} for {_names_of(labels)}" for v, labels in by_value.items())


def _names_of(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def like_for_like(groups: list[Group], sweeps: Sequence[Sweep] = ()) -> list[str]:
    """Plain sentences for what a method comparison must share and these runs do not: training budget,
    pooling, precision rule, and the rule that chose each learning rate."""
    out = []
    budget = _by_value(groups, lambda g, r: epochs_of(Group(g.task, g.method, g.label, [r])))
    if len(budget) > 1:
        out.append(
            f"Not the same training budget: epochs {_listing(budget)}. Accuracy differences partly reflect "
            "the extra training, not only the method."
        )
    pooling = _by_value(groups, lambda g, r: pooling_of(r.result))
    if len(pooling) > 1:
        out.append(f"Not the same pooling: {_listing(pooling)}.")
    precision = _by_value(groups, lambda g, r: precision_of(r.result))
    if len(precision) > 1:
        out.append(f"Not the same precision rule: {_listing(precision)}.")
    trained = [g for g in groups if g.mean("trainable_params")]  # the untuned baseline has no rate to choose
    rules = _by_value(trained, lambda g, r: lr_rule(g, sweeps))
    if len(rules) > 1:
        out.append(f"Learning rates were not chosen by one rule: {_listing(rules)}.")
    return out


def flags(result_set: ResultSet, task: str, groups: list[Group], sweeps: Sequence[Sweep] = ()) -> list[str]:
    """What makes the comparison less than like-for-like: budget, pooling, lr rule, other settings, seeds,
    sources."""
    out = like_for_like(groups, sweeps)
    for key, by_value in differing_settings(groups).items():
        listing = "; ".join(f"{v} for {', '.join(labels)}" for v, labels in by_value.items())
        out.append(f"Runs differ in `{key}` beyond the method: {listing}.")
    unpaired = without_outcomes(groups)
    if unpaired and len(groups) > 1:
        out.append(_not_paired(unpaired))
    single = [g.label for g in groups if g.n == 1]
    if single:
        out.append(f"A single seed (no confidence interval) for: {', '.join(single)}.")
    sources = set().union(*(g.memory_sources for g in groups)) if groups else set()
    if len(sources) > 1:
        out.append(
            "Peak memory comes from different measurements (" + ", ".join(sorted(sources)) + "): not comparable."
        )
    completed = [r for g in groups for r in g.runs]
    environments = [environment_summary(r.result.get("environment") or {}) for r in completed]
    differing = [k for k in (environments[0] if environments else {}) if len({e[k] for e in environments}) > 1]
    if differing:
        out.append(f"The runs differ in their environment: {', '.join(differing)} (see Environment).")
    failed = [r for r in result_set.runs if r.grid["task"] == task and r.status in ("oom", "failed")]
    if failed:
        out.append(f"{len(failed)} run{'s' if len(failed) > 1 else ''} did not finish: see Failed runs.")
    return out


def task_advice(result_set: ResultSet, task: str, groups: list[Group]) -> list[str]:
    num_labels = next(
        ((r.result.get("task") or {}).get("num_labels") for r in result_set.runs if r.grid["task"] == task), None
    )
    advice = recommendation(groups, num_labels)
    confounds = like_for_like(groups, select_learning_rates(completed_runs(result_set, task))[1])
    settings = differing_settings(groups)
    if settings:
        confounds.append(f"The runs also differ in {', '.join(f'`{k}`' for k in settings)} (see Flags).")
    if confounds:
        advice.insert(
            0, "**Not like for like**, so the accuracy sentences below are confounded: " + " ".join(confounds)
        )
    return advice
