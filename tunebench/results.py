"""Result files: one self-describing JSON per run, written atomically, read back strictly."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "failed", "interrupted", "running")
FINAL = ("ok", "oom", "failed")  # a rerun of the suite skips these; `interrupted`/`running` run again
REQUIRED = ("schema", "status", "config", "started_at")


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write to a temporary file beside the target, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(path: str | Path) -> dict | None:
    """The result at path, or None if it is missing, truncated, corrupt or not a tunebench result."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
        return None
    if data["schema"] != SCHEMA_VERSION or data["status"] not in STATUSES:
        return None
    if data["status"] == "ok" and data.get("test_accuracy") is None:
        return None
    return data


def fixed_seconds(result: dict) -> float | None:
    """A finished run's seconds outside training and evaluation (start-up, loading, forgetting probes, saving):
    run_seconds - train_seconds - eval_seconds. None for a result from before eval_seconds counted test too
    (it has no test_seconds)."""
    if "test_seconds" not in result:
        return None
    return result["run_seconds"] - result["train_seconds"] - result["eval_seconds"]


def run_name(config: dict) -> str:
    """What a run folder and a suite's run id start with: <task>-<method>-<model>, from the effective config."""
    return f"{Path(config['task']).stem}-{config['method']}-{Path(str(config['model'])).name}"


def result_files(folder: str | Path) -> list[Path]:
    """Where results live in a folder: its *.json (the harness's <run_id>.json) and any RUN/result.json
    below it (`tunebench train`). Other JSON there (checkpoint configs, predictions) is not a candidate."""
    folder = Path(folder)
    return sorted(set(folder.glob("*.json")) | set(folder.rglob("result.json")))


SUITE_MANIFEST = "suite.manifest"  # JSON, but not *.json: it is no result candidate


def write_suite_manifest(folder: str | Path, suite: str, files: list[str]) -> None:
    """Record which result files in folder are its suite's (`bench` writes it; the report reads it)."""
    write_json_atomic(Path(folder) / SUITE_MANIFEST, {"suite": suite, "results": sorted(files)})


def suite_result_files(folder: str | Path) -> tuple[list[Path], list[Path], str | None]:
    """folder's result files split into those of its suite and the others, and the suite's name: every file is
    the suite's when no `bench` wrote a manifest there (a folder of `tunebench train` runs)."""
    files = result_files(folder)
    try:
        manifest = json.loads((Path(folder) / SUITE_MANIFEST).read_text())
    except (OSError, ValueError):
        return files, [], None
    ours = {Path(folder) / name for name in manifest["results"]}
    return [p for p in files if p in ours], [p for p in files if p not in ours], manifest["suite"]


def final_result(path: str | Path) -> dict | None:
    """The result at path if its run has finished for good (FINAL, and not marked `retry`: a run whose Ray worker
    died), else None: a rerun repeats that run."""
    result = read_result(path)
    return result if result is not None and result["status"] in FINAL and not result.get("retry") else None


def rank_failure_path(run_dir: str | Path, rank: int) -> Path:
    """Where a process other than rank 0 of a multi-process run leaves how it failed."""
    return Path(run_dir) / f"rank{rank}.failure"


def read_rank_failures(run_dir: str | Path) -> list[dict]:
    """The failures other ranks left in run_dir ({rank, status, error}), by rank."""
    failures = []
    for path in Path(run_dir).glob("rank*.failure"):
        try:
            failures.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(failures, key=lambda failure: failure["rank"])
