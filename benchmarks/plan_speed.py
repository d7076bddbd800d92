"""How long does `tunebench plan` take, Python start-up included? Each plan is a fresh subprocess, timed from start.

    python -m tunebench.benchmarks.plan_speed [--repeats 3] [--out reports/benchmarks/plan_speed.json]

Two plans, the issue's targets: an 8B SFT plan for every method on one GPU (`--model llama-3.1-8b --seq-len 2048`),
and a 70B plan over 8 GPUs with FSDP (`--model llama-3.1-70b --gpus 8 --strategy fsdp`). Each is run --repeats
times; the JSON holds every wall time, the median, min and max, the command and the environment. Timings on a busy
machine mean little: run it on a quiet one. `--plan NAME ARGS...` replaces the two with your own (the tests use a
tiny one).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tunebench import REPO_ROOT
from tunebench.measure import environment
from tunebench.results import write_json_atomic

PLANS = {
    "8b-sft-all-methods": ["--model", "llama-3.1-8b", "--gpu", "h100-80g", "--seq-len", "2048", "--batch-size", "4"],
    "70b-fsdp-8-gpus": [
        "--model", "llama-3.1-70b", "--gpu", "h100-80g", "--seq-len", "2048", "--batch-size", "2",
        "--gpus", "8", "--strategy", "fsdp",
    ],
}  # fmt: skip


def time_plan(args: list[str], repeats: int) -> dict:
    """Wall seconds of `repeats` fresh `tunebench plan ARGS` processes, start-up included."""
    command = [sys.executable, "-m", "tunebench.cli", "plan", *args]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return {
        "command": " ".join(["tunebench", "plan", *args]),
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str((REPO_ROOT or Path()) / "reports" / "benchmarks" / "plan_speed.json"))
    parser.add_argument("--plan", nargs=argparse.REMAINDER, help="NAME ARGS...: time this plan instead")
    args = parser.parse_args(argv)
    plans = {args.plan[0]: args.plan[1:]} if args.plan else PLANS
    report = {
        "plans": {name: time_plan(plan_args, args.repeats) for name, plan_args in plans.items()},
        "environment": environment(1),
    }
    for name, row in report["plans"].items():
        print(
            f"{name}: median {row['median_seconds']:.1f} s (min {row['min_seconds']:.1f}, max {row['max_seconds']:.1f})"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
