"""Shared by the tests that run one process against two (gloo on the CPU): the launch, and the grid scripts' output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` script runs


def cpu_env(**extra: str) -> dict:
    """The CPU (gloo) path on any machine: the child processes see no GPU, so a CUDA machine runs what this CPU runs."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


def one_and_two_processes(script: Path, args: list[str], out: Path) -> dict[int, dict]:
    """script run by torchrun on 1 and on 2 processes, side by side (the one-process run leaves a core free); each
    writes the JSON it is given as its last argument. Returns {processes: that JSON}."""
    launches = {}
    for processes in (1, 2):
        command = [*TORCHRUN, "--standalone", f"--nproc_per_node={processes}", str(script), *args]
        command.append(str(out / f"{processes}.json"))
        launches[processes] = subprocess.Popen(command, env=cpu_env(), stderr=subprocess.PIPE, text=True)
    runs = {}
    for processes, launch in launches.items():
        _, stderr = launch.communicate(timeout=600)
        assert launch.returncode == 0, stderr[-3000:]
        runs[processes] = json.loads((out / f"{processes}.json").read_text())
    assert [runs[n]["world_size"] for n in (1, 2)] == [1, 2]
    return runs


def write_rows(accelerator, out: str, rows: list[dict]) -> None:
    """A grid script's output: rank 0 writes every row with the world size, then every process ends."""
    if accelerator.is_main_process:
        with open(out, "w") as handle:
            json.dump({"world_size": accelerator.num_processes, "rows": rows}, handle)
    accelerator.end_training()
