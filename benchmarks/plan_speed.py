"""How long does `tunebench plan` take, Python start-up included? Each plan is a fresh subprocess, timed from start.

    python -m tunebench.benchmarks.plan_speed [--repeats 3] [--only NAME] [--out reports/benchmarks/plan_speed.json]

Three plans, the targets: an 8B SFT plan (the causal-LM step of a generate task) for every method on one GPU
(`--model llama-3.1-8b --task banking77_gen --seq-len 2048`), the same plan of every method and every variant the
registry has (`--methods full,lora,lora-r8,...`: target 30 s on 2 cores), and the same SFT plan of a 70B model over 8
GPUs with FSDP (`--model llama-3.1-70b ... --gpus 8 --strategy fsdp`). Each is run --repeats times; the JSON holds
every wall time, the median, min and max, the plan's own seconds_to_plan (without start-up), the command, the load
average before and after (a busy machine's timings mean little: run it on a quiet one) and the environment.
`--plan NAME ARGS...` replaces the two with your own (the tests use a tiny one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tunebench.files import REPO_ROOT
from tunebench.measure import environment
from tunebench.methods import plannable
from tunebench.results import write_json_atomic

SFT_8B = [
    "--model", "llama-3.1-8b", "--task", "banking77_gen", "--gpu", "h100-80g", "--seq-len", "2048", "--batch-size", "4",
]  # fmt: skip
PLANS = {
    "8b-sft-all-methods": SFT_8B,
    "8b-sft-all-variants": [*SFT_8B, "--methods", ",".join(plannable(with_variants=True))],
    "70b-sft-fsdp-8-gpus": [
        "--model", "llama-3.1-70b", "--task", "banking77_gen", "--gpu", "h100-80g", "--seq-len", "2048",
        "--batch-size", "2", "--gpus", "8", "--strategy", "fsdp",
    ],
}  # fmt: skip


def time_plan(args: list[str], repeats: int) -> dict:
    """Wall seconds of `repeats` fresh `tunebench plan ARGS` processes, start-up included, and of their planning
    alone (the plan's seconds_to_plan: after the arguments are read and the config built)."""
    command = [sys.executable, "-m", "tunebench.cli", "plan", *args, "--json"]
    seconds, planning = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        planning.append(json.loads(done.stdout)["seconds_to_plan"])
    return {
        "command": " ".join(["tunebench", "plan", *args]),
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
        "seconds_to_plan": planning,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str((REPO_ROOT or Path()) / "reports" / "benchmarks" / "plan_speed.json"))
    parser.add_argument("--only", choices=PLANS, help="time this one of the plans")
    parser.add_argument("--plan", nargs=argparse.REMAINDER, help="NAME ARGS...: time this plan instead")
    args = parser.parse_args(argv)
    plans = {args.plan[0]: args.plan[1:]} if args.plan else {args.only: PLANS[args.only]} if args.only else PLANS
    load_before = os.getloadavg()
    timed = {name: time_plan(plan_args, args.repeats) for name, plan_args in plans.items()}
    report = {
        "plans": timed,
        "load_average": {"before": load_before, "after": os.getloadavg(), "cpus": len(os.sched_getaffinity(0))},
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
