"""The precision rule (train.precision): what one AdamW step keeps under fp32 master weights and under pure bf16,
that the result records the dtypes the parameters really have, and that the planner's meta models follow the same
rule; a tiny random Llama saved in bf16 (as SmolLM2 and most decoders ship) with SmolLM2's tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunebench import api
from tunebench.cli import main
from tunebench.config import build_config
from tunebench.methods import get_method
from tunebench.models.hub import load_config, resolve_model
from tunebench.models.params import SAVED
from tunebench.models.precision import apply_rule, describe
from tunebench.planner.tracing import build_meta_model, method_cfg

PAIRS = [("Say yes.", "yes"), ("Say no.", "no")] * 8
RULE_NAMES = ("fp32", "bf16-mixed", "bf16-true")


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory) -> str:
    """A 2-layer random Llama (tied embeddings, as SmolLM2) stored in bf16."""
    folder = tmp_path_factory.mktemp("bf16-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PAIRS))
    return str(path)


def _overrides(model: str, precision: str, **train) -> dict:
    return {
        "model": model,
        "data": {"task_type": "generate", "max_length": 64},
        "train": {"batch_size": 8, "trackers": [], "precision": precision, **train},
        "generation": {"forgetting_texts": 0, "batch_size": 8},
    }


def _unchanged_after_one_step(model: str, pairs: str, precision: str, out) -> float:
    """One AdamW step of full fine-tuning at 5e-5 through the real loop; the fraction of weights it left as they
    were in the checkpoint."""
    overrides = _overrides(model, precision, lr=5e-5, max_steps=1, save="best", warmup_ratio=0.0)
    result = api.train("full", pairs, overrides=overrides, out=out)
    assert result["status"] == "ok", result["error"]
    after = load_file(str(out / "best" / SAVED))
    before = LlamaForCausalLM.from_pretrained(model).state_dict()
    unchanged = sum((after[n].float() == before[n].float()).sum().item() for n in after)
    return unchanged / sum(t.numel() for t in after.values())


def test_fp32_master_weights_take_every_update_and_pure_bf16_drops_some(bf16_llama, pairs, tmp_path):
    mixed = _unchanged_after_one_step(bf16_llama, pairs, "bf16-mixed", tmp_path / "mixed")
    true = _unchanged_after_one_step(bf16_llama, pairs, "bf16-true", tmp_path / "true")
    print(f"unchanged after one AdamW step at 5e-5: bf16-mixed {mixed:.1%}, bf16-true {true:.1%}")
    assert mixed == 0.0  # every trainable weight moved
    assert true > 0.05  # bf16 cannot hold an update below half its 8-bit mantissa's step


CASES = [(m, r) for m in ("full", "lora", "qlora", "head") for r in RULE_NAMES]


@pytest.mark.parametrize(("method", "rule"), CASES)
def test_the_result_records_the_dtypes_the_parameters_have(bf16_llama, pairs, method, rule):
    """The loop's setup applies the rule after the method builds; what the result records is read off the model."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from tunebench.training import setup
    from tunebench.training.args import TrainArgs

    cfg = build_config(method, pairs, overrides=_overrides(bf16_llama, rule, max_steps=1))
    result: dict = {}
    AcceleratorState._reset_state()
    s = setup.prepare(TrainArgs.from_config(cfg), Accelerator(cpu=True), result)
    model = s.accelerator.unwrap_model(s.model)
    floating = [p for p in model.parameters() if p.is_floating_point() and "bitsandbytes" not in type(p).__module__]
    trainable = {str(p.dtype).removeprefix("torch.") for p in floating if p.requires_grad}
    frozen = {str(p.dtype).removeprefix("torch.") for p in floating if not p.requires_grad}
    recorded = result["precision"]
    assert recorded["rule"] == rule
    assert {recorded["trainable_dtype"]} == trainable and {recorded["frozen_dtype"]} - {None} == frozen
    # by hand, from the rule's definition
    expected_trainable, expected_frozen = {"fp32": ("float32",) * 2, "bf16-mixed": ("float32", "bfloat16")}.get(
        rule, ("bfloat16",) * 2
    )
    assert recorded["trainable_dtype"] == expected_trainable
    assert recorded["frozen_dtype"] == (None if method == "full" else expected_frozen)
    assert recorded["autocast_dtype"] == ("bfloat16" if rule == "bf16-mixed" else None)
    assert recorded["compute_dtype"] == ("float32" if rule == "fp32" else "bfloat16")


@pytest.mark.parametrize(("method", "rule"), CASES)
def test_the_planners_meta_model_has_the_real_models_dtypes(bf16_llama, pairs, method, rule):
    """Trace against real: build_meta plus the rule, parameter by parameter, against build plus the rule."""
    options = dict(get_method(method).DEFAULTS["method_options"])
    real = get_method(method).build(bf16_llama, None, method_cfg(options, None, False, "generate", rule), "cpu")
    apply_rule(real, rule)
    meta = build_meta_model(
        load_config(bf16_llama), method, num_labels=2, precision=rule, options=options, task_type="generate"
    )
    real_dtypes = {n: p.dtype for n, p in real.named_parameters() if "bitsandbytes" not in type(p).__module__}
    meta_dtypes = {n: p.dtype for n, p in meta.named_parameters() if p.is_floating_point()}
    assert meta_dtypes == real_dtypes
    assert describe(meta, rule) == describe(real, rule)


@pytest.mark.parametrize("rule", ["fp32", "bf16-true"])
def test_forgetting_measures_the_original_under_the_run_s_rule(bf16_llama, pairs, tmp_path, rule):
    """The untuned model is the original checkpoint: under any rule its build changes nothing, also where the rule
    upcasts the bf16 checkpoint (fp32)."""
    overrides = _overrides(bf16_llama, rule) | {"generation": {"forgetting_texts": 4, "batch_size": 8}}
    result = api.train("none", pairs, overrides=overrides, out=tmp_path / "none")
    assert result["forgetting"]["loss_before"] == result["forgetting"]["loss_built"]
    assert result["forgetting"]["build_change"] == 0.0


def test_bad_precision_values_exit_2_with_one_line(pairs, capsys):
    for argv in (
        ["train", "--method", "full", "--task", pairs, "--set", "train.precision=bf16"],
        ["plan", "--model", "smollm2-135m", "--task", "rotten_tomatoes_gen", "--precision", "amp"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "bf16-mixed" in err and "bf16-true" in err, err


def _group(method: str, train: dict, recorded: str | None = None):
    from tunebench.report.groups import Group
    from tunebench.report.load import RunResult

    config = {"method": method, "pooling": "last", "train": {"epochs": 1, **train}}
    result = {"config": config, "trainable_params": 0, "test_accuracy": 0.5, "test_f1": 0.5}
    if recorded:
        result["precision"] = {"rule": recorded, "trainable_dtype": "float32", "frozen_dtype": "bfloat16",
                               "autocast_dtype": "bfloat16", "compute_dtype": "bfloat16"}  # fmt: skip
    return Group("t", method, method, [RunResult(method, result, {"method": method})])


def test_the_report_states_the_rule_and_flags_a_table_of_mixed_rules():
    from tunebench.report.advice import like_for_like
    from tunebench.report.settings import precision_note

    same = [_group("full", {"precision": "bf16-mixed"}, "bf16-mixed"), _group("lora", {"mixed_precision": "bf16"})]
    assert like_for_like(same) == []
    assert precision_note(same).startswith("Precision rule: bf16-mixed (trainable weights float32, frozen bfloat16")
    mixed = [_group("full", {"precision": "bf16-true"}), _group("lora", {"mixed_precision": "no"}), _group("head", {})]
    assert like_for_like(mixed) == [
        "Not the same precision rule: bf16-true for full; fp32 for lora; precision not recorded for head."
    ]
