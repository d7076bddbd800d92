"""Run by tests/test_sharding.py under torchrun (two gloo CPU processes): each case's model prepared with its AdamW
through Accelerate's own FSDP2 path (Accelerator.prepare -> fsdp2_prepare_model), the plugin built from the shipped
configs/accelerate YAML as `accelerate launch` reads it, and trained in the loop's order, measured by the CPU
allocator; then the same method under torch DDP.

Accelerate does not engage FSDP on the CPU (its state only becomes FSDP on GPU-like devices): the one thing set by
hand here is that state (fsdp_plugin, distributed_type, the plugin's mixed precision), as AcceleratorState sets it
under `accelerate launch --config_file fsdp2.yaml`. Everything from prepare on is Accelerate's and torch's code.

Each rank writes OUT/rank-RANK.json: per case ("method/precision/task_type"), `load_peak_bytes` (the allocator's peak
from building the model through prepare), `peak_bytes` (each of three steps after the first, on top of the shards,
buffers and AdamW state live before it), `restore_matches` (the loop's best-step snapshot and restore bring every
rank's shards back), `reload_matches` (rank 0: the loop's save under FSDP2, from the state dict gathered from the
shards, reloads equal) and `ddp_peak_bytes` (fp32 cases: the same method under torch DDP, wrapping and two steps).
Usage: fsdp_two_process.py MODEL_FOLDER CASES(comma-separated method/precision/task_type) BATCH SEQ_LEN OUT
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from torch.nn.parallel import DistributedDataParallel

from tunebench.files import CONFIG_DIR
from tunebench.measure import ProfiledPeak
from tunebench.methods import get_method
from tunebench.models.hub import load_config
from tunebench.models.params import decay_param_groups
from tunebench.models.precision import RULES, apply_rule
from tunebench.optim import build_adamw, resolve_adamw
from tunebench.planner.tracing import LR, MAX_GRAD_NORM, WEIGHT_DECAY, make_batch, method_cfg
from tunebench.training.checkpoint import _local, restore, save, trainable_state

model_path, cases, batch_size, seq_len, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
config = load_config(model_path)
adamw = resolve_adamw("auto", "cpu")


def launch_env(config_file: Path) -> dict[str, str]:
    """The FSDP_* variables `accelerate launch --config_file config_file` gives every process (the plugin reads
    them), by Accelerate's own launcher code."""
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "unused.py"])
    args, _, _ = _validate_launch_command(args)
    args.main_process_port = 1  # only read for the rendezvous variables, not used here
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith("FSDP_")}


def fsdp_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator whose state is FSDP2 with the plugin fsdp2.yaml describes, as AcceleratorState makes it."""
    AcceleratorState._reset_state()  # a run's precision is set once per state; the process group stays
    os.environ.update(launch_env(CONFIG_DIR / "accelerate" / "fsdp2.yaml"))
    accelerator = Accelerator(mixed_precision=mixed_precision)
    plugin = FullyShardedDataParallelPlugin()
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState records it
    assert accelerator.is_fsdp2
    return accelerator


def build(method: str, precision: str, task_type: str) -> tuple:
    """The method's model with the precision rule applied and its AdamW, as the loop's setup makes them."""
    torch.manual_seed(0)
    module = get_method(method)
    cfg = method_cfg(dict(module.DEFAULTS["method_options"]), None, False, task_type, precision)
    model = apply_rule(module.build(model_path, 2, cfg, torch.device("cpu")), precision)
    model.train()
    return module, cfg, model, build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, adamw)


def train_step(accelerator, model, optimizer, batch: dict) -> None:
    """The loop's order (tunebench.training.fit): forward, backward, clip, AdamW, zero the gradients."""
    loss = model(**batch).loss
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_ddp(method: str, task_type: str, batch: dict) -> int:
    """The peak from wrapping in DDP (Accelerate's defaults: bucket_cap_mb 25, no gradient views; the reducer
    allocates its buckets then) through two steps, on top of the parameters and buffers."""
    _, _, model, _ = build(method, "fp32", task_type)
    with ProfiledPeak([*model.parameters(), *model.buffers()]) as allocator:
        wrapped = DistributedDataParallel(model)
        optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, adamw)
        for _ in range(2):
            loss = wrapped(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return allocator.peak_bytes


def measure(case: str) -> dict:
    method, precision, task_type = case.split("/")
    accelerator = fsdp_accelerator(RULES[precision].accelerate)
    batch = make_batch(batch_size, seq_len, 2, config.vocab_size, config.pad_token_id or 0, task_type=task_type)
    module, cfg, model, optimizer = build(method, precision, task_type)
    # sharding: the whole model stays on every rank until its shards are made (cpu_ram_efficient_loading off)
    with ProfiledPeak([*model.parameters(), *model.buffers()]) as loading:
        model, optimizer = accelerator.prepare(model, optimizer)
    # The first step initializes FSDP lazily and creates AdamW's state; the allocator is read over each of the next
    # three, on top of what then stays live through them.
    train_step(accelerator, model, optimizer, batch)
    shards = [_local(p) for p in model.parameters()]
    state = [_local(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    peaks = []
    for _ in range(3):
        with ProfiledPeak([*shards, *model.buffers(), *state]) as allocator:
            train_step(accelerator, model, optimizer, batch)
        peaks.append(allocator.peak_bytes)
    # Keep the best step as the loop does (each rank its shards), train on, restore: the shards come back.
    best = trainable_state(model)
    train_step(accelerator, model, optimizer, batch)
    restore(model, best)
    restore_matches = all(torch.equal(_local(p), best[n]) for n, p in model.named_parameters() if p.requires_grad)
    # The loop's save under FSDP2: every rank gathers the whole state dict, rank 0 saves what the method keeps.
    folder = Path(out, case.replace("/", "-"))
    save(module, model, folder, accelerator)
    reload_matches = None
    if accelerator.is_main_process:
        gathered = accelerator.get_state_dict(model)
        again = module.load(str(folder), model_path, 2, cfg, torch.device("cpu")).state_dict()
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        reload_matches = all(torch.equal(again[n].to(gathered[n].dtype), gathered[n]) for n in trained)
    else:
        accelerator.get_state_dict(model)  # every rank takes part in the gather
    record = {
        "load_peak_bytes": loading.peak_bytes,
        "peak_bytes": peaks,
        "adamw": adamw,
        "restore_matches": restore_matches,
        "reload_matches": reload_matches,
        "ddp_peak_bytes": measure_ddp(method, task_type, batch) if precision == "fp32" else None,
    }
    accelerator.free_memory()  # the next case starts from nothing of this one
    gc.collect()
    return record


dist.init_process_group("gloo")
records = {case: measure(case) for case in cases.split(",")}
Path(out, f"rank-{dist.get_rank()}.json").write_text(json.dumps(records))
dist.destroy_process_group()
