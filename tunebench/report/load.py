"""Reading result sets: each results folder's result files, as runs with their grid points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunebench.errors import UserError
from tunebench.models.precision import recorded_rule
from tunebench.results import read_result, suite_result_files


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
    foreign_files: list[str]  # results that belong to no run of the folder's suite (its manifest says)
    suite: str | None = None  # the suite whose `bench` wrote the folder's manifest


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
        ours, others, suite = suite_result_files(folder)
        for path in ours:
            result = read_result(path)
            if result is None:
                skipped += 1
                continue
            runs.append(RunResult(_run_id(path, result), result, _grid(result)))
        if not runs:
            raise UserError(f"no tunebench result files in {folder}")
        foreign = [str(p.relative_to(folder)) for p in others if read_result(p) is not None]
        skipped += len(others) - len(foreign)
        sets.append(ResultSet(folder.resolve().name, folder, runs, skipped, foreign, suite))
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
        "precision": recorded_rule(result),  # the rule that ran (older results: read from mixed_precision)
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


def tasks_of(result_set: ResultSet) -> list[str]:
    return sorted({r.grid["task"] for r in result_set.runs})
