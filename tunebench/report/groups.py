"""The unit of comparison: per task, the completed runs of each method (a swept learning rate: the one kept on
validation), grouped, aggregated over seeds, ordered as the method registry lists them, and marked on the Pareto
fronts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunebench.measure import CATEGORIES
from tunebench.methods import FAMILIES, base_method, family, method_names
from tunebench.report.load import ResultSet, RunResult
from tunebench.report.stats import mean_ci, pareto_front


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
    def family(self) -> str:
        return run_family(self.runs[0].result)

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
        return {part: math.fsum(b.get(part, 0) for b in breakdowns) / len(breakdowns) for part in CATEGORIES}

    def overlaps(self, other: Group) -> bool:
        """Do the two 95% intervals overlap? Unknown (a single seed) counts as overlapping: not separated."""
        if self.accuracy_ci is None or other.accuracy_ci is None:
            return True
        return abs(self.accuracy - other.accuracy) <= self.accuracy_ci + other.accuracy_ci


def run_family(result: dict) -> str:
    """A run's family (tunebench.methods.FAMILIES): as its result records it, or (an older result) from its config."""
    recorded = (result.get("method") or {}).get("family")
    if recorded:
        return recorded
    config = result["config"]
    peft = (config.get("method_options") or {}).get("peft_config") or {}
    return family(base_method(config["method"]), peft.get("peft_type"))


def method_rank(method: str) -> tuple[int, str]:
    """The registry's order (tunebench.methods: the methods, then the variants), then any other method (a module
    path) by name."""
    order = method_names()
    return (order.index(method), "") if method in order else (len(order), method)


def family_rank(group: Group) -> int:
    return FAMILIES.index(group.family) if group.family in FAMILIES else len(FAMILIES)


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


@dataclass
class Sweep:
    """One method's learning-rate sweep: (lr, runs) per rate, and the rate kept."""

    label: str
    by_lr: dict[float, list[RunResult]]
    selected: float


def validation_accuracy(runs: Sequence[RunResult]) -> float:
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
        selected = max(sorted(by_lr), key=lambda lr: validation_accuracy(by_lr[lr]))  # max keeps the first of ties
        kept += by_lr[selected]
        sweeps.append(Sweep(str(by_lr[selected][0].grid["method"]), dict(sorted(by_lr.items())), selected))
    return kept, sweeps


def completed_runs(result_set: ResultSet, task: str) -> list[RunResult]:
    return [r for r in result_set.runs if r.grid["task"] == task and r.status == "ok"]


def group_runs(result_set: ResultSet, task: str) -> list[Group]:
    """The task's completed runs (a swept learning rate: the one kept), grouped and ordered by family (full, LoRA
    family, other adapters, prompt learning, head, none), then as the registry lists methods and variants."""
    completed, _ = select_learning_rates(completed_runs(result_set, task))
    axes = [a for a in _axes(completed) if a != "lr"]  # the rate kept is stated in the table, not the label
    by_label: dict[str, list[RunResult]] = {}
    for run in completed:
        by_label.setdefault(_label(run, axes), []).append(run)
    groups = [Group(task, runs[0].grid["method"], label, runs) for label, runs in by_label.items()]
    groups.sort(key=lambda g: (family_rank(g), method_rank(base_method(g.method)), method_rank(g.method), g.label))
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
