"""Per-rank memory on N GPUs under DDP or FSDP2, from the traced single-device step (planner.tracing).

The batch size is each rank's micro-batch (Accelerate gives every process whole batches), so a rank's
activations are the single-device trace's at that batch. What changes is where the state lives; each of the
trace's points (the category totals at every new storage, labelled with the block running) is rewritten, as
torch 2.13 and Accelerate 1.15 allocate (read in torch/nn/parallel/distributed.py, torch/distributed/fsdp/_fully_shard/
and accelerate/utils/fsdp_utils.py, and checked against both on two gloo CPU processes in tests/test_sharding.py):

- DDP (DistributedDataParallel as Accelerate builds it: bucket_cap_mb=25, gradient_as_bucket_view=False):
  every rank holds the whole model, its gradients and AdamW state, plus the reducer's flat gradient buckets,
  allocated when the model is wrapped and as large as the trainable parameters together (the 25 MB cap only
  splits them): one more copy of the gradients for the whole run, counted as buffers. Wrapping first
  broadcasts rank 0's weights in flat chunks of up to 250 MiB (broadcast_bucket_size) plus one tensor.
- FSDP2 as the loop runs it: Accelerator.prepare -> fsdp2_prepare_model with configs/accelerate/fsdp2.yaml. Its
  groups (fsdp_groups): every transformer block (TRANSFORMER_BASED_WRAP: the model's _no_split_modules); the input
  embeddings on their own (untied); a tail of the final norm and the output embeddings (with the input embeddings
  when tied), not resharded after forward; the root, the rest, not resharded either. Weights, gradients and AdamW
  state are divided by N; whole copies come on top: the root's parameters from the start of forward to the end of
  backward, the tail's from its forward to its backward (a tied tail from the start of forward to the end), in
  forward the running group and its all-gather output, held until the next group copies out (three blocks then),
  in backward the running block and the prefetched one. A group's gradients are whole until its reduce-scatter,
  which holds them, the flat input and the output shard at once (gloo also clones the input, NCCL does not); the
  last flat input is held until the next group's reduce (reduce_scatter_max_input_buffers=1). Clipping and AdamW
  work on the shards.
- FSDP2 and mixed precision: under FSDP2 Accelerate does not autocast the forward; its MixedPrecisionPolicy
  (param_dtype = reduce_dtype = the autocast dtype) all-gathers every parameter in bf16 (fp16) and computes in it,
  so the step is traced as bf16-true computes it (fsdp_trace_precision), and what the shards keep is rescaled to
  the rule's master dtype (fp32: twice the bytes of the trainable weights, their gradients and AdamW state). The fp32
  upcast fsdp2_prepare_model applies to trainable parameters under mixed precision changes nothing here: the
  precision rule has made them fp32 already (bf16-true runs with mixed_precision "no": no upcast, no policy).
- Loading (cpu_ram_efficient_loading false, the shipped configs): every rank builds the whole model, and
  fsdp2_prepare_model keeps it (its state_dict) until every group is sharded. Full and LoRA models are built in host
  RAM (the whole model once per process) and fully_shard moves one group at a time to the GPU to shard it
  (_move_states_to_device): the shards plus the largest group, whole. A quantized model (qlora) is built on the GPU
  (bitsandbytes quantizes as the weights land there): the whole model plus its shards. Either is a point of its own
  before the step; on the CPU (gloo, the test) every model is built on its device.
- QLoRA under FSDP: the 4-bit weights shard like any parameter when bitsandbytes stores them in a float
  dtype (`bnb_4bit_quant_storage`, fp32 in tunebench's qlora under FSDP, the dtype of the other parameters):
  the packed bytes are the same, so the trace's storage stands; the quantization constants stay on every rank.

Shards are padded to a multiple of N rows; the padding is ignored here (under a row per parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from tunebench.errors import UserError
from tunebench.measure import CATEGORIES
from tunebench.methods import get_method
from tunebench.models.blocks import block_list
from tunebench.models.meta import QuantizedLinear
from tunebench.models.precision import RULES, dtype_name
from tunebench.planner.extrapolate import with_depth
from tunebench.planner.tracing import build_meta_model, method_cfg

STRATEGIES = ("ddp", "fsdp")
STEP_PHASES = ("clip", "optimizer")  # phases that work on the shards only
DDP_BROADCAST_BYTES = 250 * 2**20  # torch DistributedDataParallel's broadcast_bucket_size


def check_sharding(gpus: int | None, strategy: str | None, num_layers: int) -> None:
    """One-line errors for a sharding the planner cannot honour, before anything is traced."""
    if strategy is None and gpus is None:
        return
    if gpus is None:
        raise UserError(f"strategy {strategy!r} needs a number of GPUs (gpus) to spread over")
    if gpus < 1:
        raise UserError(f"the number of GPUs (gpus) must be at least 1, got {gpus}")
    if strategy is None:
        if gpus > 1:
            raise UserError(f"{gpus} GPUs need a strategy: one of {', '.join(STRATEGIES)}")
        return
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp" and gpus > num_layers:
        raise UserError(
            f"{gpus} GPUs is more than the model's {num_layers} layers: fsdp plans a block-by-block wrap "
            f"on at most one GPU per block; plan {num_layers} GPUs or fewer, or strategy ddp"
        )


def fsdp_trace_precision(precision: str) -> str:
    """The rule whose trace is the step FSDP2 computes under `precision`: a mixed rule's MixedPrecisionPolicy casts
    every parameter to its autocast dtype and no autocast runs, as bf16-true computes (fp16 has the same sizes)."""
    return "bf16-true" if RULES[precision].autocast is not None else precision


def fsdp_groups(model: nn.Module, num_layers: int) -> dict[str, list[nn.Module]]:
    """The modules of each FSDP2 group Accelerate's fsdp2_prepare_model forms, by its own rules: the transformer
    blocks, the input embeddings when not tied, the tail (final norm, output embeddings, and the input embeddings
    when tied); the root holds what none of them does."""
    from accelerate.utils.fsdp_utils import _find_final_norm

    blocks = block_list(model, num_layers)
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    output = getattr(model, "get_output_embeddings", lambda: None)()
    tied = embed is not None and output is not None and getattr(embed, "weight", None) is output.weight
    tail = [m for m in (_find_final_norm(model), *((embed,) if tied else ()), output) if m is not None]
    return {
        "block": [blocks[0]] if blocks is not None else [],
        "embed": [embed] if embed is not None and not tied else [],
        "tail": tail,
        "tied": [embed] if tied else [],
    }


def state_layout(model: nn.Module, num_layers: int) -> dict[str, int]:
    """Bytes of one block's parameters, of the input-embedding group's, the tail's and the rest (the root), all
    and trainable, and of the largest parameter, of a built (meta) model; `tied`: 1 when the tail holds the input
    embeddings (gathered from the start of forward)."""
    groups = fsdp_groups(model, num_layers)
    blocks = block_list(model, num_layers)
    in_blocks = {id(p) for p in blocks.parameters()} if blocks is not None else set()
    where = {}
    for name in ("tail", "embed", "block"):
        for module in groups[name]:
            where |= {id(p): name for p in module.parameters()}
    layout = {f"{g}_{k}": 0 for g in ("block", "embed", "tail", "root") for k in ("weights", "trainable")}
    layout |= {"largest_weight": 0, "tied": int(bool(groups["tied"]))}
    # bitsandbytes quantizes as the weights land on the device: such a model is whole there before it is sharded
    layout["built_on_device"] = int(any(isinstance(m, QuantizedLinear) for m in model.modules()))
    for param in model.parameters():
        group = where.get(id(param), "root")
        if id(param) in in_blocks and group != "block":
            continue  # a block other than the first
        nbytes = param.numel() * param.element_size()
        layout["largest_weight"] = max(layout["largest_weight"], nbytes)
        layout[f"{group}_weights"] += nbytes
        layout[f"{group}_trainable"] += nbytes if param.requires_grad else 0
    return layout


def _ddp_points(points: np.ndarray, layout: dict, state: dict) -> np.ndarray:
    col = {c: CATEGORIES.index(c) for c in CATEGORIES}
    points[:, col["buffers"]] += state["gradients"]
    # Wrapping broadcasts rank 0's weights in flat chunks (DDP's broadcast_bucket_size, 250 MiB, filled until
    # it is reached, so up to one tensor more), before the reducer allocates its buckets.
    wrap = np.zeros(len(CATEGORIES))
    wrap[col["weights"]] = state["weights"]
    wrap[col["other"]] = min(state["weights"], DDP_BROADCAST_BYTES + layout["largest_weight"])
    return np.vstack([wrap, points])


def _gathered(label: tuple, layout: dict, new_block: bool, first_block: bool) -> float:
    """Whole parameters (and all-gather outputs) FSDP2 holds at a point of the step, beyond the shards."""
    phase, position = label[0], label[1]
    block_w, embed_w, tail_w, root_w = (layout[f"{g}_weights"] for g in ("block", "embed", "tail", "root"))
    tied = layout["tied"]
    block = isinstance(position, int) or position in ("first", "last")
    held = root_w + (tail_w if tied else 0)  # from the start of forward to the end of backward
    # the group gathered at the embeddings: its own group, the tied tail, or (neither) the root alone
    first_group = embed_w or (tail_w if tied else root_w)
    if phase == "forward":
        if not block:
            if position == "pre":  # the embeddings run: their group whole, and its all-gather output
                return held + embed_w + first_group
            # the norm and head run: an untied tail whole with its all-gather output, else the last block's output
            return held + (2 * tail_w if not tied and tail_w else block_w)
        # the block running, whole, and its all-gather output; while it copies out, the group before's
        return held + 2 * block_w + ((first_group if first_block else block_w) if new_block else 0)
    if phase == "backward":
        if not block:  # "pre": the norm and head, the last block prefetched; "post": the embeddings, gathered again
            return held + (tail_w * (not tied) + block_w if position == "pre" else embed_w)
        return held + block_w * (1 if first_block else 2)  # the running block and the one before it, prefetched
    return 0.0


def _fsdp_points(points: np.ndarray, labels: list, layout: dict, state: dict, gpus: int, ratio: float) -> np.ndarray:
    """per_rank_points under FSDP2; ratio: the trainable state's master bytes over the trace's (2 for a mixed
    rule traced in bf16, else 1)."""
    col = {c: CATEGORIES.index(c) for c in CATEGORIES}
    n, shard = gpus, ratio / gpus
    # a reduce-scatter holds the group's whole gradients, the flat input and the output shard, and under a mixed
    # rule the output shard cast to the master dtype too
    reduce_scatter = 2 + 1 / n + (shard if ratio != 1 else 0)
    block_g = layout["block_trainable"]
    tail_g = 0 if layout["tied"] else layout["tail_trainable"]  # a tied tail reduces at the end, with the root
    end_g = layout["root_trainable"] + layout["embed_trainable"] + layout["tied"] * layout["tail_trainable"]
    grads = points[:, col["gradients"]]
    out = points.copy()
    # the shards: trace bytes / N, the trainable weights' in the master dtype
    out[:, col["weights"]] = (points[:, col["weights"]] + (ratio - 1) * state["gradients"]) / n
    out[:, col["optimizer_state"]] *= shard
    out[:, col["gradients"]] = grads * shard
    kept = blocks_end = 0.0  # backward: whole gradients kept before the blocks (a tied tail's); all, after them
    block_entry = last_backward = None
    for i, label in enumerate(labels):
        phase, position = label[0], label[1]
        block = isinstance(position, int) or position in ("first", "last")
        first_block = position == 0 or label[1:] == ("first", 0)  # the first block in forward order
        new_block = i == 0 or labels[i - 1] != label
        last_of_block = i + 1 == len(labels) or labels[i + 1] != label
        if phase == "backward":
            last_backward = i
            if position == "pre":  # the norm and head: whole, until the tail's reduce-scatter
                kept = grads[i] - tail_g
                out[i, col["gradients"]] = grads[i]
            elif not block:  # "post": the first block's reduce-scatter input held; the root's gradients whole
                done = blocks_end - kept - tail_g
                out[i, col["gradients"]] = kept + tail_g * shard + done * shard + grads[i] - blocks_end + block_g
            else:
                if new_block:
                    block_entry = grads[i]
                done = block_entry - kept - tail_g  # blocks finished before this one, whole in the trace
                value = kept + tail_g * shard + done * shard + grads[i] - block_entry
                if last_of_block:  # its reduce-scatter: whole gradients + flat input + output shard
                    value = kept + tail_g * shard + done * shard + block_g * reduce_scatter
                else:  # the previous group's reduce-scatter input (the tail's before the first block), held
                    value += block_g if done > 0 else tail_g
                out[i, col["gradients"]] = value
                blocks_end = grads[i]
        elif phase in STEP_PHASES:
            out[i, col["other"]] *= shard
        out[i, col["weights"]] += _gathered(label, layout, new_block, first_block)
    # sharding the model: the shards, and the whole model (built on the device) or the group being sharded
    whole = state["weights"] + (ratio - 1) * state["gradients"]
    groups = [
        layout[f"{g}_weights"] + (ratio - 1) * layout[f"{g}_trainable"] for g in ("block", "embed", "tail", "root")
    ]
    load = np.zeros(len(CATEGORIES))
    load[col["weights"]] = whole / n + (whole if layout["built_on_device"] else max(groups))
    if last_backward is None:
        return np.vstack([load, out])
    # the last reduce-scatters (the embeddings' and the root's), after their parameters are resharded
    reduce = out[last_backward].copy()
    reduce[col["weights"]] = (points[last_backward, col["weights"]] + (ratio - 1) * state["gradients"]) / n
    reduce[col["gradients"]] = (state["gradients"] - end_g) * shard + end_g * reduce_scatter
    return np.vstack([load, out, reduce])


def per_rank_points(
    points: np.ndarray, labels: list, layout: dict, state: dict, strategy: str, gpus: int, ratio: float = 1.0
) -> np.ndarray:
    """The trace's points (n x CATEGORIES, bytes) as one rank of `gpus` holds them under the strategy.

    labels: each point's (phase, position), position a block index or "pre"/"post"; a depth-extrapolated
    trace's keys (phase, "first"|"last", index) name a block too (extrapolate.extrapolate_depth). state: the step's
    full-size weights and gradients (StepTrace.state). Points are added: under DDP, wrapping the model first; under
    FSDP, loading the model first and the last reduce-scatters at the end of backward. ratio: see _fsdp_points.
    """
    points = points.astype(np.float64).copy()
    if strategy == "ddp":
        return _ddp_points(points, layout, state)
    return _fsdp_points(points, labels, layout, state, gpus, ratio)


@dataclass
class Sharding:
    """How the planned run spreads over GPUs, one block's and the other groups' parameter bytes (state_layout), the
    rule the step is traced in (trace_precision: fsdp_trace_precision's under fsdp) and the ratio of the trainable
    state's bytes in the run's rule to the trace's."""

    strategy: str
    gpus: int
    layout: dict
    trace_precision: str
    ratio: float = 1.0

    def step(self, step):
        """The traced single-device step (tracing.StepTrace) as one rank holds it."""
        points = per_rank_points(
            step.points, step.labels, self.layout, step.state, self.strategy, self.gpus, self.ratio
        )
        index = len(points) - 1 - int(points.sum(1)[::-1].argmax())  # the last of equal maxima, as TensorTracker
        if self.strategy == "ddp":
            state = dict(step.state)
            labels = [("setup", "ddp wrap"), *step.labels]
        else:
            trainable = {"gradients", "optimizer_state"}
            state = {c: int(v * (self.ratio if c in trainable else 1) / self.gpus) for c, v in step.state.items()}
            state["weights"] = int((step.state["weights"] + (self.ratio - 1) * step.state["gradients"]) / self.gpus)
            labels = [("setup", "fsdp load"), *step.labels]
            labels += [("backward", "last reduce-scatters")] if len(points) > len(labels) else []
        return replace(
            step,
            peak_bytes=int(points[index].sum()),
            at_peak={c: int(v) for c, v in zip(CATEGORIES, points[index], strict=True)},
            state=state,
            points=points,
            labels=labels,
        )


def make_sharding(
    config, method: str, gpus: int | None, strategy: str | None, on_host: bool = False, **build
) -> Sharding | None:
    """The Sharding for gpus and strategy (None on one GPU), after checking that it can be planned.

    build: build_meta_model's keywords for the method's model (precision, options, num_labels, pooling, task_type).
    on_host: the processes train on the CPU (gloo), where every model is built on its device (tests/test_sharding.py).
    """
    check_sharding(gpus, strategy, config.num_hidden_layers)
    if strategy is None:
        return None
    module = get_method(method)
    if hasattr(module, "check_strategy"):
        cfg = method_cfg(
            build["options"], build.get("pooling"), False, build.get("task_type", "classify"), build["precision"]
        )
        module.check_strategy(strategy, cfg)
    precision = build["precision"]
    traced = fsdp_trace_precision(precision) if strategy == "fsdp" else precision
    ratio = RULES[precision].trainable.itemsize / RULES[traced].trainable.itemsize
    layout = state_layout(build_meta_model(with_depth(config, 1), method, **(build | {"precision": traced})), 1)
    layout["built_on_device"] |= int(on_host)
    return Sharding(strategy, gpus, layout, traced, ratio)


def sharding_assumptions(gpus: int | None, strategy: str | None, precision: str = "fp32") -> list[str]:
    """The plan's assumption lines for gpus, strategy and the run's precision rule."""
    if strategy is None:
        return []
    common = f"{gpus} GPUs, {strategy}: peak memory, max batch and tok/s per GPU (--batch-size is each GPU's)"
    nccl = "device bytes add NCCL's buffers (nccl_gib, configs/planner/gpus.yaml) to the CUDA context"
    if strategy == "ddp":
        return [
            f"{common}; DDP's gradient buckets (bucket_cap_mb 25, not gradient views) add a gradient copy; "
            "wrapping broadcasts the weights in chunks of up to 250 MiB",
            nccl,
        ]
    lines = [
        f"{common}; FSDP2 as Accelerate's fsdp2_prepare_model wraps (configs/accelerate/fsdp2.yaml): every block, "
        "the input embeddings, the final norm + LM head, the root; weights, gradients and AdamW state / "
        f"{gpus}, plus the whole parameters of the groups running or held, all-gather outputs and reduce-scatter "
        "buffers",
        "fsdp loading (cpu_ram_efficient_loading false): every process builds the whole model in host RAM (qlora: "
        "on its GPU, quantized) and shards it group by group: its shards plus the largest group (qlora: the whole "
        "model) on each GPU, a point of the plan",
        "fsdp qlora: bnb_4bit_quant_storage = fp32 (the other parameters' dtype), so the 4-bit weights shard like "
        "any parameter, same bytes; quantization constants replicated on every GPU",
        "fsdp: communication time not modelled (s/step is the compute of one GPU)",
        nccl,
    ]
    traced = fsdp_trace_precision(precision)
    if traced != precision:
        lines.insert(1, f"fsdp {precision}: no autocast; FSDP2's MixedPrecisionPolicy all-gathers and computes every "
                     f"parameter in {dtype_name(RULES[precision].autocast)} (traced as {traced}), the shards keep "
                     "the rule's dtypes (trainable weights, gradients and AdamW state fp32)")  # fmt: skip
    return lines
