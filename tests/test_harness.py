"""The benchmark harness: suite expansion, ids, shards, the result schema, resume, OOM, breakdowns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import deep_update

import tunebench.api
import tunebench.config
from tunebench.cli import main
from tunebench.config import build_config
from tunebench.errors import UserError
from tunebench.files import CONFIG_DIR, read_yaml
from tunebench.harness import load_suite, locate_results, run_id, select_shard, stale_reason
from tunebench.measure import git_state
from tunebench.results import SCHEMA_VERSION, final_result, fixed_seconds, read_result
from tunebench.training.evaluation import evaluate_run

REPO = Path(__file__).resolve().parent.parent
COMMITTED = ("quick", "llm", "rotten_tomatoes_cpu")  # configs/suites/NAME.yaml -> results/NAME
TINY = {
    "data": {"max_train_samples": 64, "max_eval_samples": 32, "max_length": 32},
    "train": {"max_steps": 3, "trackers": [], "save": "best", "eval_batch_size": 32, "batch_size": 16},
}


def write_suite(path: Path, grid_methods: list[str], seeds: list[int], **extra) -> Path:
    suite = {
        "name": path.stem,
        "config": TINY,
        "grid": {"model": ["minilm"], "task": ["rotten_tomatoes"], "method": grid_methods, "seed": seeds},
        **extra,
    }
    path.write_text(yaml.safe_dump(suite))
    return path


def bench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunebench.cli", "bench", *args], capture_output=True, text=True, cwd=REPO, **kwargs
    )


def bench_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`tunebench bench ...` through the CLI's main() in this process: for what trains nothing (a dry run, bad
    input), where a fresh process would add only its imports. Runs that train go through bench()."""
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["tunebench", "bench", *args], code, out, err)


def test_run_id_is_stable_and_follows_what_the_suite_sets():
    cfg = build_config("lora", "rotten_tomatoes")
    keys = ("train.lr", "data.max_length")
    assert run_id(cfg, keys) == run_id(build_config("lora", "rotten_tomatoes"), keys)
    assert run_id(cfg, keys) == run_id({**cfg, "out": "/somewhere/else"}, keys)  # where results go is not the run
    assert run_id(dict(reversed(list(cfg.items()))), keys) == run_id(cfg, keys)  # key order does not matter
    changed = build_config("lora", "rotten_tomatoes", overrides={"train": {"lr": 2e-4}})
    assert run_id(changed, keys) != run_id(cfg, keys)
    other_default = build_config("lora", "rotten_tomatoes", overrides={"train": {"weight_decay": 0.5}})
    assert run_id(other_default, keys) == run_id(cfg, keys)  # a key the suite leaves alone is not the run's id
    assert run_id(cfg, keys).startswith("rotten_tomatoes-lora-minilm-s42-")


def _committed_suites() -> list[tuple[Path, Path]]:
    return [(REPO / "configs" / "suites" / f"{name}.yaml", REPO / "results" / name) for name in COMMITTED]


def test_a_new_default_keeps_every_committed_run_id_and_result(tmp_path, monkeypatch):
    """The committed results, of an earlier id form, stay the suites' results; a new default changes no id."""
    before = {}
    for suite, results in _committed_suites():
        _, runs = load_suite(suite)
        located, unclaimed = locate_results(results, runs)
        assert not unclaimed and all(final_result(located[r.run_id]) for r in runs), suite.name
        before[suite] = {r.run_id: located[r.run_id] for r in runs}
    defaults = read_yaml(CONFIG_DIR / "defaults.yaml")
    defaults["train"]["new_knob"] = 0  # a release adds a key whose default changes nothing
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    monkeypatch.setattr(tunebench.config, "CONFIG_DIR", tmp_path)
    for suite, results in _committed_suites():
        _, runs = load_suite(suite)
        assert all(r.config["train"]["new_knob"] == 0 for r in runs)
        located, unclaimed = locate_results(results, runs)
        assert {r.run_id: located[r.run_id] for r in runs} == before[suite] and not unclaimed


def test_shards_cover_every_run_exactly_once():
    _, runs = load_suite(REPO / "configs" / "suites" / "standard.yaml")
    shards = [select_shard(runs, f"{i}/5") for i in range(1, 6)]
    ids = [r.run_id for s in shards for r in s]
    assert sorted(ids) == sorted(r.run_id for r in runs)
    assert len(ids) == len(set(ids)) == 36
    for bad in ("0/3", "4/3", "x", "1-3"):
        with pytest.raises(UserError, match="i/n"):
            select_shard(runs, bad)


def test_suite_grid_layers_method_and_task_overrides():
    _, runs = load_suite(REPO / "configs" / "suites" / "quick.yaml")
    assert len(runs) == 8
    by_key = {(r.grid["task"], r.grid["method"]): r.config for r in runs}
    for task, epochs in (("rotten_tomatoes", 1), ("banking77", 3)):  # one training budget for every method
        assert {c["train"]["epochs"] for (t, _), c in by_key.items() if t == task} == {epochs}
    assert by_key[("banking77", "full")]["data"]["max_train_samples"] == 3000
    assert by_key[("banking77", "lora")]["train"]["lr"] == 1e-3  # the method's own default stays


def test_learning_rate_axis_and_per_method_sweeps(tmp_path):
    suite = write_suite(tmp_path / "lr.yaml", ["full", "head"], [1], methods={"head": {"lr": ["1e-2", 0.1]}})
    grid = yaml.safe_load(suite.read_text())
    grid["grid"]["lr"] = ["1e-4", 3.0e-4]  # YAML reads 1e-4 (no dot) as a string: the config holds the number
    suite.write_text(yaml.safe_dump(grid))
    _, runs = load_suite(suite)
    got = sorted((r.grid["method"], r.grid["lr"], r.config["train"]["lr"]) for r in runs)
    assert got == [("full", 1e-4, 1e-4), ("full", 3e-4, 3e-4), ("head", 1e-2, 1e-2), ("head", 0.1, 0.1)]
    grid["methods"] = {"head": {"lr": 0.1}}
    suite.write_text(yaml.safe_dump(grid))
    with pytest.raises(UserError, match="methods.head.lr must be a non-empty list"):
        load_suite(suite)


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_stale_results_against_a_real_git_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tunebench").mkdir(parents=True)
    (repo / "tunebench" / "loop.py").write_text("x = 1\n")
    (repo / "tunebench" / "report.py").write_text("y = 1\n")
    (repo / "README.md").write_text("notes\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    first = _git(repo, "rev-parse", "HEAD")

    def result(commit, dirty=False, sources=None):
        return {"environment": {"git": {"commit": commit, "dirty": dirty} | ({"sources": sources} if sources else {})}}

    loop_only = result(first, sources=["tunebench/loop.py"])
    assert stale_reason(result(first), repo) is None
    assert stale_reason(result(first, dirty=True), repo) == "ran on a dirty tree"
    assert stale_reason({"environment": {}}, repo) == "records no commit"
    assert stale_reason(result("f" * 40), repo) == "unknown commit ffffffff"
    (repo / "README.md").write_text("more notes\n")  # not source: the result still stands, a new run is clean
    assert stale_reason(result(first), repo) is None
    assert git_state(repo) == {"commit": first, "dirty": False}
    (repo / "tunebench" / "report.py").write_text("y = 2\n")  # source, but not loaded by the run that records it
    assert stale_reason(loop_only, repo) is None
    assert stale_reason(result(first), repo) == f"tunebench/report.py changed since {first[:8]}"  # no record: all
    (repo / "tunebench" / "loop.py").write_text("x = 2\n")  # uncommitted change to a source the run loaded
    assert stale_reason(loop_only, repo) == f"tunebench/loop.py changed since {first[:8]}"
    assert git_state(repo) == {"commit": first, "dirty": True}
    _git(repo, "commit", "-qam", "second")
    assert stale_reason(result(first), repo) == f"tunebench/loop.py and 1 more changed since {first[:8]}"
    assert stale_reason(result(_git(repo, "rev-parse", "HEAD"), sources=["tunebench/loop.py"]), repo) is None
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a git checkout"):
        stale_reason(result(first), tmp_path / "plain")


def test_a_variants_file_change_stales_only_the_runs_of_the_changed_variant(tmp_path):
    """Every run reads the whole shipped variants file but uses its own entry: a changed entry stales that
    variant's results only; its `source` note, another variant's entry or a new variant stale none."""
    repo = tmp_path / "repo"
    variants = repo / "configs" / "variants.yaml"
    variants.parent.mkdir(parents=True)
    entries = {
        "pissa": {"base": "lora", "options": {"peft_config": {"init_lora_weights": "pissa"}}, "source": "peft"},
        "dora": {"base": "lora", "options": {"use_dora": True}, "source": "peft"},
    }
    variants.write_text(yaml.safe_dump(entries))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    first = _git(repo, "rev-parse", "HEAD")
    git = {"commit": first, "dirty": False, "sources": ["configs/variants.yaml"]}
    pissa, dora, lora = ({"config": {"method": m}, "environment": {"git": git}} for m in ("pissa", "dora", "lora"))
    entries["pissa"]["source"] = "peft docs, LoRA initialization"
    entries["vera"] = {"base": "lora", "options": {}, "source": "peft"}
    variants.write_text(yaml.safe_dump(entries))
    assert [stale_reason(r, repo) for r in (pissa, dora, lora)] == [None, None, None]
    entries["pissa"]["options"]["peft_config"]["init_lora_weights"] = "pissa_niter_16"
    variants.write_text(yaml.safe_dump(entries))
    checked = {}
    assert stale_reason(pissa, repo, checked) == f"configs/variants.yaml changed since {first[:8]}"
    assert stale_reason(dora, repo, checked) is None and stale_reason(lora, repo, checked) is None


def test_dry_run_lists_stale_results_and_rerun_stale_reruns_them(tmp_path, capsys):
    suite = write_suite(tmp_path / "stale.yaml", ["head"], [1])
    _, [run] = load_suite(suite)
    results = tmp_path / "results"
    results.mkdir()
    old = {"schema": SCHEMA_VERSION, "status": "ok", "config": run.config, "started_at": "x", "test_accuracy": 0.5}
    old["environment"] = {"git": {"commit": "0" * 40, "dirty": False}}  # a commit this checkout does not have
    (results / f"{run.run_id}.json").write_text(json.dumps(old))
    out = bench_in_process(capsys, str(suite), "--out", str(results), "--dry-run")
    assert "1 runs, 1 done, 0 to run" in out.stdout and "1 finished runs are stale" in out.stdout
    assert f"stale   {run.run_id}" in out.stdout and "(unknown commit 00000000)" in out.stdout
    began = time.monotonic()
    out = bench(str(suite), "--out", str(results), "--rerun-stale")
    wall = time.monotonic() - began
    assert out.returncode == 0, out.stderr[-2000:]
    rerun = read_result(results / f"{run.run_id}.json")
    assert rerun["status"] == "ok" and rerun["started_at"] != "x"
    # the run process's own start-up (imports) before its run: counted by the kernel, inside this bench's wall time
    assert 0 < rerun["startup_seconds"] < wall - rerun["run_seconds"] and "start-up" in out.stdout
    git = rerun["environment"]["git"]
    assert git["commit"] == _git(REPO, "rev-parse", "HEAD")
    # what the run loaded, and only that: the loop and its defaults, not the harness that started it
    assert {"tunebench/training/run.py", "methods/head.py", "configs/defaults.yaml"} <= set(git["sources"])
    parent_side = ("tunebench/harness", "tunebench/cli", "tunebench/api", "tunebench/planner", "tunebench/report")
    assert not [s for s in git["sources"] if s.startswith(parent_side)]


def test_bad_suite_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"grid": {"task": ["rotten_tomatoes"], "method": ["lora"], "layers": [1]}}))
    out = bench_in_process(capsys, str(path), "--dry-run")
    assert out.returncode == 2
    assert "unknown grid axis ['layers']" in out.stderr and "batch_size" in out.stderr
    path.write_text(
        yaml.safe_dump({"grid": {"task": ["rotten_tomatoes"], "method": ["lora"]}, "config": {"train": {"lrate": 1}}})
    )
    out = bench_in_process(capsys, str(path), "--dry-run")
    assert out.returncode == 2 and f"unknown config key 'train.lrate' in suite {path} config;" in out.stderr


def test_bad_jobs_or_devices_are_one_line_errors(tmp_path):
    one = write_suite(tmp_path / "one.yaml", ["head"], [1])
    two = write_suite(tmp_path / "two.yaml", ["head"], [1], processes=2)
    for suite, flags in (
        (one, ["--jobs", "0"]),
        (one, ["--jobs", "two"]),
        (one, ["--devices", "0,gpu1"]),
        (two, ["--devices", "3"]),  # each run needs two
    ):
        out = bench(str(suite), *flags, "--out", str(tmp_path / "r"))
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (flags, out.stderr)
    assert not (tmp_path / "r").exists()  # rejected before any work


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    """full, lora and head, each a few steps on MiniLM."""
    methods = {"head": {"method_options": {"cache_features": False}}}
    return write_suite(tmp_path_factory.mktemp("suite") / "tiny.yaml", ["full", "lora", "head"], [1], methods=methods)


def results_by_method(folder: Path) -> dict[str, dict]:
    return {result["grid"]["method"]: result for result in map(read_result, folder.glob("*.json"))}


@pytest.fixture(scope="module")
def suite_results(tiny_suite) -> dict[str, dict]:
    """The tiny suite, run by run, each in a fresh process."""
    out = bench(str(tiny_suite), "--out", str(tiny_suite.parent / "results"))
    assert out.returncode == 0, out.stderr[-2000:]
    # each run's summary line says where its time went: training, evaluation and the fixed cost
    assert out.stdout.split("suite finished in")[1].count(" fixed ") == 3
    return results_by_method(tiny_suite.parent / "results")


def test_runs_side_by_side_give_the_same_results(tiny_suite, suite_results):
    """--jobs 2: two runs at once, one core each on two cores; the same ids and figures as one by one."""
    out = bench(str(tiny_suite), "--out", str(tiny_suite.parent / "side_by_side"), "--jobs", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 in flight" in out.stdout and "ok: " in out.stdout
    side_by_side = results_by_method(tiny_suite.parent / "side_by_side")
    assert set(side_by_side) == set(suite_results)
    cores = len(os.sched_getaffinity(0))
    for method, alone in suite_results.items():
        paired = side_by_side[method]
        assert paired["run_id"] == alone["run_id"]
        for key in ("test_accuracy", "test_f1", "best_validation_accuracy"):
            assert paired[key] == alone[key], (method, key)
        assert paired["environment"]["torch_threads"] == max(1, cores // 2)
        assert alone["environment"]["torch_threads"] == torch.get_num_threads()  # a lone run keeps every core
        assert (Path(paired["run_dir"]) / "output.log").stat().st_size > 0


def test_result_schema(suite_results):
    assert set(suite_results) == {"full", "lora", "head"}
    for method, result in suite_results.items():
        assert result["status"] == "ok" and result["error"] is None
        assert result["run_id"].startswith(f"rotten_tomatoes-{method}-minilm-s1-")
        assert result["suite"] == "results" and result["grid"]["method"] == method
        assert result["config"]["method"] == method
        for key in (
            "test_accuracy",
            "test_f1",
            "best_validation_accuracy",
            "best_step",
            "trainable_params",
            "total_params",
            "train_seconds",
            "run_seconds",
            "samples_per_second",
            "tokens_per_second",
            "epochs_per_second",
            "tokens_processed",
            "examples_seen",
            "optimizer_steps",
            "micro_batches",
            "step_seconds_median",
            "step_seconds_p10",
            "step_seconds_p90",
            "checkpoint_bytes",
            "peak_memory_bytes",
            "peak_memory_source",
            "peak_memory_includes",
            "started_at",
            "finished_at",
        ):
            assert result[key] is not None, key
        assert 0 <= result["test_accuracy"] <= 1
        assert result["test"]["accuracy"] == result["test_accuracy"]
        assert result["step_seconds_p10"] <= result["step_seconds_median"] <= result["step_seconds_p90"]
        assert result["eval_seconds"] == result["validation_seconds"] + result["test_seconds"]
        assert 0 < fixed_seconds(result) < result["run_seconds"]
        # tokens/s counts non-padding tokens only: fewer than batch x padded length
        assert result["tokens_per_second"] < result["samples_per_second"] * 32
        # log_every 10 over 3 steps: the loss of step 1, then the mean of steps 2-3 before the final evaluation
        assert [p["step"] for p in result["curves"]["train_loss"]] == [1, 3] and result["curves"]["validation"]
        memory = result["memory"]
        assert memory["peak_rss_bytes"] > 0 and memory["cuda"] is None
        roles = {"weights", "buffers", "gradients", "optimizer_state", "activations", "other"}
        assert set(memory["tensor"]["at_peak"]) == roles
        assert sum(memory["tensor"]["at_peak"].values()) == memory["tensor"]["peak_bytes"]
        env = result["environment"]
        assert env["versions"]["torch"] and env["cpu"] and env["world_size"] == 1
        assert "commit" in env["git"] and "dirty" in env["git"]
        assert result["checkpoint_bytes"] == sum(
            f.stat().st_size for f in (Path(result["run_dir"]) / "best").rglob("*") if f.is_file()
        )


def test_breakdown_sanity(suite_results):
    full, lora, head = (suite_results[m]["memory"]["tensor"] for m in ("full", "lora", "head"))
    # weights are exactly the parameter bytes (MiniLM: fp32, plus the task head)
    assert full["weights_bytes"] == full["at_peak"]["weights"] == 4 * suite_results["full"]["total_params"]
    # AdamW keeps two fp32 moments per trainable parameter
    assert full["max_by_category"]["optimizer_state"] == 2 * 4 * suite_results["full"]["trainable_params"]
    assert lora["max_by_category"]["optimizer_state"] == 2 * 4 * suite_results["lora"]["trainable_params"]
    # gradients exist for trainable parameters only
    assert full["max_by_category"]["gradients"] == 4 * suite_results["full"]["trainable_params"]
    assert lora["max_by_category"]["gradients"] == 4 * suite_results["lora"]["trainable_params"]
    assert lora["max_by_category"]["gradients"] < 0.05 * full["max_by_category"]["gradients"]
    # a frozen backbone saves nothing for backward: only the head's input and dropout mask remain
    assert head["max_by_category"]["activations"] < 0.01 * full["max_by_category"]["activations"]


def test_oom_is_recorded_and_the_suite_goes_on(tmp_path):
    suite = write_suite(
        tmp_path / "oom.yaml", ["full", "head"], [1], methods={"full": {"measure": {"memory_cap": 150_000_000}}}
    )
    out = bench(str(suite), "--out", str(tmp_path / "results"))
    assert out.returncode == 0, out.stderr[-2000:]
    results = {r["grid"]["method"]: r for r in map(read_result, (tmp_path / "results").glob("*.json"))}
    assert results["full"]["status"] == "oom"
    assert "out of memory" in results["full"]["error"] and "--batch-size" in results["full"]["error"]
    assert results["head"]["status"] == "ok"
    assert "oom" in out.stdout


@pytest.mark.parametrize("jobs", [1, 2])
def test_kill_and_resume_runs_only_what_is_missing(tmp_path, jobs):
    # One at a time, two runs: the first finishes, the second is in flight when the suite dies. --jobs 2, three
    # runs: the first to finish ends the suite, with the others in flight (the third took the freed slot) or not
    # started. One step and a few examples each: what is checked is which runs are redone, not what they learn.
    light = {"data": {"max_train_samples": 16, "max_eval_samples": 8}, "train": {"max_steps": 1}}
    seeds = list(range(1, jobs + 2))
    suite = write_suite(
        tmp_path / "resume.yaml",
        ["head"],
        seeds,
        config=deep_update(TINY, light),
        methods={"head": {"method_options": {"cache_features": False}}},
    )
    results = tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "tunebench.cli", "bench", str(suite), "--out", str(results), "--jobs", str(jobs)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    finished: list[Path] = []
    while time.monotonic() < deadline and not finished:
        time.sleep(0.5)
        finished = [p for p in results.glob("*.json") if (read_result(p) or {}).get("status") == "ok"]
    assert finished, "the first run did not finish in time"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # the run in flight dies with its parent (PR_SET_PDEATHSIG)
    # side by side, another run may have finished between the last look and the kill
    finished = [p for p in results.glob("*.json") if (read_result(p) or {}).get("status") == "ok"]
    first = {p.name: p.read_text() for p in finished}
    in_flight = [p for p in results.glob("*.json") if p not in finished]
    assert all((read_result(p) or {}).get("status") in (None, "running") for p in in_flight)
    assert len(finished) < len(seeds)

    (results / "corrupt.json").write_text("{not json")  # not a result: ignored, never read as one
    out = bench(str(suite), "--out", str(results), "--jobs", str(jobs))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(seeds)} runs, {len(finished)} done, {len(seeds) - len(finished)} to run" in out.stdout
    done = [read_result(p) for p in results.glob("*.json") if p.name != "corrupt.json"]
    assert sorted(r["grid"]["seed"] for r in done) == seeds
    assert all(r["status"] == "ok" for r in done)
    assert {p.name: p.read_text() for p in finished} == first  # finished runs were not redone
    assert not list(results.glob(".*.tmp"))


def test_an_earlier_id_form_is_read_then_replaced_and_other_results_are_listed(tmp_path):
    head = {"head": {"method_options": {"cache_features": False}}}
    suite = write_suite(tmp_path / "ids.yaml", ["head"], [1], methods=head)
    results = tmp_path / "results"
    assert bench(str(suite), "--out", str(results)).returncode == 0
    _, [run] = load_suite(suite)
    earlier = results / f"{run.run_id[:-10]}0123456789.json"  # the same run under an earlier id form
    (results / f"{run.run_id}.json").rename(earlier)
    out = bench(str(suite), "--out", str(results), "--dry-run")
    assert "1 runs, 1 done, 0 to run" in out.stdout and f"[{earlier.name}]" in out.stdout

    write_suite(suite, ["head"], [1, 2], methods=head)
    out = bench(str(suite), "--out", str(results), "--force")  # reruns seed 1: its result replaces the earlier file
    assert out.returncode == 0, out.stderr[-2000:]
    assert not earlier.exists() and read_result(results / f"{run.run_id}.json")["status"] == "ok"

    write_suite(suite, ["head"], [2], methods=head)
    out = bench(str(suite), "--dry-run", "--out", str(results))
    assert "1 result files" in out.stdout and f"  {run.run_id}.json" in out.stdout  # seed 1: no run of this suite
    outcome = tunebench.api.bench(suite, out=results)  # nothing to run; records the suite's files
    assert outcome["exit_status"] == 0 and [r["grid"]["seed"] for r in outcome["results"]] == [2]
    report = tmp_path / "report"
    out = subprocess.run(
        [sys.executable, "-m", "tunebench.cli", "report", str(results), "-o", str(report)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    markdown = (report / "report.md").read_text()
    assert f"Skipped 1 result files in `{results}` that belong to no run of suite `ids`" in markdown
    assert f"{run.run_id}.json" in markdown and "1 runs from" in markdown


def test_partial_result_file_is_rerun(tmp_path, capsys):
    suite = write_suite(tmp_path / "partial.yaml", ["head"], [1])
    _, [run] = load_suite(suite)
    results = tmp_path / "results"
    results.mkdir()
    good = {"schema": SCHEMA_VERSION, "status": "ok", "config": run.config, "started_at": "x", "test_accuracy": 0.5}
    (results / f"{run.run_id}.json").write_text(json.dumps(good)[:40])  # truncated
    out = bench_in_process(capsys, str(suite), "--out", str(results), "--dry-run")
    assert "1 runs, 0 done, 1 to run" in out.stdout
    (results / f"{run.run_id}.json").write_text(json.dumps(good))
    out = bench_in_process(capsys, str(suite), "--out", str(results), "--dry-run")
    assert "1 runs, 1 done, 0 to run" in out.stdout
    out = bench_in_process(capsys, str(suite), "--out", str(results), "--dry-run", "--force")
    assert "0 to run" not in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="exercises the CPU (gloo) multi-process path")
def test_two_processes_write_one_result_with_every_rank(tmp_path):
    suite = write_suite(tmp_path / "ddp.yaml", ["lora"], [1], processes=2)
    out = bench(str(suite), "--out", str(tmp_path / "results"))
    assert out.returncode == 0, out.stderr[-3000:]
    [result] = [read_result(p) for p in (tmp_path / "results").glob("*.json")]
    assert result["status"] == "ok"
    assert result["environment"]["world_size"] == 2
    assert [r["rank"] for r in result["memory"]["per_rank"]] == [0, 1]
    assert all(r["peak_rss_bytes"] > 0 for r in result["memory"]["per_rank"])
    # DDP's gradient buckets hold one fp32 copy of every trainable gradient: counted as buffers, beside the
    # model's own few KiB of buffers
    buffers = result["memory"]["tensor"]["at_peak"]["buffers"]
    assert buffers == pytest.approx(4 * result["trainable_params"], abs=2**16)
    # every test example counted once, though sharding pads the last batch with repeats
    predictions = json.loads((Path(result["run_dir"]) / "test_predictions.json").read_text())
    assert len(predictions) == result["task"]["sizes"]["test"] == 32
    again = evaluate_run(result["run_dir"])  # one process, the saved adapter
    assert again["agreement_with_training"] == 1.0 and again["accuracy"] == result["test_accuracy"]
