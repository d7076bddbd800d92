"""The precision rule of a run (`train.precision`): the one table of what dtype each kind of weight is kept in and
what autocast runs, and the one function that applies it to a built model (the loop's and the planner's).

The names are Lightning's (`Trainer(precision=...)`): fp32, bf16-mixed, bf16-true, fp16-mixed; `auto` resolves
at run start (resolve_rule) and the result records the concrete rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Rule:
    trainable: torch.dtype  # the weights the optimizer updates (and so its AdamW state)
    frozen: torch.dtype  # every other floating-point weight (bitsandbytes' quantized weights are left alone)
    autocast: torch.dtype | None  # the autocast the step runs under; None: none
    accelerate: str  # Accelerate's mixed_precision for it
    compute: torch.dtype  # qlora's bnb_4bit_compute_dtype: the dtype its dequantized matmuls run in


RULES = {
    # every weight fp32 (a bf16 checkpoint is upcast), no autocast
    "fp32": Rule(torch.float32, torch.float32, None, "no", torch.float32),
    # fp32 master weights for what trains, frozen weights and matmuls bf16, as Megatron and DeepSpeed do
    "bf16-mixed": Rule(torch.float32, torch.bfloat16, torch.bfloat16, "bf16", torch.bfloat16),
    # everything bf16, adapters and heads too, AdamW state bf16, as torchtune and peft's method comparison do;
    # AdamW drops updates below bf16's resolution (8 bits of mantissa)
    "bf16-true": Rule(torch.bfloat16, torch.bfloat16, None, "no", torch.bfloat16),
    # bf16-mixed with fp16: Accelerate adds a gradient scaler
    "fp16-mixed": Rule(torch.float32, torch.float16, torch.float16, "fp16", torch.float16),
}
PRECISION_CHOICES = ("auto", *RULES)
# results from before train.precision: train.mixed_precision's values as the rule the report reads them as
LEGACY_RULES = {"no": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed"}


def resolve_rule(name: str, device: torch.device) -> str:
    """auto: bf16-mixed on a CUDA device with bf16, else fp32 (bf16 is emulated, and slow, on many CPUs)."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "fp32"


def recorded_rule(result_or_cfg: dict) -> str | None:
    """The rule a result (or a run's config) ran under: the recorded one, else the config's train.precision, else
    the legacy train.mixed_precision's reading; None when none of them says."""
    recorded = (result_or_cfg.get("precision") or {}).get("rule") if "config" in result_or_cfg else None
    train = (result_or_cfg.get("config") or result_or_cfg).get("train") or {}
    rule = recorded or train.get("precision")
    if rule in RULES:
        return rule
    return LEGACY_RULES.get(train.get("mixed_precision"))


def _quantized(param: torch.Tensor) -> bool:
    """bitsandbytes' Params4bit / Int8Params: packed weights whose dtype is storage, not precision."""
    return type(param).__module__.startswith("bitsandbytes")


def apply_rule(model: nn.Module, rule: str) -> nn.Module:
    """Cast the trainable parameters to the rule's master dtype and the frozen floating-point ones to its frozen
    dtype, in place (parameter identity, and so weight tying, is kept). Buffers (rotary frequencies) stay as the
    model keeps them."""
    dtypes = RULES[rule]
    for param in model.parameters():
        if _quantized(param) or not param.is_floating_point():
            continue
        dtype = dtypes.trainable if param.requires_grad else dtypes.frozen
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
    return model


def dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).removeprefix("torch.") if dtype else None


def _names(dtypes: set[torch.dtype]) -> str | None:
    """One dtype's name; several (which a rule should not leave) joined with '+', so a mix shows."""
    return "+".join(sorted(dtype_name(d) for d in dtypes)) or None


def describe(model: nn.Module, rule: str) -> dict:
    """The result's `precision`: the rule and the dtypes the model's parameters really have."""
    trainable, frozen = set(), set()
    for param in model.parameters():
        if _quantized(param) or not param.is_floating_point():
            continue
        (trainable if param.requires_grad else frozen).add(param.dtype)
    dtypes = RULES[rule]
    quantized = {m.compute_dtype for m in model.modules() if isinstance(getattr(m, "compute_dtype", None), torch.dtype)}
    weights = frozen or trainable
    compute = quantized or ({dtypes.autocast} if dtypes.autocast else weights)
    return {
        "rule": rule,
        "trainable_dtype": _names(trainable),
        "frozen_dtype": _names(frozen),
        "autocast_dtype": _names({dtypes.autocast} if dtypes.autocast else set()),
        "compute_dtype": _names(compute),
    }
