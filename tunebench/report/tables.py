"""The report's tables: per task the summary, generation, samples, learning-rate sweep and memory breakdown; per
set the environment; between sets the side-by-side comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunebench.measure import CATEGORIES
from tunebench.report.blocks import Table
from tunebench.report.formatting import fmt_accuracy, fmt_lr, fmt_percent, fmt_rate, fmt_ratio
from tunebench.report.groups import Group, Sweep, group_runs, validation_accuracy
from tunebench.report.load import ResultSet
from tunebench.report.settings import environment_summary, epochs_of, lr_rule
from tunebench.report.stats import ratio
from tunebench.report.tiers import TIERS_NOTE, accuracy_tiers, grouped_by_tier
from tunebench.units import format_bytes, format_seconds

MEMORY_SOURCES = {
    "cuda_train_peak": "CUDA max allocated in the training steps",
    "cuda_max_allocated": "CUDA max allocated",  # results before the training/evaluation split: the whole run
    "tensor_tracker": "tensor-tracker peak",
}


def memory_label(groups: Sequence[Group]) -> str:
    """What the peak memory figures are and what they include, from the results' own fields."""
    sources = set().union(*(g.memory_sources for g in groups))
    includes = {
        r.result.get("peak_memory_includes") for g in groups for r in g.runs if r.result.get("peak_memory_bytes")
    }
    if not sources:
        return "peak memory: not measured"
    if len(sources) > 1:
        return "peak memory is measured differently across runs (see each cell)"
    label = f"peak memory: {MEMORY_SOURCES.get(next(iter(sources)), 'unknown')}"
    includes.discard(None)
    return label + (f", which includes {' / '.join(sorted(includes))}" if includes else "")


def summary_table(groups: list[Group], sweeps: Sequence[Sweep] = ()) -> Table:
    """One row per method; with per-example outcomes, the rows go tier by tier (tunebench.report.tiers)."""
    tiers = accuracy_tiers(groups)
    groups = grouped_by_tier(groups, tiers)
    sources = set().union(*(g.memory_sources for g in groups))
    mixed = len(sources) > 1

    def memory_cell(g: Group) -> str:
        cell = format_bytes(g.mean("peak_memory_bytes"))
        return f"{cell} ({', '.join(sorted(MEMORY_SOURCES.get(s, s) for s in g.memory_sources))})" if mixed else cell

    def front_cell(g: Group) -> str:
        return ", ".join(name for name, on in (("memory", g.front_memory), ("speed", g.front_throughput)) if on) or "—"

    rows = [
        [
            f"**{g.label}**",
            g.family,
            fmt_percent(g.mean("trainable_percent")),
            fmt_accuracy(g),
            *([str(tiers[g.label])] if tiers else []),
            f"{g.f1:.1f}",
            memory_cell(g),
            fmt_rate(g.mean("tokens_per_second")),
            fmt_rate(g.mean("samples_per_second")),
            format_seconds(g.mean("train_seconds")),
            epochs_of(g),
            f"{'/'.join(fmt_lr(lr) for lr in sorted({r.result['config']['train']['lr'] for r in g.runs}))} "
            f"({lr_rule(g, sweeps)})",
            format_bytes(g.mean("checkpoint_bytes")),
            front_cell(g),
        ]
        for g in groups
    ]
    return Table(
        [
            "Method",
            "Family",
            "Trainable",
            "Test accuracy %",
            *(["Tier"] if tiers else []),
            "Macro-F1 %",
            "Peak memory",
            "Tokens/s",
            "Examples/s",
            "Train time",
            "Epochs",
            "Learning rate",
            "Checkpoint",
            "Pareto front",
        ],
        rows,
        f"Accuracy: mean ± 95% CI (t distribution) over seeds; {memory_label(groups)}. Speed is tokens/s, "
        "the non-padding tokens the network processed in training (each processed once) per second of train "
        "time: the Pareto front and every throughput sentence use it. Examples/s counts training examples over "
        "all epochs (the head on cached features sees many per backbone pass), so it is shown apart. Train time "
        "excludes evaluation." + (f" {TIERS_NOTE}" if tiers else ""),
    )


def tuned_table(sweeps: Sequence[Sweep]) -> Table:
    """Each swept method's rates: validation (what chose) and test (never used to choose)."""
    rows = []
    for sweep in sweeps:
        for lr, runs in sweep.by_lr.items():
            test = 100 * math.fsum(r.result["test_accuracy"] for r in runs) / len(runs)
            rows.append(
                [
                    f"**{sweep.label}**" if lr == sweep.selected else sweep.label,
                    fmt_lr(lr),
                    f"{100 * validation_accuracy(runs):.1f}",
                    f"{test:.1f}",
                    str(len(runs)),
                    "selected" if lr == sweep.selected else "",
                ]
            )
    return Table(
        ["Method", "Learning rate", "Validation accuracy %", "Test accuracy %", "Seeds", ""],
        rows,
        "Per method, the learning rate with the best mean validation accuracy over seeds is kept (ties: the "
        "smaller rate); test accuracy is shown, never used to choose. The tables above show the kept rate.",
    )


def generation_table(groups: list[Group]) -> Table:
    """Generate tasks: what the headline exact match leaves out, and each method's gain over the untuned model."""
    baseline = next((g for g in groups if g.method == "none"), None)

    def forgetting(g: Group, change: str) -> str:
        """The mean of one change over the runs measured from the unmodified checkpoint (with a build_change;
        an older result's change started at the built model)."""
        measured = [r.result["forgetting"] for r in g.runs if "build_change" in (r.result.get("forgetting") or {})]
        return f"{math.fsum(f[change] for f in measured) / len(measured):+.3f}" if measured else "—"

    rows = [
        [
            f"**{g.label}**",
            f"{g.accuracy:.1f}",
            f"{g.accuracy - baseline.accuracy:+.1f}" if baseline else "—",
            *_choice_cells(g, baseline),
            fmt_percent(100 * g.mean("test_answer_token_accuracy")),
            f"{g.mean('test_answer_perplexity'):.2f}",
            forgetting(g, "change"),
            forgetting(g, "build_change"),
            forgetting(g, "training_change"),
            "yes" if any(r.result.get("lm_head_untied") for r in g.runs) else "",
        ]
        for g in groups
    ]
    return Table(
        [
            "Method",
            "Exact match %",
            "Gain over untuned",
            "Choice accuracy %",
            "Choice gain over untuned",
            "Answer-token accuracy",
            "Answer perplexity",
            "Forgetting",
            "of which build",
            "of which training",
            "LM head untied",
        ],
        rows,
        "Exact match of greedy generations (strip, lower case, trailing punctuation) is the test accuracy above. "
        "Choice accuracy (closed-set tasks): the candidate answer with the highest summed log-likelihood given the "
        "prompt is the reference, as lm-evaluation-harness scores multiple choice; it reads what the model knows "
        "whatever its answer format. "
        "Answer-token accuracy and perplexity are under teacher forcing. Forgetting is the change of the "
        "next-token loss on fixed IMDB reviews, from the unmodified checkpoint to the trained model (positive: the "
        "model got worse at general English): the method's build (qlora's quantization) plus its training. none "
        "is the untuned model: no training.",
    )


def _choice_cells(g: Group, baseline: Group | None) -> list[str]:
    """Choice accuracy % and its gain over the untuned model; dashes where the task has no closed set."""
    choice = g.mean("test_choice_accuracy")
    if choice is None:
        return ["—", "—"]
    base = baseline.mean("test_choice_accuracy") if baseline else None
    return [f"{100 * choice:.1f}", f"{100 * (choice - base):+.1f}" if base is not None else "—"]


def samples_table(groups: list[Group]) -> Table:
    """A few test prompts with each method's generation (the first seed's run)."""
    rows = []
    for g in groups:
        for sample in g.runs[0].result.get("sample_generations") or []:
            prompt = " ".join(sample["prompt"].split())
            rows.append(
                [
                    g.label,
                    prompt[:100] + ("…" if len(prompt) > 100 else ""),
                    sample["reference"],
                    repr(sample["output"]),
                ]
            )
    return Table(["Method", "Prompt", "Reference", "Output"], rows, "The first test examples; outputs as generated.")


def breakdown_table(groups: list[Group]) -> Table:
    rows = []
    for g in groups:
        parts = g.memory_at_peak()
        cells = [format_bytes(parts[p]) if parts else "—" for p in CATEGORIES]
        rows.append([g.label, *cells, format_bytes(math.fsum(parts.values())) if parts else "—"])
    return Table(
        ["Method", "Weights", "Buffers", "Gradients", "Optimizer state", "Activations", "Other", "Total"],
        rows,
        "Live tensors at the step's memory peak, by role (tensor tracker; mean over seeds).",
    )


def environment_table(result_set: ResultSet) -> Table:
    summaries = [environment_summary(r.result.get("environment") or {}) for r in result_set.runs]
    rows = []
    for key in summaries[0]:
        values = list(dict.fromkeys(s[key] for s in summaries))
        rows.append([key, " / ".join(values)])
    return Table(["", "Value"], rows, align="ll")


def comparison_table(reference: ResultSet, other: ResultSet, task: str) -> Table | None:
    """Per method: the other set's numbers relative to the reference set's."""
    ref_groups = {g.label: g for g in group_runs(reference, task)}
    rows = []
    for g in group_runs(other, task):
        base = ref_groups.get(g.label)
        if base is None:
            continue
        ratios = [ratio(g.mean(k), base.mean(k)) for k in ("peak_memory_bytes", "tokens_per_second", "train_seconds")]
        rows.append(
            [
                f"**{g.label}**",
                fmt_accuracy(base),
                fmt_accuracy(g),
                f"{g.accuracy - base.accuracy:+.1f}",
                *(fmt_ratio(r) if r is not None else "—" for r in ratios),
            ]
        )
    if not rows:
        return None
    sources = [_sources(result_set, task) for result_set in (reference, other)]
    caveat = (
        f" Peak memory is {sources[0]} in {reference.label} but {sources[1]} in {other.label}: "
        "its ratio compares different measurements."
        if sources[0] != sources[1]
        else ""
    )
    return Table(
        [
            "Method",
            f"Accuracy % in {reference.label}",
            f"Accuracy % in {other.label}",
            "Δ points",
            "Peak memory ratio",
            "Tokens/s ratio",
            "Train time ratio",
        ],
        rows,
        f"Ratios are {other.label} ÷ {reference.label}.{caveat}",
    )


def _sources(result_set: ResultSet, task: str) -> str:
    names = {MEMORY_SOURCES.get(s, s) for g in group_runs(result_set, task) for s in g.memory_sources}
    return " and ".join(sorted(names)) or "not measured"
