"""Several processes (gloo on the CPU): evaluation and feature caching at any split and batch size,
the README's command as written, and a failure on one rank."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from eval_grid import EVAL_BATCH_SIZES, SPLIT_SIZES, VARIANTS
from fixtures.rank1_fails import ERROR
from two_processes import TORCHRUN, cpu_env, one_and_two_processes

from tunebench.config import build_config
from tunebench.data.tasks import get_task, load_task
from tunebench.harness import _exit_cause, _record_crash, load_suite
from tunebench.results import SCHEMA_VERSION, rank_failure_path, read_result, write_json_atomic

REPO = Path(__file__).resolve().parent.parent


def test_two_processes_predict_what_one_does_at_any_split_and_batch_size(decoder_folder, tmp_path):
    # A random 2-layer Llama keeps 2 x 5 variants x 15 evaluations fast; the code path is every method's.
    runs = one_and_two_processes(REPO / "tests" / "eval_grid.py", [decoder_folder], tmp_path)
    task = load_task(get_task("rotten_tomatoes"), build_config("full", "rotten_tomatoes")["data"])
    labels = np.array(task.splits["test"]["label"])
    one, two = runs[1]["rows"], runs[2]["rows"]
    expected = [(v, s, b) for v in VARIANTS for s in SPLIT_SIZES for b in EVAL_BATCH_SIZES]
    assert [(r["variant"], r["size"], r["batch_size"]) for r in two] == expected
    for single, double in zip(one, two, strict=True):
        case = (double["variant"], double["size"], double["batch_size"])
        # each example once, in dataset order: as many predictions as examples, scored against their own labels
        assert len(double["predictions"]) == double["size"], case
        truth = labels[: double["size"]]
        assert double["accuracy"] == pytest.approx(float((np.array(double["predictions"]) == truth).mean())), case
        assert double["predictions"] == single["predictions"], case
    # the untrained heads do not predict one class for everything: equal predictions are not a coincidence
    assert all(len(set(r["predictions"])) == 2 for r in two if r["size"] == 853)


def readme_cpu_command() -> str:
    """The CPU line of the README's multi-process example, without its comment."""
    section = (REPO / "README.md").read_text().split("## Multiple processes and machines", 1)[1]
    [line] = [line for line in section.splitlines() if line.startswith("ACCELERATE_USE_CPU=1 torchrun")]
    return line.split("#", 1)[0].strip()


def test_readme_multiprocess_command_runs_as_written(tmp_path):
    words = shlex.split(readme_cpu_command())
    env = dict(re.fullmatch(r"(\w+)=(.*)", w).groups() for w in words[: words.index("torchrun")])
    command = [*TORCHRUN, *words[words.index("torchrun") + 1 :]]
    # small sample counts; 200 evaluation examples make batches of 128 and 72, one for each process
    command += ["--max-train-samples", "32", "--max-eval-samples", "200"]
    done = subprocess.run(command, env=cpu_env(**env), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = (tmp_path / "runs").iterdir()  # no --out: one folder for both ranks, named by rank 0
    result = read_result(run_dir / "result.json")
    assert result["status"] == "ok" and result["environment"]["world_size"] == 2
    assert result["task"]["sizes"]["test"] == 200
    assert len(json.loads((run_dir / "test_predictions.json").read_text())) == 200


def test_failure_on_one_rank_ends_every_rank_and_the_result_names_it(tmp_path):
    run_dir = tmp_path / "run"
    command = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "tunebench.cli", "train"]
    command += ["--method", "tests.fixtures.rank1_fails", "--max-train-samples", "32", "--max-eval-samples", "24"]
    command += ["--max-length", "32", "--batch-size", "16", "--set", "train.trackers=[]", "--out", str(run_dir)]
    # a hang would end in TimeoutExpired: torchrun stops rank 0 once rank 1 has exited
    done = subprocess.run(command, env=cpu_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"RuntimeError: {ERROR}" in done.stderr  # rank 1's own traceback
    result = read_result(run_dir / "result.json")
    assert result["status"] == "failed"
    assert result["error"] == f"rank 1: RuntimeError: {ERROR}"


def test_harness_names_the_failed_rank_when_rank_0_died_first(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("grid: {task: [rotten_tomatoes], method: [lora]}\nprocesses: 2\n")
    _, [run] = load_suite(suite)
    path = tmp_path / "results" / f"{run.run_id}.json"
    write_json_atomic(path, {"schema": SCHEMA_VERSION, "status": "running", "config": run.config, "started_at": "x"})
    failure = {"rank": 1, "status": "failed", "error": "ValueError: bad shard"}
    write_json_atomic(rank_failure_path(tmp_path / "results" / "runs" / run.run_id, 1), failure)
    _record_crash(path, run, _exit_cause(-9))
    result = read_result(path)
    assert result["status"] == "failed"
    assert result["error"] == "run process killed by signal 9 before writing its result; rank 1: ValueError: bad shard"
