"""Per-GPU memory under FSDP2 and DDP (tunebench.planner.sharding), `plan --gpus/--strategy` and its bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.cli import main
from tunebench.methods import get_method
from tunebench.planner.inputs import resolve_spec
from tunebench.planner.sharding import make_sharding
from tunebench.planner.tracing import trace_step
from tunebench.planner.validate import tiny_llama_folder

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


# generate (a causal LM: Accelerate's embedding and tail groups) in both rules, classify (the root holds the
# embeddings and the head) in fp32; DDP in every fp32 case
CASES = [f"{m}/{p}/generate" for p in ("fp32", "bf16-mixed") for m in ("full", "lora")]
CASES += ["full/fp32/classify", "lora/fp32/classify"]


def test_prediction_matches_accelerates_fsdp2_and_ddp_on_two_processes(tmp_path: Path) -> None:
    """The sharding arithmetic against the loop's own FSDP2 path: two gloo CPU processes prepare each case's model
    and AdamW through Accelerate (Accelerator.prepare -> fsdp2_prepare_model, the plugin built from
    configs/accelerate/fsdp2.yaml by Accelerate's launcher code) and train it in the loop's order; the CPU allocator
    (torch.profiler's alloc/free events) gives each rank's peak while the model is sharded and in a training step.
    The prediction applies tunebench.planner.sharding to the single-device fake trace at the same per-rank batch, in
    the rule FSDP2 computes in (bf16-mixed: bf16 parameters, no autocast). Within 5%: the sharding point on every
    rank, and the step's peak on the highest rank, with no rank above the plan by more than 5% (the lowest of three
    steps: gloo runs the collectives on its own thread, which frees their buffers when it gets to them, so a rank's
    peak can fall below the plan by a reduce-scatter's output, seen in full/bf16-mixed/classify: 109.2 and 124.8 MB
    in two runs against 124.8 planned). Each method then saves through the loop's save under FSDP2 (the state dict
    gathered from the shards) and reloads equal; the loop's best-step snapshot and restore bring each rank's shards
    back. Then, in fp32, the same method under DDP, from wrapping (its broadcast of rank 0's weights) through two
    steps: within 0.5%.
    """
    folder = tiny_llama_folder(tmp_path / "tiny-llama")
    batch, seq_len = 4, 64
    out = tmp_path / "out"
    out.mkdir()
    script = REPO / "tests" / "fsdp_two_process.py"
    launch = [*TORCHRUN, str(script), folder, ",".join(CASES), str(batch), str(seq_len), str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(launch, check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    spec = resolve_spec(folder)
    for case in CASES:
        method, precision, task_type = case.split("/")
        build = {
            "num_labels": 2,
            "precision": precision,
            "options": dict(get_method(method).DEFAULTS["method_options"]),
            "pooling": spec.pooling,
            "task_type": task_type,
        }
        sharding = make_sharding(spec.config, method, 2, "fsdp", on_host=True, **build)
        adamw = ranks[0][case]["adamw"]
        traced = build | {"precision": sharding.trace_precision}
        single = trace_step(spec.config, method, batch_size=batch, seq_len=seq_len, adamw=adamw, **traced)
        planned = sharding.step(single)
        assert planned.labels[0] == ("setup", "fsdp load")
        load, step = planned.points[0].sum(), planned.points[1:].sum(1).max()
        assert planned.peak_bytes == int(max(load, step))
        assert ranks[0][case]["reload_matches"], case  # saved from the gathered shards, reloaded whole
        assert all(rank[case]["restore_matches"] for rank in ranks), case  # the loop's best step, per shard
        for rank in ranks:
            assert abs(rank[case]["load_peak_bytes"] - load) <= 0.05 * load, (case, load, rank[case])
            assert min(rank[case]["peak_bytes"]) <= 1.05 * step, (case, step, rank[case])
        highest = max(min(rank[case]["peak_bytes"]) for rank in ranks)
        assert abs(highest - step) <= 0.05 * step, (case, step, highest)
        if precision == "fp32":
            ddp = make_sharding(spec.config, method, 2, "ddp", **build).step(single).peak_bytes
            for rank in ranks:
                measured = rank[case]["ddp_peak_bytes"]
                assert abs(measured - ddp) <= 0.005 * measured, (case, ddp, measured)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy", "fsdp"], "strategy 'fsdp' needs a number of GPUs (gpus)"),
        (["--gpus", "0", "--strategy", "ddp"], "the number of GPUs (gpus) must be at least 1"),
        (["--gpus", "4"], "4 GPUs need a strategy: one of ddp, fsdp"),
        (["--gpus", "4", "--strategy", "zero3"], "unknown strategy 'zero3'; choose one of ddp, fsdp"),
        (["--gpus", "32", "--strategy", "fsdp"], "32 GPUs is more than the model's 16 layers"),
        (["--gpus", "2", "--strategy", "fsdp", "--methods", "head"], "head with cache_features (its default) cannot"),
        (["--gpus", "2", "--strategy", "ddp", "--validate"], "validation measures one process on this machine"),
    ],
)
def test_impossible_sharding_is_a_one_line_error(flags: list[str], message: str, capsys) -> None:
    assert main(["plan", "--model", "llama-3.2-1b", "--seq-len", "64", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_plan_per_gpu_under_ddp_and_fsdp(capsys) -> None:
    """On one model and batch: DDP holds one more copy of the gradients than one GPU (its buckets) all through the
    step (its peak can also be wrapping the model, which broadcasts the weights); FSDP over 4 GPUs holds a quarter
    of AdamW's state; the default method list leaves head out under fsdp."""
    common = ["plan", "--model", "llama-3.2-1b", "--seq-len", "64", "--batch-size", "1", "--json"]
    plans = {}
    for flags in ([], ["--gpus", "2", "--strategy", "ddp"], ["--gpus", "4", "--strategy", "fsdp"]):
        assert main([*common, "--methods", "full,lora", *flags]) == 0
        plans[tuple(flags)] = {p["method"]: p for p in json.loads(capsys.readouterr().out)["methods"]}
    one, ddp, fsdp = plans.values()
    for method in ("full", "lora"):
        peak, gradients = one[method]["tensor_peak_bytes"], one[method]["state"]["gradients"]
        assert ddp[method]["tensor_peak_bytes"] >= peak + gradients
        assert fsdp[method]["state"]["optimizer_state"] == one[method]["state"]["optimizer_state"] // 4
        assert fsdp[method]["tensor_peak_bytes"] < one[method]["tensor_peak_bytes"]
    assert main([*common, "--gpus", "2", "--strategy", "fsdp"]) == 0
    assert [p["method"] for p in json.loads(capsys.readouterr().out)["methods"]] == ["full", "lora", "qlora"]


def test_plan_speed_benchmark_times_a_fresh_process(tmp_path: Path) -> None:
    """benchmarks/plan_speed.py on a tiny plan: one fresh `tunebench plan` process, timed, written as JSON."""
    from tunebench.benchmarks import plan_speed

    out = tmp_path / "plan_speed.json"
    plan = ["tiny", "--model", "minilm", "--methods", "head", "--seq-len", "16"]
    plan_speed.main(["--repeats", "1", "--out", str(out), "--plan", *plan])
    row = json.loads(out.read_text())["plans"]["tiny"]
    assert row["command"] == "tunebench plan --model minilm --methods head --seq-len 16"
    assert len(row["seconds"]) == 1 and row["median_seconds"] > 0
