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

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    unset_fake_temporarily,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from tunebench.data.generate import IGNORE
from tunebench.errors import UserError
from tunebench.measure import CATEGORIES, TensorTracker
from tunebench.methods import get_method
from tunebench.models.blocks import block_list
from tunebench.models.meta import QuantizedLinear
from tunebench.models.params import decay_param_groups
from tunebench.models.precision import RULES, apply_rule
from tunebench.optim import build_optimizer, resolve_adamw

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


def method_cfg(
    options: dict, pooling: str | None, gradient_checkpointing: bool, task_type: str, precision: str = "fp32"
) -> dict:
    """The parts of a run's config that a method's build and build_meta read (precision: a rule, for qlora's
    compute dtype at load)."""
    return {
        "method_options": options,
        "pooling": pooling,
        "head_dropout": None,  # the default
        "train": {"gradient_checkpointing": gradient_checkpointing, "precision": precision},
        "data": {"task_type": task_type},
    }


def trains_with(method: str, options: dict, task_type: str, gradient_checkpointing: bool = False) -> bool:
    """Can the method train with these settings (its check_settings, which the config's build asks): prompt learning
    refuses the classifier, prefix tuning gradient checkpointing."""
    check = getattr(get_method(method), "check_settings", None)
    try:
        check and check(method_cfg(options, None, gradient_checkpointing, task_type))
    except UserError:
        return False
    return True


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
    """The method's model on the meta device (its build_meta: same modules, same trainable set), with the precision
    rule's dtypes applied and gradient checkpointing enabled as the loop does after build."""
    cfg = method_cfg(options, pooling, gradient_checkpointing, task_type, precision)
    with torch.device("meta"):
        model = apply_rule(get_method(method).build_meta(config, num_labels, cfg, precision), precision)
    if gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.train()
    return model


def attention_implementation(model: nn.Module) -> str:
    return next(m.config._attn_implementation for m in model.modules() if hasattr(m, "config"))


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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # VBLoRA checks before each training forward that its logits hold no infinity (a state resumed from a top-k
        # save): `if logits[0, 0].isinf().any()`, a branch on a value, which fake tensors do not have. A one-element
        # boolean read is answered False, as in any fresh run. Any other read of a value still fails the trace (and
        # any step traced before this answer read none: it would have failed), so no other plan changes.
        if func is aten._local_scalar_dense.default and args[0].dtype == torch.bool and args[0].numel() == 1:
            return False
        return super().__torch_dispatch__(func, types, args, kwargs)

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
            # a tuple's first item is the hidden states; another output (peft's SHADOW carrier) is left unlabelled
            on_gradient(output[0] if isinstance(output, (tuple, list)) else output, k)
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
    a real batch with no padding at all drops the mask (a slightly cheaper path, see planner.validate.validate_steps).
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
    autocast_dtype = RULES[precision].autocast
    with _traceable(method):
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
    with FakeTensorMode(allow_non_fake_inputs=True), ExitStack() as stack, _traceable(method), _one_op_block_diag():
        _to_empty_tied(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # bitsandbytes computes its quantization maps from Python numbers: built outside fake mode
        with unset_fake_temporarily() if optimizer != "adamw" else nullcontext():
            step_optimizer = build_optimizer(
                decay_param_groups(model, WEIGHT_DECAY), LR, optimizer, adamw or resolve_adamw("auto", "cuda")
            )
        batch = make_batch(batch_size, seq_len, num_labels, config.vocab_size, pad_id(config), task_type=task_type)
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


@contextmanager
def _traceable(method: str) -> Iterator[None]:
    """A model that cannot be built on the meta device or stepped with fake tensors (WaveFT branches on a tensor's
    value, UniLoRA calls an op with no meta kernel) is one line saying so, not the trace's error (which may not
    pickle out of the trace pool)."""
    try:
        yield
    except (DataDependentOutputException, DynamicOutputShapeException) as exc:
        raise UserError(
            f"{method} cannot be planned: its training step depends on a tensor's values ({exc.func}), which the "
            "planner's fake-tensor trace cannot know"
        ) from None
    except NotImplementedError as exc:
        raise UserError(
            f"{method} cannot be planned: it cannot be built or stepped without real weights "
            f"({str(exc).splitlines()[0][:120]})"
        ) from None


class _BlockDiagonal(torch.autograd.Function):
    """torch.block_diag(*blocks.unbind()) of a (d, h, h) tensor in a few ops, with the same allocations: the (d h, d h)
    output, saving nothing; in backward, the blocks of the gradient as one new (d, h, h) tensor (unbind's backward
    stacks the slices block_diag's backward takes)."""

    @staticmethod
    def forward(blocks: torch.Tensor) -> torch.Tensor:
        d, h, _ = blocks.shape
        out = blocks.new_zeros(d * h, d * h)
        out.view(d, h, d, h).diagonal(dim1=0, dim2=2).copy_(blocks.permute(1, 2, 0))
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.blocks_shape = inputs[0].shape

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        d, h, _ = ctx.blocks_shape
        return grad.view(d, h, d, h).diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()


@contextmanager
def _one_op_block_diag() -> Iterator[None]:
    """While tracing, torch.block_diag of the unbound blocks of one tensor (BOFT's rotation: 1024 blocks of 4 x 4 per
    adapted 4096-wide layer) is _BlockDiagonal: block_diag's backward takes two slices per block, each a fake-tensor
    dispatch (8,000 in a 2-layer Llama-3.1-8B trace, which took 3 s instead of 0.8); the trace's points are the same."""
    original = torch.block_diag

    def block_diag(*tensors: torch.Tensor) -> torch.Tensor:
        base = tensors[0]._base if tensors else None
        unbound = (
            base is not None
            and base.dim() == 3
            and base.is_contiguous()
            and base.shape[1] == base.shape[2]
            and len(tensors) == base.shape[0]
            and all(
                t._base is base
                and t.shape == base.shape[1:]
                and t.stride() == base.stride()[1:]
                and t.storage_offset() == base.storage_offset() + i * base.stride(0)
                for i, t in enumerate(tensors)
            )
        )
        return _BlockDiagonal.apply(base) if unbound else original(*tensors)

    torch.block_diag = block_diag
    try:
        yield
    finally:
        torch.block_diag = original


def _to_empty_tied(model: nn.Module) -> None:
    """model.to_empty(device="cpu") that keeps tied parameters tied (an LM head sharing the input embeddings).

    Module._apply gives each module holding a parameter its own new Parameter when the new tensor's type differs
    from the old one's, as a fake tensor's does from a meta tensor's: a tied weight would count twice. And it
    recurses into children: a module that is the child of two (peft's prompt learning holds the input embeddings
    as its word_embeddings too) would be converted twice, which fails; so each module is converted once, alone.
    """
    holders: dict[nn.Parameter, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                holders.setdefault(param, []).append((module, name))
    for module in model.modules():
        module._apply(lambda t: torch.empty_like(t, device="cpu"), recurse=False)  # what to_empty applies
    for (first, first_name), *others in holders.values():
        for module, name in others:
            module._parameters[name] = first._parameters[first_name]


def pad_id(config) -> int:
    """The token id make_batch pads with: the config's pad token, else 0."""
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
