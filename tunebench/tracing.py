"""One training step, traced without running it: the planner's model of memory and FLOPs.

The model is built on the meta device the way its method builds it, materialized with `to_empty`
inside FakeTensorMode, and stepped through the loop's sequence (forward, backward, gradient clipping,
AdamW, zero_grad) under the same TensorTracker that measures real runs. Fake tensors have shapes,
dtypes and storages but no data: nothing is allocated, nothing is downloaded.

Kernel assumptions, which follow from tracing with the CPU build's kernels:
- attention is SDPA with a fused kernel (flash / memory-efficient on CUDA, flash-for-CPU here): it
  saves the output and a log-sum-exp, never the s x s score matrix that eager attention saves;
- the padding mask is materialized as a (batch, 1, s, s) boolean, as transformers does for SDPA;
- autocast follows the CPU op lists (matmuls in bf16; the CUDA lists differ in a few reductions).
"""

from __future__ import annotations

import copy
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tunebench.measure import CATEGORIES, TensorTracker
from tunebench.modeling import UNQUANTIZED, decay_param_groups
from tunebench.models import DECODER_TYPES

# precision -> (weight dtype, autocast dtype or None)
PRECISIONS = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, torch.bfloat16),  # pure bf16: weights, gradients and AdamW state in bf16
    "amp": (torch.float32, torch.bfloat16),  # fp32 master weights, bf16 autocast (Accelerate mixed_precision=bf16)
}
MAX_GRAD_NORM = 1.0  # the loop clips by default; clipping allocates per-parameter norms
LR, WEIGHT_DECAY = 1e-4, 0.01  # values do not change memory; the parameter groups do

aten = torch.ops.aten
# The CPU flash-attention kernels are not in torch's FLOP registry; count them like the CUDA ones.
SDPA_CPU_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(
        q, k, v
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(grad, q, k, v)
    ),
}


# -- building models the way the methods do ---------------------------------------------------------
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


def build_meta_model(
    config,
    method: str,
    *,
    num_labels: int,
    precision: str,
    options: dict,
    pooling: str = "cls",
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """The method's model on the meta device: same modules, same trainable set, same dtypes.

    full/lora/qlora load like tunebench.modeling.load_classifier (transformers >= 5 loads the checkpoint's
    dtype, so a bf16 checkpoint trains in bf16); lora attaches peft's adapter with tunebench's targets;
    qlora is lora on a base whose linear layers are replaced by `QuantizedLinear` stand-ins (see below),
    with the other parameters in fp32 as peft's prepare_model_for_kbit_training leaves them; head is
    methods.head.HeadClassifier on a frozen backbone.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    from tunebench.methods.head import HeadClassifier
    from tunebench.methods.lora import attach_adapter

    weight_dtype, autocast_dtype = PRECISIONS[precision]
    config = classifier_config(config, num_labels)
    with torch.device("meta"):
        if method == "head":
            backbone = _from_config(AutoModel, config, weight_dtype)
            backbone.requires_grad_(False)
            model = HeadClassifier(backbone, num_labels, pooling, options.get("dropout", 0.1))
        else:
            dtype = torch.float32 if method == "qlora" else weight_dtype
            model = _from_config(AutoModelForSequenceClassification, config, dtype)
            if method == "full":
                model.requires_grad_(True)
            else:
                if method == "qlora":
                    model.requires_grad_(False)
                model = attach_adapter(model, options)
                if method == "qlora":
                    quantize_base(model, options.get("bits", 4), autocast_dtype or torch.float32)
    if gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _from_config(auto_class, config, dtype: torch.dtype) -> nn.Module:
    """SDPA attention where the architecture has it (it saves no s x s matrix), eager otherwise (Gemma-2)."""
    try:
        return auto_class.from_config(config, dtype=dtype, attn_implementation="sdpa")
    except ValueError:
        return auto_class.from_config(config, dtype=dtype, attn_implementation="eager")


def attention_implementation(model: nn.Module) -> str:
    return next(m.config._attn_implementation for m in model.modules() if hasattr(m, "config"))


def quantized_bytes(out_features: int, in_features: int, bits: int) -> int:
    """Bytes bitsandbytes stores for a quantized (out, in) weight.

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
    """A bitsandbytes Linear4bit/Linear8bitLt stand-in for fake traces: the stored bytes, one frozen uint8
    parameter of `quantized_bytes`, and a weight-sized temporary in the compute dtype while it multiplies."""

    def __init__(self, linear: nn.Linear, bits: int, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        size = quantized_bytes(self.out_features, self.in_features, bits)
        self.weight = nn.Parameter(torch.empty(size, dtype=torch.uint8, device=linear.weight.device), False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        out = _DequantizedMatmul.apply(x.to(self.compute_dtype), self.weight, self.bias, shape, self.compute_dtype)
        return out.to(x.dtype)


def quantize_base(model: nn.Module, bits: int, compute_dtype: torch.dtype) -> None:
    """Replace every frozen linear layer outside the head and pooler (bitsandbytes' skip list) in place."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}".split(".")
            if type(child) is nn.Linear and not child.weight.requires_grad and not set(path) & set(UNQUANTIZED):
                setattr(module, child_name, QuantizedLinear(child, bits, compute_dtype))


# -- the step ------------------------------------------------------------------------------------
class TimelineTracker(TensorTracker):
    """TensorTracker that also records the per-category totals at every new storage.

    Two traces at different batch sizes run the same ops, so each recorded point is affine in the
    batch size: from them the peak at any batch size follows without another trace.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        self.points: list[tuple[int, ...]] = []
        super().__init__(model, optimizer)

    def _update_peak(self) -> None:
        self.points.append(tuple(self.current[c] for c in CATEGORIES))
        super()._update_peak()


def loop_step(model: nn.Module, optimizer, batch: dict, tracker: TensorTracker, autocast_dtype, device_type: str):
    """One optimizer step in tunebench.loop's order, under the tracker."""
    autocast = torch.autocast(device_type, autocast_dtype) if autocast_dtype else nullcontext()
    with tracker:
        with autocast:  # Accelerate autocasts the forward only
            loss = model(**batch).loss
        loss.backward()
        tracker.classify_state()
        trainable = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        tracker.classify_state()
        state = {c: tracker.current[c] for c in ("weights", "gradients", "optimizer_state")}
        optimizer.zero_grad(set_to_none=True)
    return state


def make_batch(method: str, batch_size: int, seq_len: int, num_labels: int, vocab_size: int, device="cpu") -> dict:
    """A full-length batch (no padding): the shape every step of a run at max_length has at most."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator).to(device),
    }


@dataclass
class StepTrace:
    """What one traced (or measured) training step needs in memory and compute."""

    batch_size: int
    seq_len: int
    peak_bytes: int
    at_peak: dict  # category -> bytes live at the peak
    state: dict  # weights, gradients (after backward), optimizer_state (after the step): full sizes
    trainable_params: int
    total_params: int
    flops: int | None = None  # per optimizer step
    points: np.ndarray = field(default=None, repr=False)  # (n, len(CATEGORIES)) totals at each new storage


def trace_step(
    config,
    method: str,
    *,
    batch_size: int,
    seq_len: int,
    num_labels: int,
    precision: str,
    options: dict,
    pooling: str = "cls",
    gradient_checkpointing: bool = False,
    count_flops: bool = False,
) -> StepTrace:
    """Trace AdamW's first step (which creates its state lazily) and then a full training step, all fake.

    The first step runs on zero gradients without a forward pass: it costs only the optimizer's ops and
    leaves the state exactly as a first real step would; the second step is the one the peak comes from.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, autocast_dtype = PRECISIONS[precision]
    model = build_meta_model(
        config,
        method,
        num_labels=num_labels,
        precision=precision,
        options=options,
        pooling=pooling,
        gradient_checkpointing=gradient_checkpointing,
    )
    with FakeTensorMode(allow_non_fake_inputs=True), ExitStack() as stack:
        model.to_empty(device="cpu")
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(decay_param_groups(model, WEIGHT_DECAY), lr=LR)
        batch = make_batch(method, batch_size, seq_len, num_labels, config.vocab_size)
        tracker = TimelineTracker(model, optimizer)
        with tracker:
            for param in trainable:
                param.grad = torch.zeros_like(param)
            tracker.classify_state()
            optimizer.step()
            tracker.classify_state()
            optimizer.zero_grad(set_to_none=True)
        counter = None
        if count_flops:
            counter = stack.enter_context(FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS))
        state = loop_step(model, optimizer, batch, tracker, autocast_dtype, "cpu")
    return StepTrace(
        batch_size=batch_size,
        seq_len=seq_len,
        peak_bytes=tracker.peak_bytes,
        at_peak=dict(tracker.peak_breakdown),
        state=state,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=_logical_params(model),
        flops=counter.get_total_flops() if counter else None,
        points=np.asarray(tracker.points, dtype=np.float64),
    )


def _logical_params(model: nn.Module) -> int:
    """Parameter count with a quantized stand-in counted as the weight it replaces."""
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, QuantizedLinear) and name == "weight":
                total += module.in_features * module.out_features
            else:
                total += param.numel()
    return total


def affine_peak(small: StepTrace, large: StepTrace, batch_size: int) -> tuple[int, dict] | None:
    """Peak bytes and breakdown at batch_size from two traces of the same ops; None if their ops differ."""
    if small.points.shape != large.points.shape or small.batch_size == large.batch_size:
        return None
    slope = (large.points - small.points) / (large.batch_size - small.batch_size)
    points = small.points + slope * (batch_size - small.batch_size)
    index = int(points.sum(1).argmax())
    return int(points[index].sum()), {c: int(v) for c, v in zip(CATEGORIES, points[index], strict=True)}


def affine_max_batch(small: StepTrace, large: StepTrace, limit_bytes: float, cap: int) -> int | None:
    """Largest batch size whose traced peak stays within limit_bytes (0: none), from two aligned traces."""
    if small.points.shape != large.points.shape or small.batch_size == large.batch_size:
        return None
    totals_small, totals_large = small.points.sum(1), large.points.sum(1)
    slope = (totals_large - totals_small) / (large.batch_size - small.batch_size)
    intercept = totals_small - slope * small.batch_size
    if np.any(intercept + np.maximum(slope, 0) > limit_bytes):  # does not fit at batch 1
        return 0
    growing = slope > 0
    if not growing.any():
        return cap
    return int(min(cap, np.floor(((limit_bytes - intercept[growing]) / slope[growing]).min())))


# -- the same step, measured for real ------------------------------------------------------------
def measure_step(
    model_path: str, method: str, *, batch_size: int, seq_len: int, num_labels: int, device: torch.device
) -> StepTrace:
    """Build the method's real model (its own build function) and run two real steps of the loop.

    On the CPU the peak is the TensorTracker's; on CUDA it is torch.cuda.max_memory_allocated, which
    like the prediction includes the weights.
    """
    from tunebench.methods import get_method
    from tunebench.models import load_config

    module = get_method(method)
    cfg = {"method_options": dict(module.DEFAULTS["method_options"]), "train": {"gradient_checkpointing": False}}
    config = classifier_config(load_config(model_path), num_labels)
    task = SimpleNamespace(label_names=[str(i) for i in range(num_labels)], num_labels=num_labels)
    tokenizer = SimpleNamespace(pad_token_id=config.pad_token_id)
    model = module.build(model_path, task, tokenizer, cfg, device)
    if method != "qlora":  # quantized models are placed by their device_map
        model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decay_param_groups(model, WEIGHT_DECAY), lr=LR)
    batch = make_batch(method, batch_size, seq_len, num_labels, config.vocab_size, device)
    tracker = TensorTracker(model, optimizer)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        state = loop_step(model, optimizer, batch, tracker, None, device.type)
    peak = torch.cuda.max_memory_allocated(device) if cuda else tracker.peak_bytes
    return StepTrace(
        batch_size=batch_size,
        seq_len=seq_len,
        peak_bytes=peak,
        at_peak=dict(tracker.peak_breakdown),
        state=state,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in model.parameters()),
    )
