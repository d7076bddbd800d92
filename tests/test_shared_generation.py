"""Two processes share a generate task's evaluation: each scores its share of the batches, and both get back
what one process alone computes, to the last digit (gloo on the CPU, on any machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from generate_grid import BATCH_SIZES, SPLIT_SIZES

REPO = Path(__file__).resolve().parent.parent


def test_two_processes_generate_and_score_what_one_does(tiny_llm, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launches = {}
    for processes in (1, 2):  # side by side: the one-process run leaves a core free
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command += [str(REPO / "tests" / "generate_grid.py"), tiny_llm, str(tmp_path / f"{processes}.json")]
        launches[processes] = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    runs = {}
    for processes, launch in launches.items():
        _, stderr = launch.communicate(timeout=600)
        assert launch.returncode == 0, stderr[-3000:]
        runs[processes] = json.loads((tmp_path / f"{processes}.json").read_text())
    assert [runs[n]["world_size"] for n in (1, 2)] == [1, 2]
    one, two = runs[1]["rows"], runs[2]["rows"]
    assert [(r["size"], r["batch_size"]) for r in two] == [(s, b) for s in SPLIT_SIZES for b in BATCH_SIZES]
    for single, double in zip(one, two, strict=True):
        assert len(double["outputs"]) == len(double["choice_correct"]) == double["size"]
        assert double == single  # generations, every metric (answer loss to the last digit) and choice outcomes
    # a random model writes varied text: equal generations are not a coincidence of empty outputs
    assert len({o for r in two for o in r["outputs"]}) > 3
