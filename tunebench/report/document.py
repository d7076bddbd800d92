"""The report as a document: a title and a list of blocks (advice, tables, figures, flags) built from the
result sets."""

from __future__ import annotations

from collections.abc import Sequence

from tunebench.report import plots
from tunebench.report.advice import flags, task_advice
from tunebench.report.blocks import Bullets, Details, Figure, Heading, Para, Table, slug
from tunebench.report.groups import Group, completed_runs, group_runs, method_rank, select_learning_rates
from tunebench.report.load import ResultSet, tasks_of
from tunebench.report.paired import CHOICE, all_pairs, paired_table, test_set_notes
from tunebench.report.settings import precision_note
from tunebench.report.tables import (
    breakdown_table,
    comparison_table,
    environment_table,
    generation_table,
    samples_table,
    summary_table,
    tuned_table,
)


def _colors(sets: Sequence[ResultSet]) -> dict[str, str]:
    """One color per method label across the whole report, so a method looks the same in every figure."""
    labels = sorted(
        {g.label: g.method for s in sets for t in tasks_of(s) for g in group_runs(s, t)}.items(),
        key=lambda item: (method_rank(item[1]), item[0]),
    )
    return {label: plots.PALETTE[i % len(plots.PALETTE)] for i, (label, _) in enumerate(labels)}


def _results_section(result_set: ResultSet, task: str, groups: list[Group], stem: str, colors: dict) -> list:
    """The task's table, breakdown, figures and flags."""
    if not groups:
        return [Para("No completed runs."), Bullets(flags(result_set, task, groups))]
    sweeps = select_learning_rates(completed_runs(result_set, task))[1]
    out = [summary_table(groups, sweeps)]
    if any("test_exact_match" in r.result for g in groups for r in g.runs):
        out += [
            Heading(3, "Generation"),
            generation_table(groups),
            Details("Sample generations", [samples_table(groups)]),
        ]
    pairs = all_pairs(groups)
    if pairs:
        out += [Heading(3, "Paired comparisons"), paired_table(pairs)]
    choice_pairs = all_pairs(groups, CHOICE)
    if choice_pairs:
        out += [Heading(3, "Paired comparisons: choice accuracy"), paired_table(choice_pairs, "choice accuracy")]
    out.append(Bullets([*test_set_notes(groups, sweeps, pairs), precision_note(groups)]))
    if sweeps:
        out += [Heading(3, "Learning rate tuned on validation"), tuned_table(sweeps)]
    out += [Details("Peak memory breakdown", [breakdown_table(groups)]), *_figures(groups, stem, colors)]
    task_flags = flags(result_set, task, groups, sweeps)
    return out + ([Heading(3, "Flags"), Bullets(task_flags)] if task_flags else [])


def _figures(groups: list[Group], stem: str, colors: dict) -> list[Figure]:
    """The task's Pareto fronts, memory breakdown (where the tensor tracker measured one) and curves."""
    points = [
        {
            "label": g.label,
            "accuracy": g.accuracy,
            "ci": g.accuracy_ci,
            "memory_bytes": g.mean("peak_memory_bytes"),
            "tokens_per_second": g.mean("tokens_per_second"),
            "front_memory": g.front_memory,
            "front_throughput": g.front_throughput,
        }
        for g in groups
    ]
    memory_rows = [{"label": g.label, "at_peak": g.memory_at_peak()} for g in groups]
    curve_runs = [{"label": g.label, "curves": r.result.get("curves") or {}} for g in groups for r in g.runs]
    out = [
        Figure(
            f"pareto-{stem}.svg",
            plots.pareto_figure(points, colors),
            "Pareto fronts: accuracy against peak memory and against throughput.",
        )
    ]
    if any(r["at_peak"] for r in memory_rows):
        out.append(
            Figure(
                f"memory-{stem}.svg",
                plots.memory_figure(memory_rows),
                "Memory breakdown at the peak: weights, gradients, optimizer state, activations.",
            )
        )
    out.append(
        Figure(
            f"curves-{stem}.svg",
            plots.curves_figure(curve_runs, colors),
            "Training loss and validation accuracy per run (one line per seed).",
        )
    )
    return out


def _hardware(result_set: ResultSet) -> str:
    """'NVIDIA H100 80GB HBM3' or 'CPU: Intel Xeon (2 CPUs)': what a side-by-side reader needs first."""
    machines = []
    for r in result_set.runs:
        env = r.result.get("environment") or {}
        gpu = env.get("gpu")
        machines.append(gpu["name"] if gpu else f"CPU: {env.get('cpu', '?')} ({env.get('cpu_count', '?')} CPUs)")
    return " / ".join(dict.fromkeys(machines))


def build_document(sets: list[ResultSet], command: str) -> tuple[str, list]:
    """The report as a title and a list of blocks, rendered afterwards as Markdown and as HTML."""
    colors = _colors(sets)
    several = len(sets) > 1
    title = "tunebench report: " + " vs ".join(s.label for s in sets)
    blocks: list = [Para(_intro(sets, command)), Heading(2, "What to use")]

    sections: list = []
    for s in sets:
        for task in tasks_of(s):
            groups = group_runs(s, task)
            where = f"{task} — {s.label}" if several else task
            blocks += [Heading(3, where), Bullets(task_advice(s, task, groups))]
            sections += [Heading(2, f"Results: {where}")]
            sections += _results_section(s, task, groups, slug(s.label, task) if several else slug(task), colors)
    blocks += sections
    if several:
        blocks += _side_by_side(sets)
    blocks += _unfinished_runs(sets)

    blocks.append(Heading(2, "Environment"))
    for s in sets:
        if several:
            blocks.append(Heading(3, s.label))
        blocks.append(environment_table(s))
    return title, blocks


def _intro(sets: Sequence[ResultSet], command: str) -> str:
    """How many runs, from where, finished when, made by which command; and the files that were skipped."""
    total = sum(len(s.runs) for s in sets)
    finished = sorted(r.result.get("finished_at") or r.result["started_at"] for s in sets for r in s.runs)
    first, last = finished[0][:10], finished[-1][:10]
    intro = (
        f"{total} runs from {', '.join(f'`{s.folder}`' for s in sets)}, finished "
        f"{f'on {first}' if first == last else f'{first} to {last}'}. "
        f"Generated from the result files by `{command}`; do not edit by hand."
    )
    skipped = [f"`{s.folder}`: {s.skipped_files}" for s in sets if s.skipped_files]
    if skipped:
        intro += f" Skipped JSON files that are not complete tunebench results: {', '.join(skipped)}."
    for s in sets:
        if s.foreign_files:
            intro += (
                f" Skipped {len(s.foreign_files)} result files in `{s.folder}` that belong to no run of suite "
                f"`{s.suite}` (`tunebench bench --dry-run` lists them): {', '.join(s.foreign_files)}."
            )
    return intro


def _side_by_side(sets: Sequence[ResultSet]) -> list:
    """Each set's hardware, then every other set's numbers against the first's, task by task."""
    reference = sets[0]
    blocks: list = [
        Heading(2, "Side by side"),
        Bullets([f"**{s.label}**: {_hardware(s)}" for s in sets]),
    ]
    for other in sets[1:]:
        for task in tasks_of(other):
            table = comparison_table(reference, other, task)
            if table is not None:
                blocks += [Heading(3, f"{task}: {other.label} against {reference.label}"), table]
    return blocks


def _unfinished_runs(sets: Sequence[ResultSet]) -> list:
    """The runs that failed and the ones still running or interrupted: listed, never averaged."""
    blocks: list = []
    failed = [(s, r) for s in sets for r in s.runs if r.status in ("oom", "failed")]
    if failed:
        blocks += [
            Heading(2, "Failed runs"),
            Table(
                ["Run", "Set", "Task", "Method", "Status", "Error"],
                [
                    [r.run_id, s.label, r.grid["task"], str(r.grid["method"]), r.status, r.result.get("error") or ""]
                    for s, r in failed
                ],
                align="llllll",
            ),
        ]
    incomplete = [(s, r) for s in sets for r in s.runs if r.status in ("running", "interrupted")]
    if incomplete:
        blocks += [
            Heading(2, "Incomplete runs"),
            Para("Still running or interrupted: listed, never averaged."),
            Table(
                ["Run", "Set", "Task", "Method", "Status", "Started"],
                [
                    [r.run_id, s.label, r.grid["task"], str(r.grid["method"]), r.status, r.result["started_at"]]
                    for s, r in incomplete
                ],
                align="llllll",
            ),
        ]
    return blocks
