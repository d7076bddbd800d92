"""Comparison reports: results folders in; report.md, a self-contained index.html, results.csv and figures out.

A report is always regenerated from result files. Every sentence in "What to use" is computed from the
numbers; nothing in it is fixed text about a method.

Pipeline: load result sets -> per task, keep each method's learning rate with the best validation accuracy
where the suite swept one -> group runs by method (and any other grid axis that varies) -> aggregate over
seeds -> build a document of blocks -> render it as Markdown and as HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunebench import plots
from tunebench.config import flatten
from tunebench.errors import UserError
from tunebench.plots import MEMORY_PARTS
from tunebench.results import read_result, result_files
from tunebench.units import format_bytes, format_seconds

TOLERANCE_POINTS = 1.0  # "within a point of the best": the accuracy a cheaper method may give up
NEAR_CHANCE_POINTS = 5.0  # closer than this to chance, accuracy cannot rank the methods
# Config keys that do not change what is measured, or that name the run rather than configure it.
BOOKKEEPING_KEYS = {
    "method",
    "task",
    "seed",
    "out",
    "metrics",
    "train.trackers",
    "train.log_every",
    "train.save",
    "train.eval_batch_size",
}
MEMORY_SOURCES = {"cuda_max_allocated": "CUDA max allocated", "tensor_tracker": "tensor-tracker peak"}
# Settings a like-for-like comparison must share; each gets its own plain sentence (like_for_like).
BUDGET_KEYS = ("train.epochs", "train.max_steps")


# -- loading ----------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One result file as the report reads it: the run's id, its result and its grid point."""

    run_id: str
    result: dict
    grid: dict  # model, task, method, seed, batch_size, max_length, precision, plus the harness's axes

    @property
    def status(self) -> str:
        return self.result["status"]


@dataclass
class ResultSet:
    label: str
    folder: Path
    runs: list[RunResult]
    skipped_files: int  # JSON files that were not readable tunebench results (partial, corrupt, other)


def load_sets(folders: Sequence[str]) -> list[ResultSet]:
    """One result set per folder: its *.json files (the harness's) and any RUN/result.json below it (train's).

    Other JSON below it (saved checkpoints' configs, predictions) is not a candidate, so not reported as skipped.
    """
    sets = []
    for name in folders:
        folder = Path(name)
        if not folder.is_dir():
            raise UserError(f"results folder not found: {folder}")
        runs, skipped = [], 0
        for path in result_files(folder):
            result = read_result(path)
            if result is None:
                skipped += 1
                continue
            runs.append(RunResult(_run_id(path, result), result, _grid(result)))
        if not runs:
            raise UserError(f"no tunebench result files in {folder}")
        sets.append(ResultSet(folder.resolve().name, folder, runs, skipped))
    _disambiguate_labels(sets)
    return sets


def _run_id(path: Path, result: dict) -> str:
    if result.get("run_id"):
        return str(result["run_id"])
    return path.parent.name if path.name == "result.json" else path.stem  # `tunebench train` writes RUN/result.json


def _grid(result: dict) -> dict:
    """The run's grid point: derived from its config, overlaid by the harness's `grid` when it wrote one.

    The derived axes mean runs that differ in batch size, sequence length or precision are never averaged
    together, whether or not a harness named those axes.
    """
    cfg = result["config"]
    derived = {
        "model": cfg.get("model"),
        "method": cfg.get("method"),
        "seed": cfg.get("seed"),
        "batch_size": cfg.get("train", {}).get("batch_size"),
        "max_length": cfg.get("data", {}).get("max_length"),
        "precision": cfg.get("train", {}).get("mixed_precision"),
    }
    grid = derived | (result.get("grid") or {})
    grid["task"] = (result.get("task") or {}).get("name") or Path(str(grid.get("task") or cfg.get("task"))).stem
    return grid


def _disambiguate_labels(sets: list[ResultSet]) -> None:
    """results/a/quick and results/b/quick are labelled a/quick and b/quick."""
    labels = [s.label for s in sets]
    for s in sets:
        if labels.count(s.label) > 1:
            s.label = f"{s.folder.resolve().parent.name}/{s.label}"
    seen: dict[str, int] = {}
    for s in sets:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label} ({seen[s.label]})"


# -- statistics -------------------------------------------------------------------------------------


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its t-distribution confidence interval; None for a single value."""
    from scipy import stats

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


@dataclass
class Group:
    """The completed runs of one method (and grid variant) on one task: the unit of comparison."""

    task: str
    method: str
    label: str
    runs: list[RunResult]
    front_memory: bool = False
    front_throughput: bool = False
    accuracy: float = field(init=False)  # percent
    accuracy_ci: float | None = field(init=False)
    f1: float = field(init=False)  # percent

    def __post_init__(self) -> None:
        mean, half_width = mean_ci([r.result["test_accuracy"] for r in self.runs])
        self.accuracy, self.accuracy_ci = 100 * mean, (100 * half_width if half_width is not None else None)
        self.f1 = 100 * mean_ci([r.result["test_f1"] for r in self.runs])[0]

    @property
    def n(self) -> int:
        return len(self.runs)

    def mean(self, key: str) -> float | None:
        """The mean over seeds of a top-level number; None where no run measured it."""
        values = [r.result[key] for r in self.runs if r.result.get(key) is not None]
        return math.fsum(values) / len(values) if values else None

    @property
    def memory_sources(self) -> set[str]:
        return {r.result.get("peak_memory_source") for r in self.runs if r.result.get("peak_memory_bytes")}

    def memory_at_peak(self) -> dict[str, float] | None:
        breakdowns = [((r.result.get("memory") or {}).get("tensor") or {}).get("at_peak") for r in self.runs]
        breakdowns = [b for b in breakdowns if b]
        if not breakdowns:
            return None
        return {part: math.fsum(b.get(part, 0) for b in breakdowns) / len(breakdowns) for part in MEMORY_PARTS}

    def overlaps(self, other: Group) -> bool:
        """Do the two 95% intervals overlap? Unknown (a single seed) counts as overlapping: not separated."""
        if self.accuracy_ci is None or other.accuracy_ci is None:
            return True
        return abs(self.accuracy - other.accuracy) <= self.accuracy_ci + other.accuracy_ci


def _method_rank(method: str) -> tuple[int, str]:
    """The registry's order (tunebench.methods), then any other method (a module path) by name."""
    from tunebench.methods import registry

    order = list(registry())
    return (order.index(method), "") if method in order else (len(order), method)


def _axes(runs: Sequence[RunResult]) -> list[str]:
    """Grid axes (besides task, method and seed) that take several values within one method.

    Those runs must not be averaged together, so the axis joins the label. An axis that differs only
    between methods (head at batch size 64, say) keeps the method's plain name and is flagged instead.
    """
    keys = sorted({k for r in runs for k in r.grid} - {"task", "method", "seed"})
    methods = {r.grid.get("method") for r in runs}

    def varies(key: str, method: str) -> bool:
        return len({json.dumps(r.grid.get(key), sort_keys=True) for r in runs if r.grid.get("method") == method}) > 1

    return [k for k in keys if any(varies(k, m) for m in methods)]


def _label(run: RunResult, axes: Sequence[str]) -> str:
    method = str(run.grid.get("method"))
    return " · ".join([method, *(f"{k}={run.grid.get(k)}" for k in axes)]) if axes else method


def tasks_of(result_set: ResultSet) -> list[str]:
    return sorted({r.grid["task"] for r in result_set.runs})


@dataclass
class Sweep:
    """One method's learning-rate sweep: (lr, runs) per rate, and the rate kept."""

    label: str
    by_lr: dict[float, list[RunResult]]
    selected: float


def _validation(runs: Sequence[RunResult]) -> float:
    return math.fsum(r.result["best_validation_accuracy"] for r in runs) / len(runs)


def select_learning_rates(runs: Sequence[RunResult]) -> tuple[list[RunResult], list[Sweep]]:
    """Where runs differ only in the harness's `lr` axis (and seed), keep the rate with the best mean
    validation accuracy over seeds; ties go to the smaller rate. One rule for every method; test accuracy
    plays no part. Returns the runs kept and each sweep."""
    partitions: dict[str, dict[float, list[RunResult]]] = {}
    for run in runs:
        rest = {k: v for k, v in run.grid.items() if k not in ("lr", "seed")}
        partitions.setdefault(json.dumps(rest, sort_keys=True, default=str), {}).setdefault(
            run.grid.get("lr"), []
        ).append(run)
    kept, sweeps = [], []
    for by_lr in partitions.values():
        if len(by_lr) == 1 or None in by_lr:
            kept += [r for group in by_lr.values() for r in group]
            continue
        selected = max(sorted(by_lr), key=lambda lr: _validation(by_lr[lr]))  # max keeps the first of ties
        kept += by_lr[selected]
        sweeps.append(Sweep(str(by_lr[selected][0].grid["method"]), dict(sorted(by_lr.items())), selected))
    return kept, sweeps


def _completed(result_set: ResultSet, task: str) -> list[RunResult]:
    return [r for r in result_set.runs if r.grid["task"] == task and r.status == "ok"]


def group_runs(result_set: ResultSet, task: str) -> list[Group]:
    """The task's completed runs (a swept learning rate: the one kept), grouped and ordered full, lora,
    qlora, head, then others."""
    completed, _ = select_learning_rates(_completed(result_set, task))
    axes = [a for a in _axes(completed) if a != "lr"]  # the rate kept is stated in the table, not the label
    by_label: dict[str, list[RunResult]] = {}
    for run in completed:
        by_label.setdefault(_label(run, axes), []).append(run)
    groups = [Group(task, runs[0].grid["method"], label, runs) for label, runs in by_label.items()]
    groups.sort(key=lambda g: (_method_rank(g.method), g.label))
    _mark_fronts(groups)
    return groups


def _mark_fronts(groups: list[Group]) -> None:
    for key, minimize, attr in (
        ("peak_memory_bytes", True, "front_memory"),
        ("tokens_per_second", False, "front_throughput"),
    ):
        measured = [g for g in groups if g.mean(key)]
        for g, on_front in zip(
            measured, pareto_front([(g.mean(key), g.accuracy) for g in measured], minimize), strict=True
        ):
            setattr(g, attr, on_front)


# -- formatting -------------------------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x / 1000:.3g}k" if x >= 10_000 else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_lr(x: float | None) -> str:
    return "—" if x is None else f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def fmt_percent(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}%"


def fmt_accuracy(g: Group) -> str:
    return f"{g.accuracy:.1f} ± {g.accuracy_ci:.1f}" if g.accuracy_ci is not None else f"{g.accuracy:.1f} (1 seed)"


def fmt_accuracy_text(g: Group) -> str:
    """For sentences: '54.7 ± 3.1% test accuracy' or '54.7% test accuracy (1 seed)'."""
    if g.accuracy_ci is None:
        return f"{g.accuracy:.1f}% test accuracy (1 seed)"
    return f"{g.accuracy:.1f} ± {g.accuracy_ci:.1f}% test accuracy ({g.n} seeds)"


def fmt_ratio(x: float) -> str:
    """0.025×, 0.82×, 1.0×, 1.6×, 12×: two significant digits below 1, one decimal below 10."""
    return f"{x:.2g}×" if x < 0.995 else f"{x:.1f}×" if x < 9.95 else f"{x:.0f}×"


def fmt_share(x: float) -> str:
    """A fraction as a percentage, with enough digits that 0.3% does not read as 0%."""
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- the document ------------------------------------------------------------------------------------
# Text may hold **bold** and `code`; both renderers understand them.


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    align: str = ""  # one of l/r per column; default: the first column left, the (numeric) rest right

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass
class Figure:
    file: str
    svg: str
    caption: str


@dataclass
class Details:
    summary: str
    blocks: list


def _slug(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


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


def lr_rule(g: Group, sweeps: Sequence[Sweep]) -> str:
    """How the group's learning rate was chosen: tuned on validation, the method's default, or set."""
    if not g.mean("trainable_params"):
        return "unused: nothing trains"
    if any(s.label == g.method and g.runs[0] in s.by_lr[s.selected] for s in sweeps):
        return "tuned on validation"
    lrs = {r.result["config"]["train"]["lr"] for r in g.runs}
    return "the method's default" if lrs == {default_lr(g)} else "set by the suite"


def default_lr(g: Group) -> float | None:
    """The method's default learning rate for the group's task type (GENERATE_DEFAULTS for a generate task)."""
    from tunebench.methods import get_method, registry

    if g.method not in registry():
        return None
    method = get_method(g.method)
    layers = [method.DEFAULTS]
    if g.runs[0].result["config"].get("data", {}).get("task_type") == "generate":  # older results have no task_type
        layers.append(getattr(method, "GENERATE_DEFAULTS", {}))
    return next((layer["train"]["lr"] for layer in reversed(layers) if "lr" in layer.get("train", {})), None)


def epochs_of(g: Group) -> str:
    cfgs = [r.result["config"]["train"] for r in g.runs]
    epochs = "/".join(str(e) for e in dict.fromkeys(c["epochs"] for c in cfgs))
    steps = {c.get("max_steps") for c in cfgs} - {None}
    return epochs + (f" (max {'/'.join(map(str, sorted(steps)))} steps)" if steps else "")


def summary_table(groups: list[Group], sweeps: Sequence[Sweep] = ()) -> Table:
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
            fmt_percent(g.mean("trainable_percent")),
            fmt_accuracy(g),
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
            "Trainable",
            "Test accuracy %",
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
        "excludes evaluation.",
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
                    f"{100 * _validation(runs):.1f}",
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

    def forgetting(g: Group) -> str:
        changes = [r.result["forgetting"]["change"] for r in g.runs if r.result.get("forgetting")]
        return f"{math.fsum(changes) / len(changes):+.3f}" if changes else "—"

    rows = [
        [
            f"**{g.label}**",
            f"{g.accuracy:.1f}",
            f"{g.accuracy - baseline.accuracy:+.1f}" if baseline else "—",
            fmt_percent(100 * g.mean("test_answer_token_accuracy")),
            f"{g.mean('test_answer_perplexity'):.2f}",
            forgetting(g),
            "yes" if any(r.result.get("lm_head_untied") for r in g.runs) else "",
        ]
        for g in groups
    ]
    return Table(
        [
            "Method",
            "Exact match %",
            "Gain over untuned",
            "Answer-token accuracy",
            "Answer perplexity",
            "Forgetting",
            "LM head untied",
        ],
        rows,
        "Exact match of greedy generations (strip, lower case, trailing punctuation) is the test accuracy above. "
        "Answer-token accuracy and perplexity are under teacher forcing. Forgetting is the change of the "
        "next-token loss on fixed IMDB reviews, from before to after training (positive: the model got worse "
        "at general English). none is the untuned model: no training.",
    )


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
        cells = [format_bytes(parts[p]) if parts else "—" for p in MEMORY_PARTS]
        rows.append([g.label, *cells, format_bytes(math.fsum(parts.values())) if parts else "—"])
    return Table(
        ["Method", "Weights", "Buffers", "Gradients", "Optimizer state", "Activations", "Other", "Total"],
        rows,
        "Live tensors at the step's memory peak, by role (tensor tracker; mean over seeds).",
    )


def recommendation(groups: list[Group], num_labels: int | None) -> list[str]:
    """Plain-language advice for one task, every clause computed from the groups' numbers."""
    if not groups:
        return ["No completed runs: nothing to recommend."]
    best = max(groups, key=lambda g: g.accuracy)
    if len(groups) == 1:
        return [f"Only **{best.label}** completed ({fmt_accuracy_text(best)}): there is nothing to compare."]
    lines = []
    with_memory = [g for g in groups if g.mean("peak_memory_bytes")]
    lowest = min(with_memory, key=lambda g: g.mean("peak_memory_bytes"), default=None)

    tied = [g for g in groups if g is not best and best.overlaps(g) and g.n > 1 and best.n > 1]
    tie_note = f"; its 95% interval overlaps {_names(tied)}, so these seeds do not separate them" if tied else ""
    lines.append(f"**{best.label}** is the most accurate at {fmt_accuracy_text(best)}{tie_note}.")

    near = [g for g in groups if best.accuracy - g.accuracy <= TOLERANCE_POINTS]
    lightest = min((g for g in near if g in with_memory), key=lambda g: g.mean("peak_memory_bytes"), default=best)
    fastest = max(near, key=lambda g: g.mean("tokens_per_second") or 0)
    if lightest is not best:
        gap = best.accuracy - lightest.accuracy
        claim = (
            f"as accurate as {best.label}"
            if gap < 0.05
            else f"unless the last {gap:.1f} points matter: it is within {TOLERANCE_POINTS:g} point of {best.label}"
        )
        lines.append(
            f"**Use {lightest.label}**{':' if gap < 0.05 else ''} {claim} at "
            f"{fmt_share(_ratio(lightest.mean('peak_memory_bytes'), best.mean('peak_memory_bytes')))} of its peak "
            f"memory{_speed_clause(lightest, best)}."
        )
    else:
        fastest_overall = max(groups, key=lambda g: g.mean("tokens_per_second") or 0)
        if best is lowest:
            why = "it is the most accurate and needs the least memory" + (
                ", and it is the fastest too" if best is fastest_overall else ""
            )
        else:
            why = f"no method within {TOLERANCE_POINTS:g} point of its accuracy needs less memory"
            if fastest is not best and best.mean("tokens_per_second"):
                speedup = _ratio(fastest.mean("tokens_per_second"), best.mean("tokens_per_second"))
                why += f"; {fastest.label}, within that point too, has {fmt_ratio(speedup)} its throughput"
        lines.append(f"**Use {best.label}**: {why}.")

    fulls = [g for g in groups if g.method == "full"]
    baseline = fulls[0] if len(fulls) == 1 else best
    base_name = "full fine-tuning" if baseline.method == "full" else baseline.label
    for g in groups:
        if g is baseline:
            continue
        share = _ratio(g.accuracy, baseline.accuracy)  # None when the baseline scored 0 (an untrained generator)
        reaches = f"reaches {fmt_share(share)} of" if share is not None else "is compared with"
        sentence = f"{g.label} {reaches} {base_name}'s accuracy ({g.accuracy - baseline.accuracy:+.1f} points)"
        memory = _ratio(g.mean("peak_memory_bytes"), baseline.mean("peak_memory_bytes"))
        if memory is not None:
            sentence += f" at {fmt_share(memory)} of its peak memory"
        extras = []
        throughput = _ratio(g.mean("tokens_per_second"), baseline.mean("tokens_per_second"))
        if throughput is not None:
            extras.append(f"{fmt_ratio(throughput)} its throughput")
        checkpoint = _ratio(g.mean("checkpoint_bytes"), baseline.mean("checkpoint_bytes"))
        if checkpoint is not None and checkpoint < 0.5:  # only worth saying when the saving is large
            size = format_bytes(g.mean("checkpoint_bytes"))
            extras.append(f"a {size} checkpoint ({fmt_share(checkpoint)} of its size)")
        lines.append(sentence + (f", with {' and '.join(extras)}" if extras else "") + ".")

    if lowest is not None and lowest is not lightest:
        lines.append(
            f"On the tightest memory budget, **{lowest.label}** needs the least: "
            f"{format_bytes(lowest.mean('peak_memory_bytes'))} at peak, "
            f"{best.accuracy - lowest.accuracy:.1f} points below the best."
        )

    lines.extend(_caveats(groups, best, num_labels))
    return lines


def _names(groups: Sequence[Group]) -> str:
    return _names_of([g.label for g in groups])


def _speed_clause(g: Group, reference: Group) -> str:
    """', at 2.1× its throughput' style: the tokens/s ratio, the speed the Pareto front uses."""
    ratio = _ratio(g.mean("tokens_per_second"), reference.mean("tokens_per_second"))
    if ratio is None or 0.95 <= ratio <= 1.05:
        return ", at about the same throughput" if ratio is not None else ""
    return f", at {fmt_ratio(ratio)} its throughput (tokens/s)"


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


def differing_settings(groups: list[Group]) -> dict[str, dict[str, list[str]]]:
    """Config keys, beyond what defines a method, whose values differ between the completed runs:
    key -> {value as JSON: [method labels]}."""
    completed = [r for g in groups for r in g.runs]
    method_keys = _method_scoped_keys({r.grid["method"] for r in completed})
    configs = {id(r): flatten(r.result["config"]) for r in completed}
    own_sentence = {*BUDGET_KEYS, "pooling"}  # like_for_like says these plainly
    keys = sorted({k for c in configs.values() for k in c} - BOOKKEEPING_KEYS - method_keys - own_sentence)
    out = {}
    for key in (k for k in keys if not k.startswith("method_options.")):
        by_value: dict[str, list[str]] = {}
        for g in groups:
            for r in g.runs:
                labels = by_value.setdefault(json.dumps(configs[id(r)].get(key)), [])
                if g.label not in labels:
                    labels.append(g.label)
        if len(by_value) > 1:
            out[key] = by_value
    return out


def pooling_of(result: dict) -> str:
    """The pooling a run used. Results from before `pooling` was one shared key: head had its own
    method option; full, lora and qlora used the model's sequence-classification head (BERT: the pooler on CLS)."""
    cfg = result["config"]
    if "pooling" in cfg:
        chosen = cfg["pooling"]
    elif cfg.get("method") == "head":
        chosen = (cfg.get("method_options") or {}).get("pooling")
    else:
        return "the model's own classification head (BERT: pooler on CLS)"
    return chosen or "the checkpoint's (null)"


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
    pooling, and the rule that chose each learning rate."""
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
    single = [g.label for g in groups if g.n == 1]
    if single:
        out.append(f"A single seed (no confidence interval) for: {', '.join(single)}.")
    sources = set().union(*(g.memory_sources for g in groups)) if groups else set()
    if len(sources) > 1:
        out.append(
            "Peak memory comes from different measurements (" + ", ".join(sorted(sources)) + "): not comparable."
        )
    completed = [r for g in groups for r in g.runs]
    environments = [_environment_summary(r.result.get("environment") or {}) for r in completed]
    differing = [k for k in (environments[0] if environments else {}) if len({e[k] for e in environments}) > 1]
    if differing:
        out.append(f"The runs differ in their environment: {', '.join(differing)} (see Environment).")
    failed = [r for r in result_set.runs if r.grid["task"] == task and r.status in ("oom", "failed")]
    if failed:
        out.append(f"{len(failed)} run{'s' if len(failed) > 1 else ''} did not finish: see Failed runs.")
    return out


def _method_scoped_keys(methods: set[str]) -> set[str]:
    """Keys each method's DEFAULTS set (its learning rate, say): they differ between methods by design."""
    from tunebench.methods import get_method, registry

    keys: set[str] = set()
    for name in methods & set(registry()):
        keys |= set(flatten(get_method(name).DEFAULTS))
    return keys


def _environment_summary(env: dict) -> dict[str, str]:
    gpu = env.get("gpu")
    versions = env.get("versions") or {}
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)" if git.get("dirty") else "")
    return {
        "Machine": f"{env.get('platform', '?')}; {env.get('cpu', '?')}, {env.get('cpu_count', '?')} CPUs, "
        f"{env.get('torch_threads', '?')} torch threads",
        "GPU": (
            f"{gpu.get('count', 1)}× {gpu.get('name')} ({format_bytes(gpu.get('memory_bytes'))}), "
            f"CUDA {gpu.get('cuda')}, "
            f"driver {gpu.get('driver')}"
            if gpu
            else "none (CPU run)"
        ),
        "Processes": str(env.get("world_size", 1)),
        "Python": str(env.get("python", "?")),
        "Versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        "Commit": commit,
    }


def environment_table(result_set: ResultSet) -> Table:
    summaries = [_environment_summary(r.result.get("environment") or {}) for r in result_set.runs]
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
        ratios = [_ratio(g.mean(k), base.mean(k)) for k in ("peak_memory_bytes", "tokens_per_second", "train_seconds")]
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


def _colors(sets: Sequence[ResultSet]) -> dict[str, str]:
    """One color per method label across the whole report, so a method looks the same in every figure."""
    labels = sorted(
        {g.label: g.method for s in sets for t in tasks_of(s) for g in group_runs(s, t)}.items(),
        key=lambda item: (_method_rank(item[1]), item[0]),
    )
    return {label: plots.PALETTE[i % len(plots.PALETTE)] for i, (label, _) in enumerate(labels)}


def _advice(result_set: ResultSet, task: str, groups: list[Group]) -> list[str]:
    num_labels = next(
        ((r.result.get("task") or {}).get("num_labels") for r in result_set.runs if r.grid["task"] == task), None
    )
    advice = recommendation(groups, num_labels)
    confounds = like_for_like(groups, select_learning_rates(_completed(result_set, task))[1])
    settings = differing_settings(groups)
    if settings:
        confounds.append(f"The runs also differ in {', '.join(f'`{k}`' for k in settings)} (see Flags).")
    if confounds:
        advice.insert(
            0, "**Not like for like**, so the accuracy sentences below are confounded: " + " ".join(confounds)
        )
    return advice


def _results_section(result_set: ResultSet, task: str, groups: list[Group], stem: str, colors: dict) -> list:
    """The task's table, breakdown, figures and flags."""
    if not groups:
        return [Para("No completed runs."), Bullets(flags(result_set, task, groups))]
    sweeps = select_learning_rates(_completed(result_set, task))[1]
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
    out = [summary_table(groups, sweeps)]
    if any("test_exact_match" in r.result for g in groups for r in g.runs):
        out += [
            Heading(3, "Generation"),
            generation_table(groups),
            Details("Sample generations", [samples_table(groups)]),
        ]
    if sweeps:
        out += [Heading(3, "Learning rate tuned on validation"), tuned_table(sweeps)]
    out += [
        Details("Peak memory breakdown", [breakdown_table(groups)]),
        Figure(
            f"pareto-{stem}.svg",
            plots.pareto_figure(points, colors),
            "Pareto fronts: accuracy against peak memory and against throughput.",
        ),
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
    task_flags = flags(result_set, task, groups, sweeps)
    return out + ([Heading(3, "Flags"), Bullets(task_flags)] if task_flags else [])


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
    total = sum(len(s.runs) for s in sets)
    finished = sorted(r.result.get("finished_at") or r.result["started_at"] for s in sets for r in s.runs)
    title = "tunebench report: " + " vs ".join(s.label for s in sets)
    first, last = finished[0][:10], finished[-1][:10]
    intro = (
        f"{total} runs from {', '.join(f'`{s.folder}`' for s in sets)}, finished "
        f"{f'on {first}' if first == last else f'{first} to {last}'}. "
        f"Generated from the result files by `{command}`; do not edit by hand."
    )
    skipped = [f"`{s.folder}`: {s.skipped_files}" for s in sets if s.skipped_files]
    if skipped:
        intro += f" Skipped JSON files that are not complete tunebench results: {', '.join(skipped)}."
    blocks: list = [Para(intro), Heading(2, "What to use")]

    sections: list = []
    for s in sets:
        for task in tasks_of(s):
            groups = group_runs(s, task)
            where = f"{task} — {s.label}" if several else task
            blocks += [Heading(3, where), Bullets(_advice(s, task, groups))]
            sections += [Heading(2, f"Results: {where}")]
            sections += _results_section(s, task, groups, _slug(s.label, task) if several else _slug(task), colors)
    blocks += sections

    if several:
        reference = sets[0]
        blocks += [
            Heading(2, "Side by side"),
            Bullets([f"**{s.label}**: {_hardware(s)}" for s in sets]),
        ]
        for other in sets[1:]:
            for task in tasks_of(other):
                table = comparison_table(reference, other, task)
                if table is not None:
                    blocks += [Heading(3, f"{task}: {other.label} against {reference.label}"), table]

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

    blocks.append(Heading(2, "Environment"))
    for s in sets:
        if several:
            blocks.append(Heading(3, s.label))
        blocks.append(environment_table(s))
    return title, blocks


# -- rendering ---------------------------------------------------------------------------------------


def _md_inline(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(title: str, blocks: list) -> str:
    return "\n".join([f"# {title}", "", *_markdown_lines(blocks)]).rstrip() + "\n"


def _markdown_lines(blocks: list) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out += [
                "| " + " | ".join(_md_inline(h) or " " for h in block.header) + " |",
                "|" + "|".join("---" if a == "l" else "--:" for a in block.alignment()) + "|",
            ]
            out += ["| " + " | ".join(_md_inline(c) for c in row) + " |" for row in block.rows]
            out += [""] + ([f"*{block.note}*", ""] if block.note else [])
        elif isinstance(block, Figure):
            out += [f"![{block.caption}]({block.file})", ""]
        elif isinstance(block, Details):  # Markdown has no fold: the content follows its title
            out += [f"**{block.summary}**", "", *_markdown_lines(block.blocks)]
    return out


def _html_inline(text: str) -> str:
    text = html.escape(text, quote=True)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
  max-width:1060px;margin:2em auto;padding:0 1.2em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.4em}code{background:#f3f3f5;padding:0 .25em;border-radius:3px;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em;font-variant-numeric:tabular-nums}
th,td{padding:.35em .7em;border-bottom:1px solid #e4e4e7;text-align:right;vertical-align:top}
th.l,td.l{text-align:left}td:not(:last-child){white-space:nowrap}th{background:#f6f6f8;font-weight:600}
tr:hover td{background:#fafafc}.note{color:#555;font-size:.85em;margin-top:-.2em}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#0b5cad}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.85em}
ul{padding-left:1.3em}li{margin:.25em 0}nav{font-size:.9em;color:#555}nav a{color:#0b5cad;margin-right:.8em}
"""


def render_html(title: str, blocks: list) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, nothing fetched. Also well-formed XML."""
    anchors = [(_slug(b.text), b.text) for b in blocks if isinstance(b, Heading) and b.level == 2]
    nav = "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in anchors) + "</nav>"

    def render(items: list) -> list[str]:
        out = []
        for block in items:
            if isinstance(block, Heading):
                anchor = f' id="{_slug(block.text)}"' if block.level == 2 else ""
                out.append(f"<h{block.level}{anchor}>{_html_inline(block.text)}</h{block.level}>")
            elif isinstance(block, Para):
                out.append(f"<p>{_html_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                left = [' class="l"' if a == "l" else "" for a in block.alignment()]
                head = "".join(f"<th{a}>{_html_inline(h)}</th>" for a, h in zip(left, block.header, strict=True))
                body = "".join(
                    "<tr>" + "".join(f"<td{a}>{_html_inline(c)}</td>" for a, c in zip(left, row, strict=True)) + "</tr>"
                    for row in block.rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
                if block.note:
                    out.append(f'<p class="note">{_html_inline(block.note)}</p>')
            elif isinstance(block, Figure):
                out.append(
                    f"<figure>{plots.inline_svg(block.svg)}<figcaption>{_html_inline(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Details):
                out.append(
                    f"<details><summary>{_html_inline(block.summary)}</summary>{''.join(render(block.blocks))}</details>"
                )
        return out

    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"/>',
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            nav,
            *render(blocks),
            "</body></html>",
            "",
        ]
    )


def results_csv(sets: Sequence[ResultSet]) -> str:
    """One row per run: the result flattened to dotted columns, curves left out (they are lists)."""
    lead = ["set", "run_id", "task", "method", "seed", "status", "error", "test_accuracy", "test_f1"]
    rows = []
    for s in sets:
        for r in s.runs:
            flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(r.result).items()}
            flat = {k: v for k, v in flat.items() if not k.startswith("curves.")}
            rows.append(
                {
                    "set": s.label,
                    "run_id": r.run_id,
                    "task": r.grid["task"],
                    "method": r.grid["method"],
                    "seed": r.grid["seed"],
                }
                | flat
            )
    columns = lead + sorted({k for row in rows for k in row} - set(lead))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(results: list[str], out: str) -> None:
    """Write OUT/{report.md,index.html,results.csv,*.svg} from the result folders.

    The folder is built beside OUT and swapped in whole, so OUT never holds a half-written report or
    figures left over from an earlier one.
    """
    sets = load_sets(results)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "report.md").exists():
        raise UserError(f"{out_dir} exists and is not a tunebench report; choose another -o folder")
    command = f"tunebench report {' '.join(results)} -o {out}"
    title, blocks = build_document(sets, command)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        (staging / "report.md").write_text(render_markdown(title, blocks), encoding="utf-8")
        (staging / "index.html").write_text(render_html(title, blocks), encoding="utf-8")
        (staging / "results.csv").write_text(results_csv(sets), encoding="utf-8")
        for figure in (b for b in blocks if isinstance(b, Figure)):
            (staging / figure.file).write_text(figure.svg, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a report is for reading
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.replace(old)
            staging.replace(out_dir)
            shutil.rmtree(old)
        else:
            staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
