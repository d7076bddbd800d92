"""Models on the meta device, built as the methods build them: what a method's build_meta starts from.

meta_base is the model models.task_model.load_model loads, from a config alone; quantize_base swaps frozen linear
layers for a stand-in of bitsandbytes' 4- and 8-bit layers (their stored bytes, a dequantized temporary while
they multiply). Nothing is allocated: the planner materializes these models under FakeTensorMode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tunebench.data.generate import is_generate
from tunebench.models.classifier import Classifier, drop_pooler, head_dropout
from tunebench.models.hub import DECODER_TYPES


def classifier_config(config, num_labels: int):
    """A copy of config for a sequence classifier with num_labels; decoders need a pad token id to pool."""
    config = copy.deepcopy(config)
    config.num_labels = num_labels
    config.id2label = {i: str(i) for i in range(num_labels)}
    config.label2id = {str(i): i for i in range(num_labels)}
    if config.model_type in DECODER_TYPES and getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = (eos[0] if isinstance(eos, list) else eos) or 0
    return config


def meta_base(config, num_labels: int | None, cfg: dict, dtype: torch.dtype) -> nn.Module:
    """What models.task_model.load_model loads, from a config, in dtype: the causal LM of a generate task (with its
    vocabulary-sized LM head), else models.classifier.Classifier (the backbone without its pooler and the head,
    both in the checkpoint's dtype: transformers >= 5 loads a bf16 checkpoint in bf16). Methods call it from
    build_meta, under torch.device("meta")."""
    # lazy: the auto classes load transformers' model registry (start-up time of every command that lists methods)
    from transformers import AutoModel, AutoModelForCausalLM

    if is_generate(cfg):
        return _from_config(AutoModelForCausalLM, copy.deepcopy(config), dtype)
    backbone = drop_pooler(_from_config(AutoModel, classifier_config(config, num_labels), dtype))
    return Classifier(backbone, num_labels, cfg["pooling"], head_dropout(cfg))


def _from_config(auto_class, config, dtype: torch.dtype) -> nn.Module:
    """SDPA attention where the architecture has it (it saves no s x s matrix), eager otherwise (Gemma-2)."""
    try:
        return auto_class.from_config(config, dtype=dtype, attn_implementation="sdpa")
    except ValueError:
        return auto_class.from_config(config, dtype=dtype, attn_implementation="eager")


def quantized_bytes(out_features: int, in_features: int, bits: int) -> int:
    """Bytes bitsandbytes stores for a quantized (out, in) weight: the packed weight and its constants.

    4-bit NF4 with double quantization (Linear4bit, blocksize 64): 0.5 byte per weight, one absmax per
    64 weights quantized to 8 bits, whose own fp32 absmax comes per 256 blocks, plus the 256-entry fp32
    code of that second quantization, the 16-entry NF4 code and an fp32 offset: ~0.516 byte per weight.
    8-bit (LLM.int8, Linear8bitLt): 1 byte per weight plus one fp32 scale per output row.
    """
    n = out_features * in_features
    if bits == 8:
        return n + 4 * out_features
    blocks = -(-n // 64)
    return -(-n // 2) + blocks + 4 * -(-blocks // 256) + 4 * 256 + 4 * 16 + 4


def packed_weight_bytes(out_features: int, in_features: int, bits: int) -> int:
    """The part of quantized_bytes that is the weight parameter itself; the rest is quantization state."""
    n = out_features * in_features
    return n if bits == 8 else -(-n // 2)


class _DequantizedMatmul(torch.autograd.Function):
    """x @ W.T with W dequantized into a temporary on both passes; like bitsandbytes >= 0.49's MatMul4Bit
    it keeps no input for backward (the frozen weight needs no gradient)."""

    @staticmethod
    def forward(ctx, x, packed, bias, shape, dtype):
        weight = packed.new_empty(shape, dtype=dtype)  # fake: only its size matters
        ctx.shape, ctx.dtype, ctx.packed = shape, dtype, packed
        return nn.functional.linear(x, weight, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        weight = ctx.packed.new_empty(ctx.shape, dtype=ctx.dtype)
        return grad.to(ctx.dtype) @ weight, None, None, None, None


class QuantizedLinear(nn.Module):
    """A bitsandbytes Linear4bit/Linear8bitLt stand-in for fake traces: the stored bytes (a frozen uint8
    parameter of the packed weight's size, a uint8 buffer of its quantization constants, as TensorTracker
    counts a real one), and a weight-sized temporary in the compute dtype while it multiplies."""

    def __init__(self, linear: nn.Linear, bits: int, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        packed = packed_weight_bytes(self.out_features, self.in_features, bits)
        constants = quantized_bytes(self.out_features, self.in_features, bits) - packed
        self.weight = nn.Parameter(torch.empty(packed, dtype=torch.uint8, device=linear.weight.device), False)
        self.register_buffer("quant_state", torch.empty(constants, dtype=torch.uint8, device=linear.weight.device))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        out = _DequantizedMatmul.apply(x.to(self.compute_dtype), self.weight, self.bias, shape, self.compute_dtype)
        return out.to(x.dtype)


def quantize_base(model: nn.Module, bits: int, compute_dtype: torch.dtype, skip: tuple[str, ...]) -> None:
    """Replace every frozen linear layer in place, except those with a name in skip on their path (the method's
    bitsandbytes skip list)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}".split(".")
            if type(child) is nn.Linear and not child.weight.requires_grad and not set(path) & set(skip):
                setattr(module, child_name, QuantizedLinear(child, bits, compute_dtype))
