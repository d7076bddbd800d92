"""The GPU evidence script and what travels with it, proved on the CPU (offline: no wheel is downloaded here).

The full `gpu_check.sh --cpu` run (every step, every method) takes a few minutes on two cores; the test runs the
planner, throughput and SFT steps for lora (and one variant), and the FSDP and multi-GPU steps, which record that
they need CUDA. `--cpu` means the CPU on any machine: on a GPU machine too these tests check the CPU run.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tunebench.benchmarks import gpu_check, vs_trainer
from tunebench.config import build_config
from tunebench.data.tasks import get_task, load_task


def test_bundle_calls_stay_under_the_carry_limit(tmp_path):
    plan = gpu_check.build_bundle(tmp_path / "bundle", wheels=False)
    manifest = json.loads(gpu_check.WHEEL_MANIFEST.read_text())
    # the recorded wheels are the ones the image lacks, by the installed packages' metadata
    assert {w["name"] for w in manifest["wheels"]} == set(gpu_check.missing_distributions())
    wheel_bytes = {f"wheels/{w['file']}": w["bytes"] for w in manifest["wheels"]}
    carried = set()
    for call in plan["calls"]:
        folder = tmp_path / "bundle" / f"call-{call['call']}"
        on_disk = gpu_check.folder_bytes(folder) if folder.exists() else 0  # du: model and data, no wheels here
        # the working tree travels with every call: 64 MiB in all
        assert on_disk + sum(wheel_bytes.get(item, 0) for item in call["items"]) + gpu_check.tree_bytes() <= 64 * 2**20
        carried |= set(call["items"])
    assert carried == {"minilm-bf16", "data", *wheel_bytes}
    assert "minilm-bf16" in plan["calls"][-1]["items"]  # the last call runs the check

    # MiniLM travels in bf16: every weight, two bytes each
    minilm = next((tmp_path / "bundle").glob("call-*/minilm-bf16"))
    with safe_open(minilm / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"BF16"}
    # the exported data reads back as the same splits
    for task in gpu_check.TASKS:
        exported = next((tmp_path / "bundle").glob(f"call-*/data/{task}/{task}.yaml"))
        data_cfg = build_config("full", task)["data"]
        original, copy = load_task(get_task(task), data_cfg), load_task(get_task(str(exported)), data_cfg)
        assert copy.label_names == original.label_names
        for split in ("train", "validation", "test"):
            assert copy.splits[split]["label"] == original.splits[split]["label"]


def test_pack_calls_uses_fewest_calls_under_limit():
    assert gpu_check.pack_calls([("a", 60), ("b", 30), ("c", 30), ("d", 10)], limit=70) == [["a", "d"], ["b", "c"]]
    with pytest.raises(ValueError, match="over the"):
        gpu_check.pack_calls([("huge", 71)], limit=70)


@pytest.mark.slow
def test_cpu_check_writes_every_field_the_report_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    steps = ["planner", "throughput", "fsdp", "sft", "multigpu"]
    summary = gpu_check.run_check(tmp_path, True, steps, tmp_path / "none", methods=["lora"], variants=["dora"])
    status = {s["step"]: s for s in summary["steps"]}
    for step in ("planner", "throughput", "sft"):
        assert status[step]["status"] == "ok", status[step].get("traceback")
    for step in ("fsdp", "multigpu"):
        assert status[step]["status"] == "skipped" and "needs CUDA" in status[step]["error"]
    assert json.loads((tmp_path / "summary.json").read_text())["mode"] == "cpu"

    planner = json.loads((tmp_path / "planner" / "planner.json").read_text())
    assert [(r["model"], r["method"]) for r in planner["rows"]] == [("minilm", "lora"), ("llama-tiny", "lora")]
    for row in planner["rows"]:
        result = json.loads((tmp_path / "planner" / f"{row['model']}-lora" / "result.json").read_text())
        assert result["status"] == "ok" and row["measured_bytes"] == result["peak_memory_bytes"]
        assert row["predicted_bytes"] > 0 and row["measured_by"].endswith("tensor_tracker")

    throughput = json.loads((tmp_path / "throughput.json").read_text())
    (row,) = throughput["rows"]
    assert row["method"] == "lora" and row["tunebench_mfu"] is None  # no peak FLOP/s figure for a CPU
    (tb,), (hf,) = row["tunebench"], row["trainer"]
    # every text fills the sequence: both sides processed batch x steps x max_length tokens
    assert hf["tokens"] == 4 * 2 * 32
    assert tb["tokens_per_second"] * tb["seconds"] == pytest.approx(hf["tokens"])
    assert row["ratio"]["mean"] == pytest.approx(tb["samples_per_second"] / hf["samples_per_second"])
    assert row["flops_per_token"] > 0

    # SFT: each method and variant on the Llama shape stored in bf16, every example as long as the sequence, the
    # prediction at that length beside the tracker's training peak
    sft = json.loads((tmp_path / "sft.json").read_text())
    assert [(r["model"], r["method"]) for r in sft["rows"]] == [
        ("llama-tiny-bf16", "lora"),
        ("llama-tiny-bf16", "dora"),
    ]
    for row in sft["rows"]:
        result = json.loads((tmp_path / "sft" / f"{row['model']}-{row['method']}" / "result.json").read_text())
        assert row["status"] == "ok" and row["measured_bytes"] == result["peak_memory_bytes"] > 0
        assert row["measured_by"] == "tensor_tracker" and row["predicted_bytes"] > 0
        assert result["config"]["data"]["task_type"] == "generate" and result["tokens_per_second"] > 0
        assert result["task"]["sizes"]["train"] >= 0.9 * (sft["shape"]["batch_size"] * sft["shape"]["steps"])
        # a bf16 checkpoint: the fp32 rule trains it upcast
        assert row["checkpoint_dtype"] == "bfloat16" and result["precision"]["trainable_dtype"] == "float32"
    (trainer,) = sft["vs_trainer"]
    (tb,), (hf,) = trainer["tunebench"], trainer["trainer"]
    assert trainer["method"] == "lora" and hf["tokens"] == tb["tokens"] > 0  # the same SFT tokens on both sides


@pytest.mark.slow
def test_vs_trainer_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "vs_trainer.json"
    vs_trainer.main(
        ["--methods", "full", "--pairs", "1", "--train-samples", "24", "--max-length", "32", "--eval-samples", "8"]
        + ["--out", str(out)]
    )
    report = json.loads(out.read_text())
    (row,) = report["methods"]
    assert row["method"] == "full" and row["pairs"] == 1 and row["config"]["adamw"] == "fused"
    assert row["tunebench"][0]["optimizer"] == "fused"
    assert row["trainer"][0]["examples"] == 24
    assert set(row["ratio"]) == {"mean", "stdev", "min", "max"}
    assert report["command"].startswith("python -m tunebench.benchmarks.vs_trainer")
