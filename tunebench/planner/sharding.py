"""Per-rank memory on N GPUs under DDP or FSDP2, from the traced single-device step (planner.tracing).

The batch size is each rank's micro-batch (Accelerate gives every process whole batches), so a rank's
activations are the single-device trace's at that batch. What changes is where the state lives; each of the
trace's points (the category totals at every new storage, labelled with the block running) is rewritten, as
torch 2.13 allocates (read in torch/nn/parallel/distributed.py and torch/distributed/fsdp/_fully_shard/, and
checked against both on two gloo CPU processes in tests/test_sharding.py):

- DDP (DistributedDataParallel as Accelerate builds it: bucket_cap_mb=25, gradient_as_bucket_view=False):
  every rank holds the whole model, its gradients and AdamW state, plus the reducer's flat gradient buckets,
  allocated when the model is wrapped and as large as the trainable parameters together (the 25 MB cap only
  splits them): one more copy of the gradients for the whole run, counted as buffers. Wrapping first
  broadcasts rank 0's weights in flat chunks of up to 250 MiB (broadcast_bucket_size) plus one tensor.
- FSDP2 (`fully_shard` on every transformer block, then on the root, reshard_after_forward=True, default
  prefetching): weights, gradients and AdamW state divided by N, plus whole copies: the root's parameters
  (embeddings, final norm, head) from the start of forward to the end of backward (the root is not resharded
  after forward), with its all-gather output too until the first block copies out; in forward the running
  block and its all-gather output, held until the next block copies out (three blocks then); in backward the
  running block and the prefetched one before it. A group's gradients are whole until its reduce-scatter,
  which holds them, the flat input and the output shard at once (gloo also clones the input, NCCL does not:
  there it is over by one shard of the group's gradients); the last flat input is held until the next
  group's reduce (reduce_scatter_max_input_buffers=1). Clipping and AdamW work on the shards.
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


def state_layout(model: nn.Module, num_layers: int) -> dict[str, int]:
    """Bytes of one block's parameters and of the rest (the root), all and trainable, and of the largest parameter,
    of a built (meta) model."""
    blocks = block_list(model, num_layers)
    first = {id(p) for p in blocks[0].parameters()} if blocks is not None else set()
    in_blocks = {id(p) for p in blocks.parameters()} if blocks is not None else set()
    layout = dict.fromkeys(("block_weights", "block_trainable", "root_weights", "root_trainable", "largest_weight"), 0)
    for param in model.parameters():
        if id(param) in in_blocks and id(param) not in first:
            continue
        where = "block" if id(param) in first else "root"
        nbytes = param.numel() * param.element_size()
        layout["largest_weight"] = max(layout["largest_weight"], nbytes)
        layout[f"{where}_weights"] += nbytes
        layout[f"{where}_trainable"] += nbytes if param.requires_grad else 0
    return layout


def per_rank_points(
    points: np.ndarray, labels: list, layout: dict, state: dict, strategy: str, gpus: int
) -> np.ndarray:
    """The trace's points (n x CATEGORIES, bytes) as one rank of `gpus` holds them under the strategy.

    labels: each point's (phase, position), position a block index or "pre"/"post"; a depth-extrapolated
    trace's keys (phase, "first"|"last", index) name a block too (extrapolate.extrapolate_depth). state: the step's
    full-size weights and gradients (StepTrace.state). One point is added: under DDP, wrapping the model; under
    FSDP, the root's reduce-scatter at the end of backward.
    """
    points = points.astype(np.float64).copy()
    col = {c: CATEGORIES.index(c) for c in CATEGORIES}
    if strategy == "ddp":
        points[:, col["buffers"]] += state["gradients"]
        # Wrapping broadcasts rank 0's weights in flat chunks (DDP's broadcast_bucket_size, 250 MiB, filled until
        # it is reached, so up to one tensor more), before the reducer allocates its buckets.
        wrap = np.zeros(len(CATEGORIES))
        wrap[col["weights"]] = state["weights"]
        wrap[col["other"]] = min(state["weights"], DDP_BROADCAST_BYTES + layout["largest_weight"])
        return np.vstack([wrap, points])
    n = gpus
    block_w, block_g = layout["block_weights"], layout["block_trainable"]
    root_w, root_g = layout["root_weights"], layout["root_trainable"]
    out = points.copy()
    out[:, col["weights"]] /= n
    out[:, col["optimizer_state"]] /= n
    grads = points[:, col["gradients"]]
    out[:, col["gradients"]] = grads / n
    root_before = blocks_end = 0.0  # backward: root gradients before the blocks (head, final norm); all, after them
    block_entry = None
    last_backward = None
    for i, label in enumerate(labels):
        phase, position = label[0], label[1]
        block = isinstance(position, int) or position in ("first", "last")
        first_block = position == 0 or label[1:] == ("first", 0)  # the first block in forward order
        new_block = i == 0 or labels[i - 1] != label
        last_of_block = i + 1 == len(labels) or labels[i + 1] != label
        gathered = 0.0
        if phase == "forward":
            if not block:  # "post": the last block's all-gather output is held until forward ends
                gathered = 2 * root_w if position == "pre" else root_w + block_w
            else:  # the block running, whole, and its all-gather output; while it copies out, the one before's
                gathered = root_w + 2 * block_w + ((root_w if first_block else block_w) if new_block else 0)
        elif phase == "backward":
            last_backward = i
            if not block:  # "pre": the last block is being prefetched; "post": every block resharded
                gathered = root_w + (block_w if position == "pre" else 0)
                if position == "pre":
                    root_before = grads[i]
                    out[i, col["gradients"]] = grads[i]
                else:  # the first block's reduce-scatter input is held; the root's gradients are whole
                    out[i, col["gradients"]] = root_before + grads[i] - blocks_end + (blocks_end - root_before) / n
                    out[i, col["gradients"]] += block_g
            else:  # the block running, whole, and the one before it prefetched (none before the first)
                gathered = root_w + block_w * (1 if first_block else 2)
                if new_block:
                    block_entry = grads[i]
                done = block_entry - root_before  # blocks finished before this one, whole in the trace
                value = root_before + done / n + grads[i] - block_entry
                if last_of_block:  # its reduce-scatter: whole gradients + flat input + output shard
                    value = root_before + done / n + block_g * (2 + 1 / n)
                elif done > 0:  # the previous block's reduce-scatter input, held until this one reduces
                    value += block_g
                out[i, col["gradients"]] = value
                blocks_end = grads[i]
        elif phase in STEP_PHASES:
            out[i, col["other"]] /= n
        out[i, col["weights"]] += gathered
    if last_backward is None:
        return out
    # the root's reduce-scatter, after its parameters are resharded: its whole gradients, input and output shard
    reduce = points[last_backward].copy()
    reduce[col["weights"]] /= n
    reduce[col["optimizer_state"]] /= n
    reduce[col["gradients"]] = (state["gradients"] - root_g) / n + root_g * (2 + 1 / n)
    return np.vstack([out, reduce])


@dataclass
class Sharding:
    """How the planned run spreads over GPUs, and one block's and the root's parameter bytes (state_layout)."""

    strategy: str
    gpus: int
    layout: dict

    def step(self, step):
        """The traced single-device step (tracing.StepTrace) as one rank holds it."""
        points = per_rank_points(step.points, step.labels, self.layout, step.state, self.strategy, self.gpus)
        index = len(points) - 1 - int(points.sum(1)[::-1].argmax())  # the last of equal maxima, as TensorTracker
        divide = self.gpus if self.strategy == "fsdp" else 1
        return replace(
            step,
            peak_bytes=int(points[index].sum()),
            at_peak={c: int(v) for c, v in zip(CATEGORIES, points[index], strict=True)},
            state={c: v // divide for c, v in step.state.items()},
            points=points,
            labels=[("setup", "ddp wrap"), *step.labels]
            if self.strategy == "ddp"
            else [*step.labels, ("backward", "root reduce-scatter")],
        )


def make_sharding(config, method: str, gpus: int | None, strategy: str | None, **build) -> Sharding | None:
    """The Sharding for gpus and strategy (None on one GPU), after checking that it can be planned.

    build: build_meta_model's keywords for the method's model (precision, options, num_labels, pooling).
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
    layout = state_layout(build_meta_model(with_depth(config, 1), method, **build), 1)
    return Sharding(strategy, gpus, layout)


def sharding_assumptions(gpus: int | None, strategy: str | None) -> list[str]:
    """The plan's assumption lines for gpus and strategy."""
    if strategy is None:
        return []
    common = f"{gpus} GPUs, {strategy}: peak memory, max batch and tok/s per GPU (--batch-size is each GPU's)"
    if strategy == "ddp":
        return [
            f"{common}; DDP's gradient buckets (bucket_cap_mb 25, not gradient views) add a gradient copy; "
            "wrapping broadcasts the weights in chunks of up to 250 MiB"
        ]
    return [
        f"{common}; FSDP2 fully_shard per block + root: weights, gradients and AdamW state / {gpus}, plus the "
        "root's whole parameters, 2-3 blocks all-gathered (current + prefetch) and reduce-scatter buffers",
        "fsdp qlora: bnb_4bit_quant_storage = fp32 (the other parameters' dtype), so the 4-bit weights shard like "
        "any parameter, same bytes; quantization constants replicated on every GPU",
        "fsdp: communication time not modelled (s/step is the compute of one GPU)",
    ]
