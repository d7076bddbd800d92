"""Pin what a refactor must not move: run at one commit, then at another, and compare.

    python -m tunebench.benchmarks.golden --out reports/benchmarks/golden-BEFORE.json
    python -m tunebench.benchmarks.golden --out /tmp/after.json --against reports/benchmarks/golden-BEFORE.json

It goes through the public API and CLI only (`tunebench.train`, `tunebench plan --json`), which a refactor keeps,
so the same script runs on the tree before and after. What it records, with timings left out:

- one short classification run per method on MiniLM (rotten_tomatoes), plus full fine-tuning with gradient
  accumulation over an uneven last group and two epochs: test and validation metrics, best step, loss curve,
  peak tensor bytes and their breakdown, trainable and total parameters, and every saved file's size and sha256;
- one short generate run per method (the untuned `none` included) on SmolLM2 (rotten_tomatoes_gen): the same, plus
  exact match, teacher-forced metrics, sample generations and forgetting;
- `tunebench plan --json` of an 8B SFT plan of every method and of a 70B SFT plan over 8 GPUs with fsdp;
- `tunebench plan --validate --json` rows.

--against prints each field that differs and exits 1 when any does; --parts records (and compares) only some of
runs, plans and validate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tunebench.benchmarks.plan_speed import PLANS
from tunebench.results import write_json_atomic

CLASSIFY = dict(task="rotten_tomatoes", max_train_samples=72, max_eval_samples=32, max_length=32, batch_size=16)
GENERATE = dict(
    task="rotten_tomatoes_gen",
    model="smollm2-135m",
    max_train_samples=16,
    max_eval_samples=8,
    batch_size=8,
    overrides={"generation.forgetting_texts": 4},
)
RUNS = {
    **{f"classify-{m}": dict(method=m, **CLASSIFY) for m in ("full", "lora", "qlora", "head")},
    "classify-full-accum2-2epochs": dict(
        method="full", **CLASSIFY, epochs=2, overrides={"train.grad_accum": 2, "train.log_every": 1}
    ),
    **{f"generate-{m}": dict(method=m, **GENERATE) for m in ("none", "full", "lora", "qlora", "head")},
}
PARTS = ("runs", "plans", "validate")
# What a run records that is a measurement of time, or of where and when it ran.
UNSTABLE = ("seconds", "per_second", "started_at", "finished_at", "environment", "run_dir", "peak_rss", "memory.cuda")
KEPT = (
    "status", "error", "test", "validation", "best_validation_accuracy", "best_step", "curves", "optimizer_steps",
    "micro_batches", "examples_seen", "tokens_processed", "trainable_params", "total_params", "peak_memory_bytes",
    "peak_memory_source", "memory", "checkpoint_bytes", "too_long_dropped", "task", "sample_generations",
    "forgetting", "lm_head_untied", "optimizer",
)  # fmt: skip


def stable(value, unstable: tuple[str, ...] = UNSTABLE, path: str = ""):
    """value without the fields whose dotted path contains one of the unstable markers."""
    if isinstance(value, dict):
        return {
            k: stable(v, unstable, f"{path}.{k}")
            for k, v in value.items()
            if not any(marker in f"{path}.{k}" for marker in unstable)
        }
    if isinstance(value, list):
        return [stable(v, unstable, path) for v in value]
    return value


def saved_files(run_dir: Path) -> dict:
    return {
        str(f.relative_to(run_dir)): {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        for f in sorted(run_dir.rglob("*"))
        if f.is_file() and f.parts[len(run_dir.parts)] in ("best", "last")
    }


def train_runs(work: Path) -> dict:
    import tunebench

    out = {}
    for name, kwargs in RUNS.items():
        run_dir = work / name
        result = tunebench.train(**kwargs, out=run_dir)
        kept = {k: result.get(k) for k in KEPT}
        kept["memory"] = {k: v for k, v in (kept["memory"] or {}).items() if k != "per_rank"}
        out[name] = {"result": stable(kept), "saved": saved_files(run_dir)}
        print(f"{name}: {result['status']} test_accuracy={result.get('test_accuracy')}", file=sys.stderr)
    return out


def cli_json(*args: str) -> dict | list:
    done = subprocess.run(
        [sys.executable, "-m", "tunebench.cli", "plan", *args, "--json"], check=True, capture_output=True, text=True
    )
    return stable(json.loads(done.stdout), ("seconds_to_plan",))


def collect(parts: list[str]) -> dict:
    golden = {}
    if "runs" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            golden["runs"] = train_runs(Path(tmp))
    if "plans" in parts:
        golden["plans"] = {name: cli_json(*args) for name, args in PLANS.items()}
    if "validate" in parts:
        golden["validate"] = cli_json("--validate")
    return golden


def differences(before, after, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            d for k in sorted(set(before) | set(after)) for d in differences(before.get(k), after.get(k), f"{path}.{k}")
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in differences(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path.lstrip('.')}: {before!r} -> {after!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where the golden JSON goes")
    parser.add_argument("--against", help="an earlier golden JSON: print what differs, exit 1 if anything does")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to record (default: all)")
    args = parser.parse_args(argv)
    golden = collect(args.parts)
    write_json_atomic(Path(args.out), golden)
    if not args.against:
        return 0
    before = {k: v for k, v in json.loads(Path(args.against).read_text()).items() if k in args.parts}
    changed = differences(before, json.loads(Path(args.out).read_text()))
    print("\n".join(changed) or "identical", file=sys.stderr)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
