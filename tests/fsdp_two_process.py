"""Run by tests/test_sharding.py under torchrun (two gloo CPU processes): two training steps of a method's model
under torch's own FSDP2 (`fully_shard` on every transformer block, then the root), measured by the CPU allocator.

Each rank writes OUT/rank-RANK.json: per method, its peak bytes in each of three steps after the first
(torch.profiler's alloc/free events on top of the shards, buffers and AdamW state live before it) and the AdamW
implementation it stepped with; `restore_matches`: the loop's best-step snapshot and restore bring every rank's
shards back; then the method saves from the whole state dict gathered from the shards, as the
loop does under FSDP2, and rank 0 reloads it: `reload_matches` says whether every trained tensor came back equal.
`ddp_peak_bytes`: the same method under torch DDP instead, the peak over wrapping and two steps.
Usage: fsdp_two_process.py MODEL_FOLDER METHODS(comma-separated) BATCH_PER_RANK SEQ_LEN OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from tunebench.measure import ProfiledPeak
from tunebench.methods import get_method
from tunebench.models.blocks import block_list
from tunebench.models.hub import load_config
from tunebench.models.meta import classifier_config
from tunebench.models.params import decay_param_groups
from tunebench.optim import build_adamw, resolve_adamw
from tunebench.planner.tracing import LR, MAX_GRAD_NORM, WEIGHT_DECAY, make_batch, method_cfg
from tunebench.training.checkpoint import restore, trainable_state

model_path, methods, batch_size, seq_len, out = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
    sys.argv[5],
)
dist.init_process_group("gloo")
rank = dist.get_rank()
config = classifier_config(load_config(model_path), 2)
batch = make_batch(batch_size, seq_len, 2, config.vocab_size, config.pad_token_id or 0)
adamw = resolve_adamw("auto", "cpu")


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def build(method: str) -> tuple:
    torch.manual_seed(0)
    module = get_method(method)
    cfg = method_cfg(dict(module.DEFAULTS["method_options"]), None, False, "classify")
    model = module.build(model_path, 2, cfg, torch.device("cpu"))
    model.train()
    return module, cfg, model


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_ddp(method: str) -> int:
    """The peak from wrapping in DDP (Accelerate's defaults: bucket_cap_mb 25, no gradient views; the reducer
    allocates its buckets then) through two steps, on top of the parameters and buffers."""
    _, _, model = build(method)
    with ProfiledPeak([*model.parameters(), *model.buffers()]) as allocator:
        wrapped = DistributedDataParallel(model)
        optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, adamw)
        for _ in range(2):
            train_step(wrapped, optimizer)
    return allocator.peak_bytes


def measure(method: str) -> dict:
    module, cfg, model = build(method)
    for block in block_list(model, config.num_hidden_layers):
        fully_shard(block)
    fully_shard(model)
    optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, adamw)
    # The first step initializes FSDP lazily (it replaces every shard with a padded copy) and creates AdamW's
    # state; the allocator is read over each of the next three, on top of what then stays live through them.
    train_step(model, optimizer)
    shards = [local(p) for p in model.parameters()]
    state = [local(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    peaks = []
    for _ in range(3):
        with ProfiledPeak([*shards, *model.buffers(), *state]) as allocator:
            train_step(model, optimizer)
        peaks.append(allocator.peak_bytes)
    # Keep the best step as the loop does (each rank its shards), train on, restore: the shards come back.
    best = trainable_state(model)
    train_step(model, optimizer)
    restore(model, best)
    restore_matches = all(torch.equal(local(p), best[n]) for n, p in model.named_parameters() if p.requires_grad)
    # Save as the loop does under FSDP2: every rank gathers (Accelerate's get_state_dict options), rank 0 saves.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    state_dict = get_model_state_dict(model, options=options)
    reload_matches = None
    if rank == 0:
        folder = Path(out, method)
        module.save(model, str(folder), state_dict=state_dict)
        reloaded = module.load(str(folder), model_path, 2, cfg, torch.device("cpu"))
        again = reloaded.state_dict()
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        reload_matches = all(torch.equal(again[n], state_dict[n]) for n in trained)
    return {
        "peak_bytes": peaks,
        "adamw": adamw,
        "restore_matches": restore_matches,
        "reload_matches": reload_matches,
        "ddp_peak_bytes": measure_ddp(method),
    }


records = {method: measure(method) for method in methods.split(",")}
Path(out, f"rank-{rank}.json").write_text(json.dumps(records))
dist.destroy_process_group()
