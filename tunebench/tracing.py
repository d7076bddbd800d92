"""One training step, traced without running it: the planner's model of memory and FLOPs.

The model is built on the meta device the way its method builds it, materialized with `to_empty`
inside FakeTensorMode, and stepped through the loop's sequence (forward, backward, gradient clipping,
AdamW, zero_grad) under the same TensorTracker that measures real runs. Fake tensors have shapes,
dtypes and storages but no data: nothing is allocated, nothing is downloaded.

Kernel assumptions, which follow from tracing with the CPU build's kernels:
- attention is SDPA with a fused kernel (flash / memory-efficient on CUDA, flash-for-CPU here): it
  saves the output and a log-sum-exp, never the s x s score matrix that eager attention saves;
- the padding mask is materialized as a (batch, 1, s, s) boolean, as transformers does for SDPA;
  transformers always takes this masked path on fake tensors, where a real batch with no padding drops
  the mask (and, for grouped-query attention, skips copying the key/value heads to every query head);
- autocast follows the CPU op lists (matmuls in bf16; the CUDA lists differ in a few reductions).
"""

from __future__ import annotations

import copy
import itertools
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from tunebench.data.generate import IGNORE
from tunebench.measure import CATEGORIES, ProfiledPeak, TensorTracker, quantization_state
from tunebench.models.blocks import block_list
from tunebench.models.hub import DECODER_TYPES
from tunebench.models.params import decay_param_groups
from tunebench.optim import build_adamw, build_optimizer, resolve_adamw

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


class FlopCounter(TorchDispatchMode):
    """Total FLOPs of the ops run under it, by torch's FLOP formulas (FlopCounterMode's registry).

    Not FlopCounterMode itself: its module tracker hooks the gradients of every module's outputs, and under
    gradient checkpointing those hooks on recomputed outputs keep the recomputed activations alive, which
    the memory trace would count.
    """

    FORMULAS = {**flop_registry, **{op: shape_wrapper(count) for op, count in SDPA_CPU_FLOPS.items()}}

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


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


def method_cfg(options: dict, pooling: str | None, gradient_checkpointing: bool, task_type: str) -> dict:
    """The parts of a run's config that a method's build and build_meta read."""
    return {
        "method_options": options,
        "pooling": pooling,
        "head_dropout": None,  # the default
        "train": {"gradient_checkpointing": gradient_checkpointing},
        "data": {"task_type": task_type},
    }


def build_meta_model(
    config,
    method: str,
    *,
    num_labels: int,
    precision: str,
    options: dict,
    pooling: str = "cls",
    gradient_checkpointing: bool = False,
    task_type: str = "classify",
) -> nn.Module:
    """The method's model on the meta device (its build_meta: same modules, same trainable set, same dtypes), with
    gradient checkpointing enabled as the loop enables it after build."""
    from tunebench.methods import get_method

    cfg = method_cfg(options, pooling, gradient_checkpointing, task_type)
    with torch.device("meta"):
        model = get_method(method).build_meta(config, num_labels, cfg, precision)
    if gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.train()
    return model


def meta_base(config, num_labels: int | None, cfg: dict, dtype: torch.dtype) -> nn.Module:
    """What models.task_model.load_model loads, from a config, in dtype: the causal LM of a generate task (with its
    vocabulary-sized LM head), else tunebench.classifier.Classifier (the backbone without its pooler and the head,
    both in the checkpoint's dtype: transformers >= 5 loads a bf16 checkpoint in bf16). Methods call it from
    build_meta, under torch.device("meta")."""
    from transformers import AutoModel, AutoModelForCausalLM

    from tunebench.data.generate import is_generate
    from tunebench.models.classifier import Classifier, drop_pooler, head_dropout

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


def attention_implementation(model: nn.Module) -> str:
    return next(m.config._attn_implementation for m in model.modules() if hasattr(m, "config"))


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


# -- the step ------------------------------------------------------------------------------------
class TimelineTracker(TensorTracker):
    """TensorTracker that also records the per-category totals at every new storage, and where in the step.

    Two traces at different batch sizes run the same ops, so each recorded point is affine in the
    batch size: from them the peak at any batch size follows without another trace. Each point's label,
    (phase, position) with position "pre", a block index or "post", says which block of the layer stack
    was running: it lines up traces of different depths (extrapolate_depth).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        self.points: list[list[int]] = []
        self.labels: list[tuple[str, str | int]] = []
        self.label: tuple[str, str | int] = ("setup", "pre")
        super().__init__(model, optimizer)

    def mark(self, phase: str, position: str | int = "pre") -> None:
        self.label = (phase, position)

    def _update_peak(self) -> None:
        self.points.append([self.current[c] for c in CATEGORIES])  # point i is event i
        self.labels.append(self.label)
        super()._update_peak()

    def _reclassify(self, entry: list, category: str) -> None:
        nbytes, old, first = entry
        column_old, column_new = CATEGORIES.index(old), CATEGORIES.index(category)
        for point in self.points[first:]:
            point[column_old] -= nbytes
            point[column_new] += nbytes
        super()._reclassify(entry, category)


def _label_blocks(model: nn.Module, tracker: TimelineTracker, num_layers: int) -> None:
    """Hooks that label the tracker's points with the block running, in forward and in backward.

    Backward enters block k when the gradient of its output is complete, and leaves the stack when the
    gradient of the first block's input is; a frozen stack (head) or a frozen embedding (lora) has fewer marks.
    """
    blocks = block_list(model, num_layers)
    if blocks is None:
        return

    def on_gradient(tensor, position: str | int) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            tensor.register_hook(lambda grad: tracker.mark("backward", position))

    def before(k: int, module, args, kwargs) -> None:
        if tracker.label[0] == "forward":  # not gradient checkpointing's rerun in backward
            tracker.mark("forward", k)
            if k == 0:
                on_gradient(args[0] if args else kwargs.get("hidden_states"), "post")

    def after(k: int, module, args, output) -> None:
        if tracker.label[0] == "forward":
            on_gradient(output if isinstance(output, torch.Tensor) else output[0], k)
            if k == num_layers - 1:
                tracker.mark("forward", "post")

    for k, block in enumerate(blocks):
        block.register_forward_pre_hook(partial(before, k), with_kwargs=True)
        block.register_forward_hook(partial(after, k))


def loop_step(
    model: nn.Module,
    optimizer,
    batch: dict,
    tracker: TensorTracker,
    autocast_dtype,
    device_type: str,
    max_grad_norm: float | None = MAX_GRAD_NORM,
    micro_batches: int = 1,
):
    """One optimizer step in tunebench.training.fit's order, under the tracker.

    micro_batches: forward and backward passes accumulated into the gradients before the step (gradient
    accumulation); from the second on, every gradient is live through the forward pass, so more than two
    repeat the second. No clipping when max_grad_norm is 0 or None, as in the loop.
    """
    autocast = torch.autocast(device_type, autocast_dtype) if autocast_dtype else nullcontext()
    mark = tracker.mark if isinstance(tracker, TimelineTracker) else lambda phase: None
    with tracker:
        for _ in range(micro_batches):
            mark("forward")
            with autocast:  # Accelerate autocasts the forward only
                loss = model(**batch).loss / micro_batches
            mark("backward")
            loss.backward()
            tracker.classify_state()
        trainable = [p for p in model.parameters() if p.requires_grad]
        if max_grad_norm:
            mark("clip")
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        mark("optimizer")
        optimizer.step()
        tracker.classify_state()
        state = {c: tracker.current[c] for c in ("weights", "gradients", "optimizer_state")}
        optimizer.zero_grad(set_to_none=True)
    return state


def make_batch(
    batch_size: int,
    seq_len: int,
    num_labels: int | None,
    vocab_size: int,
    pad_token_id: int = 0,
    device="cpu",
    task_type: str = "classify",
) -> dict:
    """A batch padded on the right to its longest example, seq_len tokens, as the loop's collators pad it.

    The other examples are shorter (down to half), so the model applies the attention mask: the path every
    padded batch takes. Under FakeTensorMode transformers cannot see the mask's values and always takes it;
    a real batch with no padding at all drops the mask (a slightly cheaper path, see planner.validate_steps).
    A generate task's labels are the tokens with the prompt (each example's first half) and the padding -100,
    as data.generate.collate gives them: the loss is the answer's alone.
    """
    generator = torch.Generator().manual_seed(0)
    lengths = torch.linspace(seq_len, max(1, seq_len // 2), batch_size).round().long()
    positions = torch.arange(seq_len)
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator).masked_fill(mask == 0, pad_token_id)
    if task_type == "generate":
        answer = (positions >= lengths[:, None] // 2) & (mask == 1)
        labels = ids.masked_fill(~answer, IGNORE)
    else:
        labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


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
    labels: list = field(default=None, repr=False)  # (phase, position) of each point (TimelineTracker)
    depths: tuple[int, ...] = ()  # the layer-stack depths traced: the model's own, or two it is extrapolated from
    independent: dict | None = None  # measured steps: the allocator's own peak {"bytes", "by", ...} (measure_step)
    attention: str | None = None  # the attention implementation the model ran (traced steps)


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
    adamw: str | None = None,
    optimizer: str = "adamw",
    max_grad_norm: float | None = MAX_GRAD_NORM,
    grad_accum: int = 1,
    task_type: str = "classify",
) -> StepTrace:
    """Trace the optimizer's first step (which creates its state lazily) and then a full training step, all fake.

    The first step runs on zero gradients without a forward pass: it costs only the optimizer's ops and
    leaves the state exactly as a first real step would; the second step is the one the peak comes from.
    optimizer: one of tunebench.optim.OPTIMIZERS, built by the loop's own builder (bitsandbytes' 8-bit states
    as it allocates them); adamw: torch AdamW's implementation; default: the one `auto` picks on CUDA, where
    plans run. grad_accum: micro-batches per optimizer step; memory is traced over two (the rest repeat the
    second) and FLOPs are those of all of them.
    task_type: "classify" (the sequence classifier's step) or "generate" (the causal-LM SFT step: vocabulary-sized
    logits, upcast to fp32 inside transformers' causal-LM loss, on answer-masked labels; num_labels unused).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    _, autocast_dtype = PRECISIONS[precision]
    model = build_meta_model(
        config,
        method,
        num_labels=num_labels,
        precision=precision,
        options=options,
        pooling=pooling,
        gradient_checkpointing=gradient_checkpointing,
        task_type=task_type,
    )
    with FakeTensorMode(allow_non_fake_inputs=True), ExitStack() as stack:
        _to_empty_tied(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # bitsandbytes computes its quantization maps from Python numbers: built outside fake mode
        with unset_fake_temporarily() if optimizer != "adamw" else nullcontext():
            step_optimizer = build_optimizer(
                decay_param_groups(model, WEIGHT_DECAY), LR, optimizer, adamw or resolve_adamw("auto", "cuda")
            )
        batch = make_batch(batch_size, seq_len, num_labels, config.vocab_size, _pad_id(config), task_type=task_type)
        tracker = TimelineTracker(model, step_optimizer)
        _label_blocks(model, tracker, config.num_hidden_layers)
        tracker.mark("init")
        with tracker:
            for param in trainable:
                param.grad = torch.zeros_like(param)
            tracker.classify_state()
            step_optimizer.step()
            tracker.classify_state()
            step_optimizer.zero_grad(set_to_none=True)
        counter = None
        if count_flops:
            counter = stack.enter_context(FlopCounter())
        micro_batches = min(grad_accum, 2)
        state = loop_step(model, step_optimizer, batch, tracker, autocast_dtype, "cpu", max_grad_norm, micro_batches)
    return StepTrace(
        batch_size=batch_size,
        seq_len=seq_len,
        peak_bytes=tracker.peak_bytes,
        at_peak=dict(tracker.peak_breakdown),
        state=state,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=_logical_params(model),
        flops=counter.flops * grad_accum // micro_batches if counter else None,
        points=np.asarray(tracker.points, dtype=np.float64),
        labels=tracker.labels,
        depths=(config.num_hidden_layers,),
        attention=attention_implementation(model),
    )


def _to_empty_tied(model: nn.Module) -> None:
    """model.to_empty(device="cpu") that keeps tied parameters tied (an LM head sharing the input embeddings).

    Module._apply gives each module holding a parameter its own new Parameter when the new tensor's type differs
    from the old one's, as a fake tensor's does from a meta tensor's: a tied weight would count twice.
    """
    holders: dict[nn.Parameter, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                holders.setdefault(param, []).append((module, name))
    model.to_empty(device="cpu")
    for (first, first_name), *others in holders.values():
        for module, name in others:
            module._parameters[name] = first._parameters[first_name]


def _pad_id(config) -> int:
    return getattr(config, "pad_token_id", None) or 0


def _logical_params(model: nn.Module) -> int:
    """Parameter count with a quantized stand-in counted as the weight it replaces, a tied weight once."""
    total, seen = 0, set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied: counted where it was first seen
                continue
            seen.add(id(param))
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


def max_seq_len(
    base: StepTrace, double_batch: StepTrace, other_seq: StepTrace, limit_bytes: float, batch_size: int, cap: int
) -> int | None:
    """Largest sequence length whose peak at batch_size stays within limit_bytes (0: none), capped at cap.

    From three traces of the same ops: base at (b, s), double_batch at (2b, s), other_seq at (b, s'). Each point
    is taken as A + batch x (d1 s + d2 s^2): the weights, gradients and optimizer state do not depend on the
    shape, and what does grows with the examples, in tokens (activations, logits) or in their square (the
    attention mask, eager attention's scores). Terms in the sequence alone (rotary tables) count as if they grew
    with the batch: a few bytes per token. None if the traces ran different ops.
    """
    traces = (base, double_batch, other_seq)
    if len({t.points.shape for t in traces}) > 1 or double_batch.batch_size != 2 * base.batch_size:
        return None
    b, s0, s1 = base.batch_size, base.seq_len, other_seq.seq_len
    per_example_s0 = (double_batch.points.sum(1) - base.points.sum(1)) / b
    constant = base.points.sum(1) - b * per_example_s0
    per_example_s1 = (other_seq.points.sum(1) - constant) / b
    d2 = (per_example_s1 * s0 - per_example_s0 * s1) / (s0 * s1 * (s1 - s0))
    d1 = (per_example_s0 - d2 * s0 * s0) / s0

    def fits(seq: int) -> bool:
        return bool(np.all(constant + batch_size * (d1 * seq + d2 * seq * seq) <= limit_bytes))

    if not fits(1):
        return 0
    low, high = 1, cap + 1  # fits(low); not fits(high), or high is past the cap
    if fits(cap):
        return cap
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# -- depth: a stack of identical blocks -----------------------------------------------------------
def extrapolation_depths(config) -> tuple[int, int] | None:
    """Two shorter stacks, 2 and 3 repeats of the layer pattern, to trace instead of every layer.

    The pattern is the shortest period of config.layer_types that tiles the model (2 for Gemma-2's
    alternating sliding and global attention, 1 when every layer is alike). None, trace every layer, when
    the pattern does not tile the model (Gemma-3: 5 sliding + 1 global into 26 layers) or the model is so
    shallow that the two short traces cost about as much as the whole one.
    """
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None) or [None] * layers
    period = next(p for p in range(1, layers + 1) if layers % p == 0 and types == types[:p] * (layers // p))
    depths = (2 * period, 3 * period)
    return depths if layers >= 2 * sum(depths) else None


def with_depth(config, layers: int):
    """A copy of config with the first `layers` layers."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    return config


def trace_step_extrapolated(
    config, method: str, depths: tuple[int, int], trace=trace_step, **kwargs
) -> StepTrace | None:
    """trace_step at the model's depth from traces of two shorter stacks; None if their points do not line up.
    trace: trace_step, or a function that returns its results (the planner's, run ahead)."""
    low, high = (trace(with_depth(config, depth), method, **kwargs) for depth in depths)
    return extrapolate_depth(low, high, config.num_hidden_layers)


def extrapolate_depth(low: StepTrace, high: StepTrace, layers: int) -> StepTrace | None:
    """The trace of a `layers`-deep stack from traces 2 and 3 pattern repeats deep (None: points do not line up).

    Every quantity of the step is affine in the number of blocks: weights, gradients, optimizer state,
    FLOPs, and, at a given place in the step, the activations saved so far. The points the peak can be at
    are kept (_depth_points) and extrapolated one by one, as affine_peak does in the batch size; with
    whole repeats of the pattern the arithmetic is exact in integers.
    """
    (depth_low,), (depth_high,) = low.depths, high.depths
    period = depth_high - depth_low
    points_low, keys_low = _depth_points(low, depth_low // period, period)
    points_high, keys_high = _depth_points(high, depth_high // period, period)
    if keys_low != keys_high or not any(key[1] == "first" for key in keys_low):
        return None  # the steps differ beyond the blocks, or no block was found to line them up by

    def at(a, b):
        return a + (b - a) * (layers - depth_low) // period

    points = at(points_low, points_high)
    index = len(points) - 1 - int(points.sum(1)[::-1].argmax())  # the last of equal maxima, as TensorTracker
    return StepTrace(
        batch_size=low.batch_size,
        seq_len=low.seq_len,
        peak_bytes=int(points[index].sum()),
        at_peak={c: int(v) for c, v in zip(CATEGORIES, points[index], strict=True)},
        state={c: at(low.state[c], high.state[c]) for c in low.state},
        trainable_params=at(low.trainable_params, high.trainable_params),
        total_params=at(low.total_params, high.total_params),
        flops=at(low.flops, high.flops) if low.flops is not None else None,
        points=points.astype(np.float64),
        labels=keys_low,
        depths=(depth_low, depth_high),
        attention=low.attention,
    )


def _depth_points(step: StepTrace, repeats: int, period: int) -> tuple[np.ndarray, list]:
    """The points the peak can be at, as integers, and keys that name the same point at every depth.

    In a phase that runs the blocks, a given place inside repeat k of the pattern holds c + s*k bytes
    (s: what one repeat leaves live, saved activations in forward, gradients less activations in
    backward), largest in the first or the last repeat: the repeats between are dropped. A phase without
    blocks (AdamW, clipping) walks the parameters over the same live state with temporaries that depend
    only on each parameter's shape: its largest point is the same parameter's at every depth, the one kept.
    """
    totals = step.points.sum(1)
    blocked = {phase for phase, position in step.labels if isinstance(position, int)}
    keep, keys = [], []
    for phase, run in itertools.groupby(range(len(step.labels)), key=lambda i: step.labels[i][0]):
        run = list(run)
        if phase not in blocked:
            keep.append(max(run, key=lambda i: (totals[i], i)))
            keys.append((phase, "largest"))
            continue
        for i in run:
            position = step.labels[i][1]
            if not isinstance(position, int):
                key = (phase, position)
            elif position // period == 0:
                key = (phase, "first", position)
            elif position // period == repeats - 1:
                key = (phase, "last", position % period)
            else:
                continue
            keep.append(i)
            keys.append(key)
    return step.points[keep].astype(np.int64), keys


# -- the same step, measured for real ------------------------------------------------------------
def measure_step(
    model_path: str,
    method: str,
    *,
    batch_size: int,
    seq_len: int,
    num_labels: int,
    precision: str,
    device: torch.device,
    gradient_checkpointing: bool = False,
    task_type: str = "classify",
) -> StepTrace:
    """Build the method's real model (its own build function) and run two real steps of the loop on a padded
    batch, with the AdamW implementation the loop uses on this device.

    peak_bytes is TensorTracker's, the counter the prediction uses too; `independent` is the allocator's over
    the same two steps: on the CPU ProfiledPeak (torch.profiler's alloc/free events on top of the parameters,
    buffers and quantization state live before the first step); on CUDA torch.cuda.max_memory_allocated
    since the peak statistics were reset (no baseline: the weights count, as in the prediction), with
    max_memory_reserved (the allocator's margin) and the device memory in use outside PyTorch's allocator
    (mem_get_info: the CUDA context and library workspaces).
    """
    from tunebench.methods import get_method
    from tunebench.models.hub import load_config

    module = get_method(method)
    # pooling None: what the checkpoint was trained with, as the planner's spec.pooling
    cfg = method_cfg(dict(module.DEFAULTS["method_options"]), None, gradient_checkpointing, task_type)
    config = load_config(model_path)
    model = module.build(model_path, None if task_type == "generate" else num_labels, cfg, device)
    if gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()  # as the loop does after build
    if not quantization_state(model):  # a quantized model is placed by its device_map as it loads
        model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, resolve_adamw("auto", device.type))
    batch = make_batch(batch_size, seq_len, num_labels, config.vocab_size, _pad_id(config), device, task_type)
    tracker = TensorTracker(model, optimizer)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    persistent = [*model.parameters(), *model.buffers(), *quantization_state(model)]
    allocator = nullcontext() if cuda else ProfiledPeak(persistent)
    with allocator:
        for _ in range(2):
            state = loop_step(model, optimizer, batch, tracker, PRECISIONS[precision][1], device.type)
    if cuda:
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        independent = {
            "bytes": torch.cuda.max_memory_allocated(device),
            "by": "torch.cuda.max_memory_allocated",
            "max_reserved_bytes": torch.cuda.max_memory_reserved(device),
            "outside_allocator_bytes": total - free - torch.cuda.memory_reserved(device),
        }
    else:
        independent = {"bytes": allocator.peak_bytes, "by": "torch.profiler allocator events + state at start"}
    return StepTrace(
        batch_size=batch_size,
        seq_len=seq_len,
        peak_bytes=tracker.peak_bytes,
        at_peak=dict(tracker.peak_breakdown),
        state=state,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in model.parameters()),
        independent=independent,
    )
