"""Runs that end badly: out of memory, Ctrl-C; and result files that are never half-written."""

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
from torch.utils._python_dispatch import _get_current_dispatch_mode

from tunebench.cli import main
from tunebench.results import FINAL, SCHEMA_VERSION, STATUSES, final_result, read_result, write_json_atomic
from tunebench.training.run import OOM_HINT, train

TINY_FLAGS = ["--max-train-samples", "32", "--max-eval-samples", "32", "--max-length", "32", "--batch-size", "16"]


# -- out of memory ------------------------------------------------------------------------------------


def test_out_of_memory_is_a_clean_oom_result_with_a_hint(tmp_path: Path, tiny_config) -> None:
    # MiniLM's weights (87 MiB) fit under the cap; their gradients in the first backward do not
    cfg = tiny_config("full", overrides={"measure": {"memory_cap": 150 * 2**20}})
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "oom"
    assert result["error"].startswith(OOM_HINT)
    assert "passed the cap of 150.0 MiB (measure.memory_cap)" in result["error"]
    saved = read_result(tmp_path / "run" / "result.json")
    assert saved["status"] == "oom" and saved["error"] == result["error"] and saved["finished_at"]
    assert "test_accuracy" not in saved and not (tmp_path / "run" / "best").exists()
    assert final_result(tmp_path / "run" / "result.json") is not None  # final: a rerun of the suite does not repeat it
    # the memory tracker let go of the process: no dispatch mode or saved-tensor hook left behind
    assert _get_current_dispatch_mode() is None
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_out_of_memory_from_the_command_line_exits_1(capsys, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = main(
            ["train", "--method", "head", *TINY_FLAGS, "--set", "train.trackers=[]"]
            + ["--set", "measure.memory_cap=1e6", "--out", str(tmp_path / "run")]
        )
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 1  # the run failed; the input was fine
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"tunebench: run oom: {OOM_HINT} (tensor memory ")
    assert read_result(tmp_path / "run" / "result.json")["status"] == "oom"


# -- Ctrl-C -----------------------------------------------------------------------------------------


def _wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"tunebench ended early: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("tunebench did not start training in time")
        time.sleep(0.2)


def test_ctrl_c_marks_the_run_interrupted_never_complete(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result_path = run_dir / "result.json"
    tunebench = Path(sys.executable).with_name("tunebench")
    # full fine-tuning on 512 examples: minutes of steps, so the signal lands inside the loop
    process = subprocess.Popen(
        [str(tunebench), "train", "--method", "full", "--max-train-samples", "512", "--max-length", "32"]
        + ["--batch-size", "16", "--set", "train.trackers=[]", "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    try:
        _wait_for(lambda: (read_result(result_path) or {}).get("status") == "running", 240, process)
        log = run_dir / "train.log"
        _wait_for(lambda: log.exists() and "parameters train" in log.read_text(), 240, process)
        time.sleep(2.0)  # into the first steps
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr[-2000:]
    assert "tunebench: interrupted\n" in stderr  # (after the unfinished progress bar, on its line)
    assert "Traceback" not in stderr
    result = read_result(result_path)
    assert result is not None and result["status"] == "interrupted"
    assert result["error"].startswith("interrupted") and result["finished_at"]
    assert "test_accuracy" not in result
    assert final_result(result_path) is None
    assert not list(run_dir.glob(".result.json.*")), "a temporary result file was left behind"


# -- result files -----------------------------------------------------------------------------------


def a_result(status: str = "ok", **extra) -> dict:
    return {"schema": SCHEMA_VERSION, "status": status, "config": {}, "started_at": "now", **extra}


class InterruptedWhileSerialized:
    def __str__(self) -> str:  # json.dump(default=str) calls this halfway through the file
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("poison", "error"),
    [
        ({("not", "a", "string", "key"): 1}, TypeError),
        (InterruptedWhileSerialized(), KeyboardInterrupt),
    ],
)
def test_write_json_atomic_leaves_the_old_file_whole(tmp_path: Path, poison: object, error: type) -> None:
    path = tmp_path / "result.json"
    old = a_result(test_accuracy=0.5)
    write_json_atomic(path, old)
    with pytest.raises(error):
        # enough text before the poison that json.dump has written part of the file when it fails
        write_json_atomic(path, a_result(curves=["x" * 100] * 1000, z_poison=poison))
    assert json.loads(path.read_text()) == old
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_write_json_atomic_replaces_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "result.json"
    write_json_atomic(path, a_result("running"))
    write_json_atomic(path, a_result(test_accuracy=0.9, when=time))  # non-JSON values are written as text
    data = read_result(path)
    assert data["status"] == "ok" and data["when"].startswith("<module 'time'")
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


@pytest.mark.parametrize(
    ("content", "complete"),
    [
        (json.dumps(a_result(test_accuracy=0.8)), True),
        (json.dumps(a_result("oom", error="out of memory")), True),
        (json.dumps(a_result("failed", error="boom")), True),
        (json.dumps(a_result("interrupted")), False),
        (json.dumps(a_result("running")), False),
        (json.dumps(a_result()), False),  # ok without a test accuracy is not a finished run
        (json.dumps(a_result(test_accuracy=0.8))[:-20], False),  # truncated
        (json.dumps({**a_result(test_accuracy=0.8), "schema": SCHEMA_VERSION + 1}), False),
        (json.dumps(a_result("exploded")), False),
        (json.dumps([a_result()]), False),
        ("", False),
    ],
)
def test_only_final_results_are_complete(tmp_path: Path, content: str, complete: bool) -> None:
    path = tmp_path / "result.json"
    path.write_text(content)
    assert (final_result(path) is not None) is complete
    assert (read_result(path) is not None) is (complete or '"interrupted"' in content or '"running"' in content)


def test_statuses() -> None:
    assert set(FINAL) == {"ok", "oom", "failed"} and set(STATUSES) - set(FINAL) == {"interrupted", "running"}
    assert final_result("/no/such/result.json") is None
