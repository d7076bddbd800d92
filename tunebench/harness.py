"""Method-comparison suites: expand a grid into runs, run each in a fresh process, resume on rerun.

A suite (configs/suites/*.yaml) is a small config layered on the shared defaults:

    name: quick
    config: {...}            # applied to every run (same keys as configs/defaults.yaml)
    grid:                    # the runs are the product of these lists
      model: [minilm]
      task: [rotten_tomatoes, banking77]
      method: [full, lora, qlora, head]
      seed: [42]
      batch_size: [32]       # optional axes: batch_size, max_length, precision, epochs, lr
      lr: [1.0e-4, 3.0e-4]   # a learning-rate sweep: the report keeps, per method, the best on validation
    methods:                 # per-method config overrides; `lr: [...]` there is that method's own sweep
      head: {lr: [1.0e-3, 1.0e-2], train: {epochs: 3}}
    tasks: {banking77: {...}}
    processes: 1             # >1: each run is launched with torchrun, N processes

`grid` may also be a list of such mappings: the runs are then the union of their products.

Each run's id is a hash of what the suite sets for it (its grid point and the suite's config, tasks: and
methods: layers), not of the defaults under them: a release that adds a config key or changes a default keeps
every id (a changed default is the stale rule's business). Its result lands in OUT/<run_id>.json, written
atomically by the run itself, so a killed suite loses at most the run in flight. A result file of another name
(an earlier id form) still counts for the run whose settings its recorded config holds; a rerun replaces it.

Runs go one at a time, or several at once (tunebench.scheduler: jobs, with the CPU cores split between them, or
one per free group of devices), or as tasks on a Ray cluster (tunebench.cluster), each still a fresh process. A
run on a Ray worker sends its result and its run folder's files back to the driver, which writes them here.

A finished result is *stale* when it came from a dirty tree, or when a source file its run loaded (recorded in
the result: the project's modules it imported and the YAML it read) differs between the commit it records and
the current working tree: `--dry-run` lists it, naming the file, and `--rerun-stale` reruns it. Code the run
never loaded (the planner, the report, this harness) cannot have changed its numbers.
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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import yaml

from tunebench.config import build_config, set_dotted
from tunebench.errors import UserError, unknown_choice
from tunebench.files import REPO_ROOT, read_yaml
from tunebench.measure import SOURCE_PATHS
from tunebench.methods import SHIPPED_VARIANTS
from tunebench.quiet import VERBOSE_ENV
from tunebench.results import (
    FINAL,
    SCHEMA_VERSION,
    final_result,
    fixed_seconds,
    read_rank_failures,
    read_result,
    run_name,
    write_json_atomic,
    write_suite_manifest,
)
from tunebench.scheduler import plan_slots, run_in_slots
from tunebench.units import format_seconds

VARIANTS_FILE = Path(*SHIPPED_VARIANTS.parts[-2:]).as_posix()  # as git names it in the checkout: configs/...

SUITE_KEYS = {"name", "description", "config", "grid", "methods", "tasks", "processes"}
EXECUTORS = ("local", "ray")
REQUIRED_AXES = ("model", "task", "method", "seed")
IDENTITY = ("task", "method", "model", "seed")  # in every run id, set by the suite or not
# optional grid axes -> the config key each one sets
EXTRA_AXES = {
    "batch_size": "train.batch_size",
    "max_length": "data.max_length",
    "precision": "train.precision",
    "epochs": "train.epochs",
    "lr": "train.lr",
}


@dataclass
class SuiteRun:
    """One run a suite expands to, before it runs: its id, grid point, effective config and the config keys the
    suite sets for it (dotted; what the id hashes)."""

    run_id: str
    grid: dict
    config: dict
    set_keys: tuple[str, ...]

    @property
    def label(self) -> str:
        return " ".join(f"{v}" for v in self.grid.values())


def _grid_points(grid: dict, path: str | Path, method_sweeps: dict) -> list[dict]:
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
    points = []
    for method in axes["method"]:  # a method's own `lr:` list in `methods:` replaces the grid's lr axis
        own = {"lr": method_sweeps[method]} if method in method_sweeps else {}
        method_axes = axes | {"method": [method]} | own
        points += [dict(zip(method_axes, values, strict=True)) for values in itertools.product(*method_axes.values())]
    return points


def _method_sweeps(suite: dict, path: str | Path) -> dict[str, list]:
    """method -> its learning-rate list, from `methods: {m: {lr: [...]}}`."""
    sweeps = {}
    for method, layer in (suite.get("methods") or {}).items():
        if "lr" in (layer or {}):
            if not isinstance(layer["lr"], list) or not layer["lr"]:
                raise UserError(f"suite {path} methods.{method}.lr must be a non-empty list of learning rates")
            sweeps[method] = layer["lr"]
    return sweeps


def _run_layers(suite: dict, point: dict, track_memory: bool, path: str | Path) -> list[tuple[str, dict]]:
    """Config layers for one grid point, each named for errors: the suite's config, its task's, its method's,
    then the grid axes."""
    method_layer = {k: v for k, v in ((suite.get("methods") or {}).get(point["method"]) or {}).items() if k != "lr"}
    axes: dict = {axis: point[axis] for axis in ("model", "seed") if point[axis] is not None}
    for axis, key in EXTRA_AXES.items():
        if axis in point:
            set_dotted(axes, key, point[axis])
    if not track_memory:
        set_dotted(axes, "measure.track_memory", False)
    return [
        (f"suite {path} config", suite.get("config") or {}),
        (f"suite {path} tasks.{point['task']}", (suite.get("tasks") or {}).get(point["task"]) or {}),
        (f"suite {path} methods.{point['method']}", method_layer),
        (f"suite {path} grid", axes),
    ]


def _leaf_keys(layer: dict, prefix: str = "") -> list[str]:
    """The dotted keys a config layer sets: its leaves (an empty mapping is a leaf)."""
    keys = []
    for key, value in layer.items():
        if isinstance(value, dict) and value:
            keys += _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _settings(config: dict, keys: tuple[str, ...]) -> dict:
    """config's values at the dotted keys that it holds (a result from before a key existed lacks it)."""
    found = {}
    for dotted in (*IDENTITY, *keys):
        node = config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found[dotted] = node
    return found


def run_id(config: dict, set_keys: tuple[str, ...]) -> str:
    """Stable id: task-method-model-seed plus a hash of config's values at the keys the suite sets (and of the
    task, method, model and seed), so that defaults under them, old or new, leave it alone."""
    canonical = json.dumps(_settings(config, set_keys), sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return f"{run_name(config)}-s{config['seed']}-{digest}"


def load_suite(path: str | Path, track_memory: bool = True) -> tuple[dict, list[SuiteRun]]:
    suite = read_yaml(path)
    unknown = set(suite) - SUITE_KEYS
    if unknown:
        raise UserError(f"unknown suite key(s) {sorted(unknown)} in {path}; valid: {', '.join(sorted(SUITE_KEYS))}")
    grids = suite.get("grid") or {}
    sweeps = _method_sweeps(suite, path)
    runs = []
    for grid in grids if isinstance(grids, list) else [grids]:  # a list of grids is their union
        for point in _grid_points(grid, path, sweeps):
            layers = _run_layers(suite, point, track_memory, path)
            config = build_config(point["method"], point["task"], layers=layers)
            set_keys = tuple(sorted({key for _, layer in layers for key in _leaf_keys(layer)}))
            # the axes' effective values (YAML reads 1e-4 as a string; the config holds the number)
            grid_point = {k: config[k] for k in REQUIRED_AXES} | {
                a: config[key.split(".")[0]][key.split(".")[1]] for a, key in EXTRA_AXES.items() if a in point
            }
            runs.append(SuiteRun(run_id(config, set_keys), grid_point, config, set_keys))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise UserError(f"suite {path} expands to duplicate runs (the same config twice)")
    return suite, runs


def locate_results(out: Path, runs: list[SuiteRun]) -> tuple[dict[str, Path], list[Path]]:
    """Each run's result file in out, and the result files there that belong to no run of the suite.

    A run's file is OUT/<run_id>.json; failing a finished one there, a result of another name whose recorded
    config gives the same id under this suite (an earlier id form; the last to start wins). Files that are not
    readable results are neither.
    """
    by_id = {run.run_id: run for run in runs}
    located = {run.run_id: out / f"{run.run_id}.json" for run in runs}
    other = {}
    for path in sorted(out.glob("*.json")):
        if path.stem not in by_id and (result := read_result(path)) is not None:
            other[path] = result
    unclaimed = []
    for path, result in sorted(other.items(), key=lambda item: item[1]["started_at"] or ""):
        owners = [run for run in runs if _recorded_id(result, run) == run.run_id]
        if not owners:
            unclaimed.append(path)
        for run in owners if result["status"] in FINAL else ():
            if located[run.run_id].stem != run.run_id or _final(located[run.run_id]) is None:
                located[run.run_id] = path
    return located, unclaimed


def _recorded_id(result: dict, run: SuiteRun) -> str | None:
    try:
        return run_id(result["config"], run.set_keys)
    except (KeyError, TypeError):  # a result without task, method, model or seed is no run of a suite
        return None


def select_shard(runs: list[SuiteRun], spec: str | None) -> list[SuiteRun]:
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


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except OSError:
        raise UserError("git is not installed: cannot tell which results are stale") from None


def stale_reason(result: dict, repo: Path, _checked: dict | None = None) -> str | None:
    """Why a finished result no longer describes the current source, or None when it still does.

    Stale: it came from a dirty tree, or its commit is unknown here, or a source file its run loaded (the
    result's environment.git.sources; SOURCE_PATHS for results that predate that record) differs between its
    commit and repo's working tree (`git diff`). Raises UserError when repo is not a git checkout.
    _checked memoizes the answer per commit and sources across the results of one suite.
    """
    recorded = (result.get("environment") or {}).get("git") or {}
    if recorded.get("dirty"):
        return "ran on a dirty tree"
    commit = recorded.get("commit")
    if not commit:
        return "records no commit"
    sources = tuple(recorded.get("sources") or SOURCE_PATHS)
    key = (commit, sources, (result.get("config") or {}).get("method"))
    checked = {} if _checked is None else _checked
    if key not in checked:
        checked[key] = _source_change(repo, *key)
    reason = checked[key]
    return f"{reason} {commit[:8]}" if reason else None


def _source_change(repo: Path, commit: str, sources: tuple[str, ...], method: str | None) -> str | None:
    known = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if known.returncode == 128 and "not a git repository" in known.stderr:
        raise UserError(f"{repo} is not a git checkout: cannot tell which results are stale")
    if known.returncode != 0:
        return "unknown commit"
    changed = _git(repo, "diff", "--name-only", commit, "--", *sources).stdout.split()
    if VARIANTS_FILE in changed and _variant_entry(repo, commit, method) == _variant_entry(repo, None, method):
        changed.remove(VARIANTS_FILE)  # every run reads the whole file, but uses its own variant's entry only
    if not changed:
        return None
    more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
    return f"{changed[0]}{more} changed since"


def _variant_entry(repo: Path, commit: str | None, method: str | None) -> dict:
    """method's entry in the shipped variants file at commit (None: the working tree), its `source` note aside;
    {} for a base method."""
    path = repo / VARIANTS_FILE
    text = path.read_text() if commit is None else _git(repo, "show", f"{commit}:{VARIANTS_FILE}").stdout
    entry = dict((yaml.safe_load(text) or {}).get(method) or {})
    entry.pop("source", None)
    return entry


def _die_with_parent() -> None:
    # A SIGKILLed suite must not leave its run behind, still writing into the results folder.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_dir(run: SuiteRun, out: Path) -> Path:
    return out / "runs" / run.run_id


def start_run(run: SuiteRun, out: Path, processes: int, extra_env: dict[str, str], log: bool) -> subprocess.Popen:
    """Start one training in a fresh process (clean memory accounting; a crash stays contained). extra_env: its
    threads and devices (tunebench.scheduler); log: its output goes to RUN_DIR/output.log, not the terminal."""
    run_dir = _run_dir(run, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "suite_config.yaml"
    config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    meta = json.dumps({"run_id": run.run_id, "suite": out.name, "grid": run.grid})
    train = ["tunebench.training.worker", str(config_path), str(run_dir), str(out / f"{run.run_id}.json"), meta]
    env = dict(os.environ) | extra_env
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
    if not log:
        return subprocess.Popen(command, env=env, preexec_fn=preexec)
    with open(_run_dir(run, out) / "output.log", "w") as output:  # the child holds its own copy of the file
        return subprocess.Popen(command, env=env, preexec_fn=preexec, stdout=output, stderr=subprocess.STDOUT)


@dataclass(frozen=True)
class WorkerRun:
    """What a run on a Ray worker sends back: its exit status, its run folder's top-level files (predictions,
    configs, logs; its folders, checkpoints and tracker logs, stay on the worker's node) and its result file."""

    code: int
    files: dict[str, bytes]
    result: bytes | None

    def keep(self, result_path: Path) -> None:
        """Write it here, the result last and atomically; a file that already holds it (one node, or a shared
        filesystem: the worker wrote this very folder) is left alone."""
        for name, data in self.files.items():
            path = Path(name)
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        if self.result is not None and (not result_path.is_file() or result_path.read_bytes() != self.result):
            write_json_atomic(result_path, json.loads(self.result))  # the run wrote it the same way: same bytes


def run_on_worker(run: SuiteRun, out: Path, processes: int, env: dict[str, str]) -> WorkerRun:
    """On a Ray worker (tunebench.cluster): the run's process, as start_run starts it, and what it left."""
    code = start_run(run, out, processes, env, log=True).wait()
    files = {str(p): p.read_bytes() for p in sorted(_run_dir(run, out).iterdir()) if p.is_file()}
    result = out / f"{run.run_id}.json"
    return WorkerRun(code, files, result.read_bytes() if result.is_file() else None)


def _exit_cause(returncode: int) -> str:
    killed = f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    return f"run process {killed} before writing its result"


def _final(path: Path) -> dict | None:
    """results.final_result, but a result marked `retry` (its Ray worker died: the machinery failed, not the run)
    counts as unfinished, so the next bench runs it again."""
    result = final_result(path)
    return None if result is not None and result.get("retry") else result


def _record_crash(path: Path, run: SuiteRun, cause: str, retry: bool = False) -> None:
    """A run that died without writing its own end (segfault, OOM killer, rank 0 stopped before it could
    record another rank's failure; cause says how) is recorded as failed, with the errors the ranks left.
    retry: the machinery failed, not the run (its Ray worker died): a rerun of the suite runs it again."""
    result = read_result(path)
    if result is not None and result["status"] != "running":
        return
    result = result or {
        "schema": SCHEMA_VERSION,
        "config": run.config,
        "started_at": None,
        "run_id": run.run_id,
        "grid": run.grid,
    }
    errors = [f"rank {f['rank']}: {f['error']}" for f in read_rank_failures(_run_dir(run, out=path.parent))]
    result.update(status="failed", error="; ".join([cause, *errors]), **({"retry": True} if retry else {}))
    write_json_atomic(path, result)


def default_out(suite: dict, suite_path: str | Path) -> Path:
    """Where a suite's results go unless --out says: results/<suite name>."""
    return Path("results") / (suite.get("name") or Path(suite_path).stem)


def run_suite(
    suite_path: str,
    out: str | None = None,
    shard: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    track_memory: bool = True,
    rerun_stale: bool = False,
    jobs: int | None = None,
    devices: str | Sequence[int | str] | None = None,
    executor: str = "local",
    address: str | None = None,
) -> int:
    """Run the suite's missing runs (jobs at once, or one per free group of devices; with executor "ray", as tasks
    on the Ray cluster at address); returns the exit status."""
    suite, every_run = load_suite(suite_path, track_memory)
    runs = select_shard(every_run, shard)
    out_dir = Path(out or default_out(suite, suite_path))
    processes = int(suite.get("processes") or 1)
    slots = plan_slots(jobs, devices, processes)
    _check_executor(executor, jobs, devices, address)
    located, unclaimed = locate_results(out_dir, every_run)
    finished = {r.run_id: _final(located[r.run_id]) for r in runs}
    finished = {k: v for k, v in finished.items() if v is not None}
    stale, note = {}, ""
    if finished and (dry_run or rerun_stale):
        try:
            checked: dict = {}
            stale = {k: why for k, v in finished.items() if (why := stale_reason(v, REPO_ROOT, checked))}
        except UserError as exc:
            if rerun_stale:
                raise
            note = f" (staleness unknown: {exc})"
    done = {k for k in finished if not force and not (rerun_stale and k in stale)}
    todo = [r for r in runs if r.run_id not in done]
    print(f"suite {suite.get('name', suite_path)}: {len(runs)} runs, {len(done)} done, {len(todo)} to run -> {out_dir}")
    if stale or note:
        print(f"{len(stale)} finished runs are stale{note}" + ("" if rerun_stale else "; --rerun-stale reruns them"))
    if dry_run:
        for r in runs:
            state = "to run" if r.run_id not in done else "stale " if r.run_id in stale else "done  "
            why = f"  ({stale[r.run_id]})" if r.run_id in stale else ""
            if r.run_id in finished and located[r.run_id].stem != r.run_id:  # an earlier id form's file
                why += f"  [{located[r.run_id].name}]"
            print(f"  {state}  {r.run_id}  {r.label}{why}")
        _list_unclaimed(unclaimed, out_dir)
        return 0
    suite_files = {f"{r.run_id}.json" for r in every_run} | {located[r.run_id].name for r in every_run}
    write_suite_manifest(out_dir, suite.get("name") or Path(suite_path).stem, sorted(suite_files))
    progress = _Progress(len(runs), len(done), len(todo), report_ends=slots.at_once > 1 or executor == "ray")

    def start(run: SuiteRun, extra_env: dict[str, str]) -> subprocess.Popen:
        progress.starting(run)
        return start_run(run, out_dir, processes, extra_env, log=slots.at_once > 1)

    def finished_run(run: SuiteRun, code: int | None, lost: str | None = None) -> None:
        if code == 130 and lost is None:
            raise KeyboardInterrupt
        path = out_dir / f"{run.run_id}.json"
        if lost is not None:
            _record_crash(path, run, f"its Ray worker ended before the run did: {lost}", retry=True)
        elif code != 0:
            _record_crash(path, run, _exit_cause(code))
        if located[run.run_id] != path and _final(path) is not None:
            located[run.run_id].unlink(missing_ok=True)  # an earlier id form's result, now replaced
        located[run.run_id] = path
        progress.ended(run, (read_result(path) or {"status": "missing"})["status"], _run_dir(run, out_dir))

    if executor == "ray":
        _run_on_ray(todo, out_dir, processes, address, progress.starting, finished_run)
    else:
        run_in_slots(todo, slots, start, finished_run)
    return _summarize(located, runs, time.monotonic() - progress.started)


def _check_executor(executor: str, jobs: int | None, devices: object, address: str | None) -> None:
    if executor not in EXECUTORS:
        raise unknown_choice("executor", executor, EXECUTORS)
    if executor == "local" and address is not None:
        raise UserError("--address names a Ray cluster: it goes with --executor ray")
    if executor == "ray":
        from tunebench.cluster import import_ray

        import_ray()  # installed, or a one-line error before any work
        if jobs is not None or devices is not None:
            raise UserError("--jobs and --devices place runs on this machine; with --executor ray, Ray places them")


def _run_on_ray(
    runs: list[SuiteRun],
    out_dir: Path,
    processes: int,
    address: str | None,
    submitted: Callable[[SuiteRun], None],
    finished_run: Callable[[SuiteRun, int | None, str | None], None],
) -> None:
    """Each run a task on the Ray cluster (tunebench.cluster); what its worker sends back is written here before
    the run counts as ended. A run interrupted on its worker (exit 130) stays `interrupted`: a rerun runs it."""
    from tunebench.cluster import run_on_ray

    if not runs:
        return  # nothing to run: no need to reach the cluster

    def finished(run: SuiteRun, outcome: WorkerRun | None, lost: str | None) -> None:
        if outcome is not None:
            outcome.keep(out_dir / f"{run.run_id}.json")
        code = outcome.code if outcome is not None else None
        finished_run(run, code, lost or ("interrupted on its worker" if code == 130 else None))

    carried = {VERBOSE_ENV: os.environ[VERBOSE_ENV]} if VERBOSE_ENV in os.environ else {}  # workers have their own
    work = partial(run_on_worker, out=out_dir, processes=processes, env=carried)
    run_on_ray(runs, work, submitted, finished, processes, address)


class _Progress:
    """The suite line: runs done, in flight and left, and an ETA from the runs this bench has finished."""

    def __init__(self, total: int, done: int, todo: int, report_ends: bool) -> None:
        self.total, self.done, self.todo, self.report_ends = total, done, todo, report_ends
        self.in_flight = self.finished_here = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def starting(self, run: SuiteRun) -> None:
        with self._lock:
            self.in_flight += 1
            self._print(f"-> {run.label}")

    def ended(self, run: SuiteRun, status: str, run_dir: Path) -> None:
        with self._lock:
            self.in_flight -= 1
            self.done += 1
            self.finished_here += 1
            if self.report_ends:  # runs side by side write their output to a log, not the terminal
                self._print(f"{status}: {run.label} (log {run_dir / 'output.log'})")

    def _print(self, event: str) -> None:
        elapsed = time.monotonic() - self.started
        remaining = self.todo - self.finished_here
        eta = f", ETA {format_seconds(elapsed / self.finished_here * remaining)}" if self.finished_here else ""
        left = self.total - self.done - self.in_flight
        bar = "#" * round(20 * self.done / self.total)
        print(
            f"\nsuite [{bar:<20}] {self.done}/{self.total} done, {self.in_flight} in flight, {left} left{eta} {event}",
            flush=True,
        )


def _list_unclaimed(paths: list[Path], out_dir: Path) -> None:
    if paths:
        print(f"{len(paths)} result files in {out_dir} belong to no run of this suite (the report skips them):")
    for path in paths:
        print(f"  {path.name}")


def _ok_detail(result: dict) -> str:
    """Test accuracy and where the run's time went: training, evaluation (validation and test), the fixed cost and
    the process's start-up before the run (imports), where the result records them."""
    detail = f"test acc {result['test_accuracy']:.4f}  train {format_seconds(result['train_seconds'])}"
    fixed = fixed_seconds(result)
    if fixed is None:  # a result from before test_seconds
        return detail
    detail += f"  eval {format_seconds(result['eval_seconds'])}  fixed {format_seconds(fixed)}"
    startup = result.get("startup_seconds")
    return detail if startup is None else f"{detail}  start-up {format_seconds(startup)}"


def _summarize(located: dict[str, Path], runs: list[SuiteRun], seconds: float) -> int:
    print(f"\nsuite finished in {format_seconds(seconds)}:")
    failed = 0
    for run in runs:
        result = read_result(located[run.run_id]) or {"status": "missing"}
        failed += result["status"] not in ("ok", "oom")
        detail = _ok_detail(result) if result["status"] == "ok" else (result.get("error") or "")
        print(f"  {result['status']:11} {run.label:48} {detail}")
    return 1 if failed else 0
