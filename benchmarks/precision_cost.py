"""What each precision rule costs: the same small runs of SmolLM2-135M on rotten_tomatoes_gen under each rule.

    python -m benchmarks.precision_cost --methods full lora --rules bf16-mixed bf16-true fp32

Per method and rule: test exact match, answer loss and perplexity, the tracked peak memory (the result's
peak_memory_bytes), the seconds per optimizer step, and for full fine-tuning the fraction of weights the whole run
left bit-identical to the checkpoint (pure bf16 AdamW drops updates below bf16's resolution). Also the planner's
device peak for an 8B full fine-tune on an H100 under both bf16 rules (meta device, no weights). Writes
reports/benchmarks/precision_cost.json and precision_cost.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunebench import api
from tunebench.files import REPO_ROOT
from tunebench.measure import environment
from tunebench.models.hub import resolve_model
from tunebench.models.params import SAVED
from tunebench.results import write_json_atomic

MODEL, TASK = "smollm2-135m", "rotten_tomatoes_gen"
OUT = REPO_ROOT / "reports" / "benchmarks"


def run_one(method: str, rule: str, train_samples: int, eval_samples: int, out: Path, max_steps=None) -> dict:
    overrides = {
        "model": MODEL,
        "seed": 0,
        "data": {"max_train_samples": train_samples, "max_eval_samples": eval_samples},
        "train": {"precision": rule, "trackers": [], "save": "best" if method == "full" else "none"}
        | ({"max_steps": max_steps} if max_steps else {}),
        "generation": {"forgetting_texts": 0},
    }
    result = api.train(method, TASK, overrides=overrides, out=out)
    if result["status"] != "ok":
        raise RuntimeError(f"{method} {rule}: {result['status']}: {result['error']}")
    test = result["test"]
    row = {
        "method": method,
        "rule": rule,
        "precision": result["precision"],
        "exact_match": result["test_exact_match"],
        "answer_loss": test.get("answer_loss"),
        "answer_perplexity": math.exp(test["answer_loss"]) if test.get("answer_loss") is not None else None,
        "peak_memory_bytes": result["peak_memory_bytes"],
        "peak_memory_source": result["peak_memory_source"],
        "optimizer_steps": result["optimizer_steps"],
        "train_seconds": result["train_seconds"],
        "seconds_per_step": result["train_seconds"] / result["optimizer_steps"],
        "lr": result["config"]["train"]["lr"],
    }
    if method == "full":
        row["unchanged_fraction"] = _unchanged(out / "best" / SAVED)
    return row


def _unchanged(saved: Path) -> float:
    """The fraction of the trained weights still equal to the checkpoint's (compared in fp32)."""
    after = load_file(str(saved))
    before = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL)).state_dict()
    same = sum((after[n].float() == before[n].float()).sum().item() for n in after)
    return same / sum(t.numel() for t in after.values())


def planner_8b() -> dict:
    """The plan of an 8B full fine-tune (and LoRA) on an H100 80GB under both bf16 rules: device bytes per method."""
    plan = api.plan(
        model="llama-3.1-8b",
        task="banking77_gen",
        gpu="h100-80g",
        methods="full,lora",
        precision="bf16-mixed,bf16-true",
    )
    return {
        p["precision"]: {m["method"]: {"device_bytes": m["device_bytes"], "fits": m["fits"]} for m in p["methods"]}
        for p in [plan, *plan["other_precisions"]]
    }


def markdown(report: dict) -> str:
    lines = [
        "# What each precision rule costs",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        f"{MODEL} on {TASK}, {report['train_samples']} training / {report['eval_samples']} validation and test "
        "examples, the methods' default learning rates and epochs, seed 0.",
        "",
        "| method | rule | exact match | answer loss | perplexity | peak memory (MiB) | s/step | weights unchanged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        unchanged = f"{r['unchanged_fraction']:.1%}" if "unchanged_fraction" in r else "-"
        lines.append(
            f"| {r['method']} | {r['rule']} | {r['exact_match']:.3f} | {r['answer_loss']:.3f} | "
            f"{r['answer_perplexity']:.2f} | {r['peak_memory_bytes'] / 2**20:.0f} | {r['seconds_per_step']:.2f} | "
            f"{unchanged} |"
        )
    lines += ["", "Planner, llama-3.1-8b on banking77_gen, H100 80GB (device GiB per method):", ""]
    for rule, methods in report["planner_8b"].items():
        cells = ", ".join(f"{m} {v['device_bytes'] / 2**30:.1f} ({'fits' if v['fits'] else 'does not fit'})"
                          for m, v in methods.items())  # fmt: skip
        lines.append(f"- {rule}: {cells}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["full", "lora"])
    parser.add_argument("--rules", nargs="+", default=["bf16-mixed", "bf16-true"])
    parser.add_argument("--train-samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--max-steps", type=int, help="stop each run after this many optimizer steps")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for rule in args.rules:
                out = Path(tmp) / f"{method}-{rule}"
                runs.append(run_one(method, rule, args.train_samples, args.eval_samples, out, args.max_steps))
                print(runs[-1], flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "environment": environment(1),
        "command": "python -m benchmarks.precision_cost "
        + " ".join(
            [
                f"--methods {' '.join(args.methods)}",
                f"--rules {' '.join(args.rules)}",
                f"--train-samples {args.train_samples}",
                f"--eval-samples {args.eval_samples}",
            ]
            + ([f"--max-steps {args.max_steps}"] if args.max_steps else [])
        ),  # fmt: skip
        "train_samples": args.train_samples,
        "eval_samples": args.eval_samples,
        "runs": runs,
        "planner_8b": planner_8b(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / "precision_cost.json", report)
    (OUT / "precision_cost.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
