"""What does memory tracking cost? Samples/s with and without it, interleaved in one process.

    python -m tunebench.benchmarks.tracking_overhead [--method full] [--steps 20 200] [--repeats 5]

Runs the real loop (minilm, rotten_tomatoes) alternately with measure.track_memory on and off, for
each run length in --steps: a short run, where the traced steps (the first two and every batch larger
than any traced before) weigh most, and a long one. Each repeat is one tracked and one untracked run;
the overhead is computed per repeat, so its spread over repeats says whether it stands out of the noise.
Writes reports/benchmarks/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tunebench.benchmarks.vs_trainer import spread
from tunebench.config import build_config
from tunebench.files import REPO_ROOT
from tunebench.measure import environment
from tunebench.results import write_json_atomic
from tunebench.training.run import train


def measure(method: str, steps: int, repeats: int) -> dict:
    """`repeats` pairs of runs of `steps` optimizer steps, tracked and untracked, in ABBA order."""
    throughput: dict[bool, list[float]] = {True: [], False: []}
    tracked_peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        # on, off, off, on, ...: each setting sees early and late positions equally often
        order = [bool((i + i // 2) % 2 == 0) for i in range(2 * repeats)]
        for i, track in enumerate(order):
            cfg = build_config(
                method,
                "rotten_tomatoes",
                overrides={
                    "train": {"max_steps": steps, "trackers": [], "save": "none"},
                    "data": {"max_eval_samples": 64},
                    "measure": {"track_memory": track},
                },
            )
            result = train(cfg, Path(tmp) / f"run{i}")
            throughput[track].append(result["samples_per_second"])
            if track:
                tracked_peaks.append(result["memory"]["tensor"]["peak_bytes"])
    # per repeat: untracked over tracked throughput, minus one (positive = tracking costs time)
    per_repeat = [100 * (off / on - 1) for on, off in zip(throughput[True], throughput[False], strict=True)]
    return {
        "method": method,
        "steps_per_run": steps,
        "repeats": repeats,
        "samples_per_second_tracked": throughput[True],
        "samples_per_second_untracked": throughput[False],
        "overhead_percent_per_repeat": per_repeat,
        "overhead_percent": spread(per_repeat),
        "tensor_peak_bytes": tracked_peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 200], help="run lengths: short and long")
    parser.add_argument("--repeats", type=int, default=5)
    reports = (REPO_ROOT or Path()) / "reports"  # the checkout's reports/, else the working directory's
    parser.add_argument("--out", default=str(reports / "benchmarks" / "tracking_overhead.json"))
    args = parser.parse_args()
    runs = [measure(args.method, steps, args.repeats) for steps in args.steps]
    report = {
        "command": (
            f"python -m tunebench.benchmarks.tracking_overhead --method {args.method} "
            f"--steps {' '.join(map(str, args.steps))} --repeats {args.repeats}"
        ),
        "runs": runs,
        "environment": environment(),
    }
    write_json_atomic(args.out, report)
    for run in runs:
        overhead = run["overhead_percent"]
        print(
            f"tracking overhead ({args.method}, {run['steps_per_run']} steps x {args.repeats} repeats): "
            f"{overhead['mean']:+.2f}% (min {overhead['min']:+.2f}%, max {overhead['max']:+.2f}%; "
            f"tracked {statistics.fmean(run['samples_per_second_tracked']):.1f} samples/s, "
            f"untracked {statistics.fmean(run['samples_per_second_untracked']):.1f})"
        )


if __name__ == "__main__":
    main()
