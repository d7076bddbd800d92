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
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from tunebench.classifier import UNQUANTIZED, decay_param_groups
from tunebench.measure import CATEGORIES, ProfiledPeak, TensorTracker, quantization_state
from tunebench.models import DECODER_TYPES
from tunebench.optim import build_adamw, resolve_adamw
from tunebench.sharding import block_list

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

    Every method builds tunebench.classifier.Classifier, as tunebench.classifier.load_classifier does (the
    backbone without its pooler and the head, both in the checkpoint's dtype: transformers >= 5 loads a bf16
    checkpoint in bf16). full trains all of it; head freezes the backbone; lora attaches peft's adapter
    with tunebench's targets; qlora is lora on an fp32 backbone (as peft's prepare_model_for_kbit_training
    leaves the unquantized parameters) whose linear layers are replaced by `QuantizedLinear` stand-ins.
    """
    from transformers import AutoModel

    from tunebench.classifier import Classifier, drop_pooler
    from tunebench.methods.lora import attach_adapter

    weight_dtype, autocast_dtype = PRECISIONS[precision]
    config = classifier_config(config, num_labels)
    with torch.device("meta"):
        backbone = drop_pooler(_from_config(AutoModel, config, torch.float32 if method == "qlora" else weight_dtype))
        model = Classifier(backbone, num_labels, pooling)
        if method == "head":
            backbone.requires_grad_(False)
        elif method in ("lora", "qlora"):
            backbone.requires_grad_(False)
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


def quantize_base(model: nn.Module, bits: int, compute_dtype: torch.dtype) -> None:
    """Replace every frozen linear layer outside the head and pooler (bitsandbytes' skip list) in place."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}".split(".")
            if type(child) is nn.Linear and not child.weight.requires_grad and not set(path) & set(UNQUANTIZED):
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


def loop_step(model: nn.Module, optimizer, batch: dict, tracker: TensorTracker, autocast_dtype, device_type: str):
    """One optimizer step in tunebench.loop's order, under the tracker."""
    autocast = torch.autocast(device_type, autocast_dtype) if autocast_dtype else nullcontext()
    mark = tracker.mark if isinstance(tracker, TimelineTracker) else lambda phase: None
    with tracker:
        mark("forward")
        with autocast:  # Accelerate autocasts the forward only
            loss = model(**batch).loss
        mark("backward")
        loss.backward()
        mark("clip")
        tracker.classify_state()
        trainable = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        mark("optimizer")
        optimizer.step()
        tracker.classify_state()
        state = {c: tracker.current[c] for c in ("weights", "gradients", "optimizer_state")}
        optimizer.zero_grad(set_to_none=True)
    return state


def make_batch(
    batch_size: int, seq_len: int, num_labels: int, vocab_size: int, pad_token_id: int = 0, device="cpu"
) -> dict:
    """A batch padded on the right to its longest example, seq_len tokens, as the loop's collator pads it.

    The other examples are shorter (down to half), so the model applies the attention mask: the path every
    padded batch takes. Under FakeTensorMode transformers cannot see the mask's values and always takes it;
    a real batch with no padding at all drops the mask (a slightly cheaper path, see planner.validate_steps).
    """
    generator = torch.Generator().manual_seed(0)
    lengths = torch.linspace(seq_len, max(1, seq_len // 2), batch_size).round().long()
    mask = (torch.arange(seq_len) < lengths[:, None]).long()
    ids = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator).masked_fill(mask == 0, pad_token_id)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
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
    labels: list = field(default=None, repr=False)  # (phase, position) of each point (TimelineTracker)
    depths: tuple[int, ...] = ()  # the layer-stack depths traced: the model's own, or two it is extrapolated from
    independent: dict | None = None  # measured steps: the allocator's own peak {"bytes", "by", ...} (measure_step)


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
) -> StepTrace:
    """Trace AdamW's first step (which creates its state lazily) and then a full training step, all fake.

    The first step runs on zero gradients without a forward pass: it costs only the optimizer's ops and
    leaves the state exactly as a first real step would; the second step is the one the peak comes from.
    adamw: the implementation (tunebench.optim); default: the one `auto` picks on CUDA, where plans run.
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
        optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, adamw or resolve_adamw("auto", "cuda"))
        batch = make_batch(batch_size, seq_len, num_labels, config.vocab_size, config.pad_token_id or 0)
        tracker = TimelineTracker(model, optimizer)
        _label_blocks(model, tracker, config.num_hidden_layers)
        tracker.mark("init")
        with tracker:
            for param in trainable:
                param.grad = torch.zeros_like(param)
            tracker.classify_state()
            optimizer.step()
            tracker.classify_state()
            optimizer.zero_grad(set_to_none=True)
        counter = None
        if count_flops:
            counter = stack.enter_context(FlopCounter())
        state = loop_step(model, optimizer, batch, tracker, autocast_dtype, "cpu")
    return StepTrace(
        batch_size=batch_size,
        seq_len=seq_len,
        peak_bytes=tracker.peak_bytes,
        at_peak=dict(tracker.peak_breakdown),
        state=state,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=_logical_params(model),
        flops=counter.flops if counter else None,
        points=np.asarray(tracker.points, dtype=np.float64),
        labels=tracker.labels,
        depths=(config.num_hidden_layers,),
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


def trace_step_extrapolated(config, method: str, depths: tuple[int, int], **kwargs) -> StepTrace | None:
    """trace_step at the model's depth from traces of two shorter stacks; None if their points do not line up."""
    low, high = (trace_step(with_depth(config, depth), method, **kwargs) for depth in depths)
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
    from tunebench.models import load_config

    module = get_method(method)
    cfg = {
        "method_options": dict(module.DEFAULTS["method_options"]),
        "train": {"gradient_checkpointing": False},
        "pooling": None,  # what the checkpoint was trained with, as the planner's spec.pooling
        "head_dropout": None,  # the default, as the planner traces it
    }
    config = classifier_config(load_config(model_path), num_labels)
    task = SimpleNamespace(label_names=[str(i) for i in range(num_labels)], num_labels=num_labels)
    tokenizer = SimpleNamespace(pad_token_id=config.pad_token_id)
    model = module.build(model_path, task, tokenizer, cfg, device)
    if method != "qlora":  # quantized models are placed by their device_map
        model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, resolve_adamw("auto", device.type))
    batch = make_batch(batch_size, seq_len, num_labels, config.vocab_size, config.pad_token_id or 0, device)
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
