"""What does memory tracking cost? Steps/s with and without it, interleaved in one process.

    python -m tunebench.benchmarks.tracking_overhead [--method full] [--steps 40] [--repeats 2]

Runs the real loop (minilm, rotten_tomatoes) alternately with measure.track_memory on and off,
and reports the throughput ratio. The harness's policy traces the first two steps and every
batch larger than any traced before, so the cost should stay far below 3%.
Writes reports/benchmarks/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tunebench import REPO_ROOT
from tunebench.config import build_config
from tunebench.loop import train
from tunebench.measure import environment
from tunebench.results import write_json_atomic


def measure(method: str, steps: int, repeats: int) -> dict:
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
    on, off = statistics.fmean(throughput[True]), statistics.fmean(throughput[False])
    return {
        "method": method,
        "steps_per_run": steps,
        "repeats": repeats,
        "samples_per_second_tracked": throughput[True],
        "samples_per_second_untracked": throughput[False],
        "overhead_percent": 100 * (off / on - 1),
        "tensor_peak_bytes": tracked_peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    reports = (REPO_ROOT or Path()) / "reports"  # the checkout's reports/, else the working directory's
    parser.add_argument("--out", default=str(reports / "benchmarks" / "tracking_overhead.json"))
    args = parser.parse_args()
    report = measure(args.method, args.steps, args.repeats)
    report["command"] = (
        f"python -m tunebench.benchmarks.tracking_overhead --method {args.method} "
        f"--steps {args.steps} --repeats {args.repeats}"
    )
    report["environment"] = environment()
    write_json_atomic(args.out, report)
    print(
        f"tracking overhead ({args.method}, {args.steps} steps x {args.repeats} repeats): "
        f"{report['overhead_percent']:+.2f}% "
        f"(tracked {statistics.fmean(report['samples_per_second_tracked']):.1f} samples/s, "
        f"untracked {statistics.fmean(report['samples_per_second_untracked']):.1f})"
    )


if __name__ == "__main__":
    main()
