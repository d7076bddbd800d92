"""The training loop against facts derived independently: token counts from the tokenizer, learning rates by hand,
updates compared between two ways to reach the same batch, host syncs seen by the torch profiler, and the batch
order of two real processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.profiler import ProfilerActivity, profile

from tunebench.data.batching import EpochPermutation
from tunebench.data.tasks import get_task, load_capped, load_task
from tunebench.methods import get_method
from tunebench.models.hub import load_tokenizer, resolve_model
from tunebench.training.checkpoint import restore
from tunebench.training.evaluation import evaluate_run
from tunebench.training.run import train

TESTS = Path(__file__).parent


def train_tokens(cfg: dict) -> int:
    """Non-padding tokens of the training split, straight from the tokenizer."""
    texts = load_task(get_task(cfg["task"]), cfg["data"]).splits["train"]["text"][: cfg["data"]["max_train_samples"]]
    tokenizer = load_tokenizer(resolve_model(cfg["model"]), "bert")
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=cfg["data"]["max_length"])["input_ids"])


def linear_lr(lr: float, warmup: int, total: int, step: int) -> float:
    """The rate optimizer step `step` (1-based) uses: linear warmup from 0, then linear decay to 0 at `total`."""
    s = step - 1
    return lr * (s / warmup if s < warmup else (total - s) / (total - warmup))


def test_full_counts_tokens_steps_rates_and_validation_points(tmp_path: Path, tiny_config) -> None:
    # 16 examples in micro-batches of 4, two per optimizer step: 2 steps an epoch, 6 in 3 epochs
    cfg = tiny_config(
        "full",
        overrides={
            "data": {"max_train_samples": 16, "max_eval_samples": 16},
            "train": {
                "batch_size": 4,
                "grad_accum": 2,
                "epochs": 3,
                "eval_every": 3,
                "log_every": 1,
                "warmup_ratio": 0.34,
                "save": "none",
            },
        },
    )
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert result["tokens_processed"] == 3 * train_tokens(cfg)
    assert (result["examples_seen"], result["micro_batches"], result["optimizer_steps"]) == (48, 12, 6)
    assert result["tokens_per_second"] == pytest.approx(result["tokens_processed"] / result["train_seconds"])
    assert result["samples_per_second"] == pytest.approx(48 / result["train_seconds"])
    assert result["epochs_per_second"] == pytest.approx(3 / result["train_seconds"])
    assert result["train_seconds"] + result["eval_seconds"] < result["run_seconds"]
    # validation every 3 steps and at each epoch's end (steps 2, 4, 6)
    assert [p["step"] for p in result["curves"]["validation"]] == [2, 3, 4, 6]
    # warmup int(0.34 * 6) = 2 steps
    rates = [p["lr"] for p in result["curves"]["train_loss"]]
    assert rates == pytest.approx([linear_lr(cfg["train"]["lr"], 2, 6, k) for k in range(1, 7)])
    assert all(math.isfinite(p["loss"]) for p in result["curves"]["train_loss"])


def test_head_counts_the_backbone_pass_once(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config("head", overrides={"train": {"epochs": 3, "save": "none"}})
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert result["tokens_processed"] == train_tokens(cfg)  # cached features: later epochs add nothing
    assert result["examples_seen"] == 3 * 32
    assert 0 < result["setup_seconds"] < result["train_seconds"]
    assert result["peak_memory_source"] == "tensor_tracker" and result["peak_memory_includes"]
    assert result["peak_memory_bytes"] == result["memory"]["tensor"]["peak_bytes"]


def test_test_correct_is_one_outcome_per_test_example(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config("head", overrides={"train": {"epochs": 1, "save": "none"}})
    run_dir = tmp_path / "run"
    result = train(cfg, run_dir)
    assert result["status"] == "ok", result["error"]
    labels = load_capped(cfg["task"], cfg["data"]).splits["test"]["label"]
    predictions = json.loads((run_dir / "test_predictions.json").read_text())
    assert result["test_size"] == len(labels) == len(result["test_correct"])
    assert result["test_correct"] == [int(p == y) for p, y in zip(predictions, labels, strict=True)]
    assert np.mean(result["test_correct"]) == pytest.approx(result["test_accuracy"], abs=1e-12)


def test_grad_accumulation_updates_as_one_big_batch(tmp_path: Path, tiny_config) -> None:
    """48 examples: 2 x 16 then a partial 1 x 16 must update as 32 then 16 (Adam's second step sees the scale)."""
    weights = {}
    for batch_size, accum in ((16, 2), (32, 1)):
        cfg = tiny_config(
            "head",
            overrides={
                "data": {"max_train_samples": 48, "group_by_length": False},
                "train": {"batch_size": batch_size, "grad_accum": accum, "max_grad_norm": 0, "save": "best_and_last"},
                "head_dropout": 0.0,
            },
        )
        run_dir = tmp_path / f"b{batch_size}x{accum}"
        result = train(cfg, run_dir)
        assert result["status"] == "ok", result["error"]
        assert (result["optimizer_steps"], result["micro_batches"]) == (2, 3 if accum == 2 else 2)
        weights[accum] = load_file(str(run_dir / "last" / "classifier.safetensors"))
    for name, tensor in weights[1].items():
        torch.testing.assert_close(weights[2][name], tensor, rtol=1e-5, atol=1e-6)


def test_test_predictions_come_from_the_best_step(tmp_path: Path, tiny_config) -> None:
    # a large rate on a linear probe and 16 small steps: validation accuracy peaks before the end (step 9 here)
    cfg = tiny_config(
        "head",
        overrides={"train": {"lr": 0.1, "epochs": 2, "batch_size": 4, "eval_every": 1, "save": "best_and_last"}},
    )
    run_dir = tmp_path / "run"
    result = train(cfg, run_dir)
    assert result["status"] == "ok", result["error"]
    validation = result["curves"]["validation"]
    assert result["best_step"] < validation[-1]["step"]
    assert validation[-1]["accuracy"] < result["best_validation_accuracy"]
    best, last = (load_file(str(run_dir / name / "classifier.safetensors")) for name in ("best", "last"))
    assert not torch.equal(best["classifier.weight"], last["classifier.weight"])
    # reloading best/ gives the best validation accuracy, and the test predictions the run wrote
    assert evaluate_run(run_dir, split="validation")["accuracy"] == result["best_validation_accuracy"]
    assert evaluate_run(run_dir)["agreement_with_training"] == 1.0


def test_restoring_the_best_step_refuses_a_state_that_does_not_fit() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("1.")}
    restore(model, state)
    with pytest.raises(RuntimeError, match="missing trainable"):
        restore(model, {"1.weight": state["1.weight"]})
    with pytest.raises(RuntimeError, match="unexpected"):
        restore(model, {**state, "2.weight": state["1.weight"]})


SYNCS = ("aten::item", "aten::_local_scalar_dense")  # how the profiler names a read of a tensor's value


def test_steps_that_do_not_log_never_wait_for_the_device(tmp_path: Path, tiny_config) -> None:
    """On CUDA every .item() waits for the GPU; on the CPU the profiler still sees each one. Two reads are not the
    loop's: the fused AdamW kernel reads its (host-side) step counters, so reads inside optimizer steps are left
    out, and transformers' SDPA mask check reads `padding_mask.all()` in each forward, measured here on its own."""
    cfg = tiny_config(
        "full",
        overrides={
            "data": {"max_train_samples": 16, "max_eval_samples": 8, "max_length": 16},
            "train": {"batch_size": 2, "log_every": 4, "save": "none"},
            "measure": {"track_memory": False},
        },
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok" and result["optimizer_steps"] == 8
    events = prof.events()
    optimizer_steps = sorted(
        (e.time_range for e in events if e.name.startswith("Optimizer.step#")), key=lambda r: r.start
    )
    syncs = [e.time_range.start for e in events if e.name in SYNCS]
    syncs = [t for t in syncs if not any(r.start <= t <= r.end for r in optimizer_steps)]
    assert len(optimizer_steps) == 8
    # between the end of optimizer step k and the end of step k + 1: step k's logging, then step k + 1's work
    ends = [r.end for r in optimizer_steps]
    after = {k: sum(ends[k - 1] < t <= ends[k] for t in syncs) for k in range(1, 8)}

    tokenizer = load_tokenizer(resolve_model("minilm"), "bert")
    model = get_method("full").build(resolve_model("minilm"), 2, cfg, "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as forward:
        model(**tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt"))
    per_forward = sum(e.name in SYNCS for e in forward.events())

    assert after[1] > per_forward and after[4] > per_forward, after  # logged steps read the loss back
    assert all(after[k] == per_forward for k in (2, 3, 5, 6, 7)), (after, per_forward)


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(
        "full",
        overrides={
            "data": {"max_train_samples": 16, "max_eval_samples": 8},
            "train": {"precision": "bf16-mixed", "max_steps": 2, "log_every": 1, "lr": 1e-4},
        },
    )
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert all(math.isfinite(p["loss"]) for p in result["curves"]["train_loss"])
    trained = load_file(str(tmp_path / "run" / "last" / "classifier.safetensors"))
    pretrained = load_file(str(Path(resolve_model("minilm")) / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    assert trained["backbone." + name].dtype == torch.float32
    assert not torch.equal(trained["backbone." + name], pretrained[name])


def test_paged_8bit_adamw_trains_on_the_cpu(tmp_path: Path, tiny_config) -> None:
    """bitsandbytes' paged 8-bit AdamW runs on CPU tensors (plain buffers there); the result names it."""
    cfg = tiny_config(
        "lora",
        overrides={"data": {"max_train_samples": 16, "max_eval_samples": 8}, "train": {"max_steps": 2, "log_every": 1}},
    )
    cfg["train"]["optimizer"] = "paged_adamw_8bit"
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert result["optimizer"] == {"name": "paged_adamw_8bit", "implementation": "bitsandbytes.optim.PagedAdamW8bit"}
    assert all(math.isfinite(p["loss"]) for p in result["curves"]["train_loss"])
    assert result["memory"]["tensor"]["max_by_category"]["optimizer_state"] > 0


def test_every_seed_and_epoch_pair_gives_its_own_order() -> None:
    orders = set()
    for seed in range(6):
        sampler = EpochPermutation(30, seed)
        for epoch in range(6):
            sampler.set_epoch(epoch)
            order = tuple(sampler)
            assert sorted(order) == list(range(30))
            orders.add(order)
    assert len(orders) == 36  # seed + epoch alone would repeat: (1, 0) is (0, 1)


def test_two_processes_reshuffle_and_keep_one_schedule(tmp_path: Path) -> None:
    """One torchrun launch (two gloo processes) of tests/two_process_train.py: 32 examples, 4 per process and
    step, so 4 steps an epoch; max_steps 10 stops in the third epoch."""
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = subprocess.run(
        [*launch, str(TESTS / "two_process_train.py"), str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["environment"]["world_size"] == 2
    assert (result["optimizer_steps"], result["examples_seen"]) == (10, 80)
    assert "10/10" in out.stderr  # the progress bar's total is the steps the run takes
    assert "features train" in out.stderr  # the feature cache shows its own progress bar

    # warmup int(0.25 * 10) = 2, decay to zero at step 10: not twice as fast, as it would be per process
    rates = [p["lr"] for p in result["curves"]["train_loss"]]
    assert rates == pytest.approx([linear_lr(result["config"]["train"]["lr"], 2, 10, k) for k in range(1, 11)])

    ranks = [json.loads((tmp_path / f"batches-{rank}.json").read_text()) for rank in (0, 1)]
    epochs = [[batch for rank in ranks for batch in rank[4 * e : 4 * e + 4]] for e in range(2)]
    for epoch in epochs:
        assert sorted(i for batch in epoch for i in batch) == list(range(32))  # each example once per epoch
    assert epochs[0] != epochs[1]
    third = [rank[8:10] for rank in ranks]  # the two steps of the third epoch (a third batch may be prefetched)
    assert third != [rank[0:2] for rank in ranks] and third != [rank[4:6] for rank in ranks]
    assert np.isfinite([p["loss"] for p in result["curves"]["train_loss"]]).all()
