"""Method-comparison suites: expand a grid into runs, run each in a fresh process, resume on rerun.

A suite (configs/suites/*.yaml) is a small config layered on the shared defaults:

    name: quick
    config: {...}            # applied to every run (same keys as configs/defaults.yaml)
    grid:                    # the runs are the product of these lists
      model: [minilm]
      task: [rotten_tomatoes, banking77]
      method: [full, lora, qlora, head]
      seed: [42]
      batch_size: [32]       # optional axes: batch_size, max_length, precision, epochs
    methods: {full: {...}}   # per-method config overrides (e.g. the learning rate)
    tasks: {banking77: {...}}
    processes: 1             # >1: each run is launched with torchrun, N processes

`grid` may also be a list of such mappings: the runs are then the union of their products.

Each run's id is a hash of its effective config; its result lands in OUT/<run_id>.json, written
atomically by the run itself, so a killed suite loses at most the run in flight.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from tunebench.config import build_config, read_yaml, set_dotted
from tunebench.errors import UserError
from tunebench.results import FINAL, read_rank_failures, read_result, write_json_atomic

SUITE_KEYS = {"name", "description", "config", "grid", "methods", "tasks", "processes"}
REQUIRED_AXES = ("model", "task", "method", "seed")
# optional grid axes -> the config key each one sets
EXTRA_AXES = {
    "batch_size": "train.batch_size",
    "max_length": "data.max_length",
    "precision": "train.mixed_precision",
    "epochs": "train.epochs",
}


@dataclass
class Run:
    run_id: str
    grid: dict
    config: dict

    @property
    def label(self) -> str:
        return " ".join(f"{v}" for v in self.grid.values())


def _deep_update(base: dict, layer: dict) -> dict:
    out = dict(base)
    for key, value in layer.items():
        out[key] = (
            _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _grid_points(grid: dict, path: str | Path) -> list[dict]:
    bad_axes = set(grid) - set(REQUIRED_AXES) - set(EXTRA_AXES)
    if bad_axes:
        valid = ", ".join([*REQUIRED_AXES, *EXTRA_AXES])
        raise UserError(f"unknown grid axis {sorted(bad_axes)} in {path}; valid: {valid}")
    missing = [axis for axis in ("task", "method") if not grid.get(axis)]
    if missing:
        raise UserError(f"suite {path} grid needs {', '.join(missing)}")
    axes = {axis: grid.get(axis) or [None] for axis in REQUIRED_AXES} | {a: grid[a] for a in EXTRA_AXES if a in grid}
    for axis, values in axes.items():
        if not isinstance(values, list):
            raise UserError(f"suite {path} grid.{axis} must be a list, got {values!r}")
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _run_layer(suite: dict, point: dict, track_memory: bool) -> dict:
    """Config overrides for one grid point: suite config, then its task's, then its method's, then the axes."""
    layer = suite.get("config") or {}
    layer = _deep_update(layer, (suite.get("tasks") or {}).get(point["task"], {}))
    layer = _deep_update(layer, (suite.get("methods") or {}).get(point["method"], {}))
    for axis in ("model", "seed"):
        if point[axis] is not None:
            layer = _deep_update(layer, {axis: point[axis]})
    for axis, key in EXTRA_AXES.items():
        if axis in point:
            layer = _deep_update(layer, set_dotted({}, key, point[axis]))
    if not track_memory:
        layer = _deep_update(layer, {"measure": {"track_memory": False}})
    return layer


def run_id(config: dict) -> str:
    """Stable id: task-method-model-seed plus a hash of the whole effective config (out excluded)."""
    canonical = json.dumps({k: v for k, v in config.items() if k != "out"}, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    model = Path(str(config["model"])).name
    return f"{Path(config['task']).stem}-{config['method']}-{model}-s{config['seed']}-{digest}"


def load_suite(path: str | Path, track_memory: bool = True) -> tuple[dict, list[Run]]:
    suite = read_yaml(path)
    unknown = set(suite) - SUITE_KEYS
    if unknown:
        raise UserError(f"unknown suite key(s) {sorted(unknown)} in {path}; valid: {', '.join(sorted(SUITE_KEYS))}")
    grids = suite.get("grid") or {}
    runs = []
    for grid in grids if isinstance(grids, list) else [grids]:  # a list of grids is their union
        for point in _grid_points(grid, path):
            config = build_config(point["method"], point["task"], overrides=_run_layer(suite, point, track_memory))
            grid_point = {k: config[k] for k in REQUIRED_AXES} | {a: point[a] for a in EXTRA_AXES if a in point}
            runs.append(Run(run_id(config), grid_point, config))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise UserError(f"suite {path} expands to duplicate runs (the same config twice)")
    return suite, runs


def select_shard(runs: list[Run], spec: str | None) -> list[Run]:
    """--shard i/n keeps runs i, i+n, i+2n... (1-based) of the id-sorted list: disjoint and complete."""
    runs = sorted(runs, key=lambda r: r.run_id)
    if spec is None:
        return runs
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard takes i/n with 1 <= i <= n, e.g. 1/4; got {spec!r}") from None
    if not 1 <= index <= count:
        raise UserError(f"--shard takes i/n with 1 <= i <= n, e.g. 1/4; got {spec!r}")
    return runs[index - 1 :: count]


def _die_with_parent() -> None:
    # A SIGKILLed suite must not leave its run behind, still writing into the results folder.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_dir(run: Run, out: Path) -> Path:
    return out / "runs" / run.run_id


def launch(run: Run, out: Path, processes: int) -> int:
    """Run one training in a fresh process (clean memory accounting; a crash stays contained)."""
    run_dir = _run_dir(run, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "suite_config.yaml"
    config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    meta = json.dumps({"run_id": run.run_id, "suite": out.name, "grid": run.grid})
    train = [
        "tunebench.cli",
        "train",
        "--config",
        str(config_path),
        "--out",
        str(run_dir),
        "--result",
        str(out / f"{run.run_id}.json"),
        "--run-meta",
        meta,
    ]
    env = dict(os.environ)
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            *train,
        ]
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"  # gloo on the CPU
    else:
        command = [sys.executable, "-m", *train]
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.run(command, env=env, preexec_fn=preexec).returncode


def _record_crash(path: Path, run: Run, returncode: int) -> None:
    """A run that died without writing its own end (segfault, OOM killer, rank 0 stopped before it could
    record another rank's failure) is recorded as failed, with the errors the ranks left."""
    result = read_result(path)
    if result is not None and result["status"] != "running":
        return
    result = result or {"schema": 1, "config": run.config, "started_at": None, "run_id": run.run_id, "grid": run.grid}
    killed = f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    errors = [f"rank {f['rank']}: {f['error']}" for f in read_rank_failures(_run_dir(run, out=path.parent))]
    result.update(status="failed", error="; ".join([f"run process {killed} before writing its result", *errors]))
    write_json_atomic(path, result)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def run_suite(
    suite_path: str,
    out: str | None = None,
    shard: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    track_memory: bool = True,
) -> int:
    suite, runs = load_suite(suite_path, track_memory)
    runs = select_shard(runs, shard)
    out_dir = Path(out or f"results/{suite.get('name') or Path(suite_path).stem}")
    processes = int(suite.get("processes") or 1)
    done = {r.run_id for r in runs if not force and _is_final(out_dir / f"{r.run_id}.json")}
    todo = [r for r in runs if r.run_id not in done]
    print(f"suite {suite.get('name', suite_path)}: {len(runs)} runs, {len(done)} done, {len(todo)} to run -> {out_dir}")
    if dry_run:
        for r in runs:
            print(f"  {'done ' if r.run_id in done else 'to run'}  {r.run_id}  {r.label}")
        return 0
    started = time.monotonic()
    for number, run in enumerate(todo, 1):
        finished = len(done) + number - 1
        elapsed = time.monotonic() - started
        eta = f", ETA {_duration(elapsed / (number - 1) * (len(todo) - number + 1))}" if number > 1 else ""
        bar = "#" * round(20 * finished / len(runs))
        print(
            f"\nsuite [{bar:<20}] {finished}/{len(runs)} done, {len(runs) - finished} left{eta} -> {run.label}",
            flush=True,
        )
        path = out_dir / f"{run.run_id}.json"
        code = launch(run, out_dir, processes)
        if code == 130:
            raise KeyboardInterrupt
        if code != 0:
            _record_crash(path, run, code)
    return _summarize(out_dir, runs, time.monotonic() - started)


def _is_final(path: Path) -> bool:
    result = read_result(path)
    return result is not None and result["status"] in FINAL


def _summarize(out_dir: Path, runs: list[Run], seconds: float) -> int:
    print(f"\nsuite finished in {_duration(seconds)}:")
    failed = 0
    for run in runs:
        result = read_result(out_dir / f"{run.run_id}.json") or {"status": "missing"}
        failed += result["status"] not in ("ok", "oom")
        detail = (
            f"test acc {result['test_accuracy']:.4f}  train {result['train_seconds']:.1f}s"
            if result["status"] == "ok"
            else (result.get("error") or "")
        )
        print(f"  {result['status']:11} {run.label:48} {detail}")
    return 1 if failed else 0
