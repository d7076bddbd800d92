"""A run's parts, made in dependency order: data -> (generate tasks: forgetting's loss on the unmodified
checkpoint) -> model -> optimizer (prepared together) -> loaders -> schedule -> trackers. The order is also the
order in which random numbers are drawn (the seed first, then the model's new weights, then the samplers), so it
is part of what a run measures."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from tunebench import optim
from tunebench.config import flatten
from tunebench.data.tasks import load_capped
from tunebench.measure import StepMeter
from tunebench.methods import describe as describe_method
from tunebench.methods import get_method
from tunebench.metrics import load_extra
from tunebench.models.classifier import resolve_pooling
from tunebench.models.hub import load_pretrained
from tunebench.models.params import count_parameters, decay_param_groups
from tunebench.models.precision import apply_rule, describe, resolve_rule
from tunebench.training.args import TrainArgs
from tunebench.training.kinds import TaskKind, task_kind

log = logging.getLogger("tunebench")


@dataclass
class Setup:
    """Everything the step loop works with."""

    args: TrainArgs
    accelerator: Accelerator
    method: object  # the method (tunebench.methods): what trains and what is saved
    kind: TaskKind
    task_name: str
    meter: StepMeter
    model: object  # prepared
    optimizer: object  # prepared
    trainable: int  # trainable parameters; 0: nothing trains (the none baseline)
    train_loader: object  # prepared
    micro_batches_per_epoch: int
    total_steps: int
    scheduler: object
    after_step: Callable[[int], None] | None  # the method's step_hook: called after each optimizer step
    extra_metrics: list  # extra `evaluate` metrics, for classification


def prepare(args: TrainArgs, accelerator: Accelerator, result: dict) -> Setup:
    """Make every part of the run; result gains the task, model, parameter counts and optimizer."""
    set_seed(args.seed)  # first: everything below that draws random numbers draws them from here
    method = get_method(args.method)
    if accelerator.is_fsdp2 and hasattr(method, "check_strategy"):
        method.check_strategy("fsdp", args.config)
    # Data before the model: a bad task, file or column fails before any model is loaded.
    task, model_path, kind = _data(args, method, accelerator, result)
    # Before the meter: the unmodified checkpoint's copy (forgetting's baseline) is no part of the method's memory.
    kind.before_model(accelerator)
    meter = StepMeter(accelerator.device)  # on CUDA: resets the peak statistics before the model loads
    # The model next: its shape needs the task's labels, the optimizer needs its parameters.
    model, optimizer, trainable = _model_and_optimizer(args, method, task, model_path, accelerator, result)
    meter.model_loaded()
    kind.model_ready(model, accelerator, result)
    # Loaders after the model: cached features are the prepared model's output over each split.
    train_loader = kind.train_loader(model, accelerator, meter)
    # The schedule last: its length is counted on this process's shard of the prepared loader's batches.
    micro_batches_per_epoch = len(train_loader)
    total_steps, scheduler = _schedule(args, optimizer, micro_batches_per_epoch)
    hook = getattr(method, "step_hook", None)
    after_step = hook(accelerator.unwrap_model(model), total_steps) if hook else None
    result["method"] = describe_method(args.method, accelerator.unwrap_model(model))  # once the hook set its steps
    extra_metrics = load_extra(args.metrics)
    # trackers take flat scalar hyper-parameters
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(args.config).items()}
    accelerator.init_trackers("tunebench", config=hparams)
    return Setup(
        args=args,
        accelerator=accelerator,
        method=method,
        kind=kind,
        task_name=task.name,
        meter=meter,
        model=model,
        optimizer=optimizer,
        trainable=trainable,
        train_loader=train_loader,
        micro_batches_per_epoch=micro_batches_per_epoch,
        total_steps=total_steps,
        scheduler=scheduler,
        after_step=after_step,
        extra_metrics=extra_metrics,
    )


def _data(args: TrainArgs, method, accelerator: Accelerator, result: dict):
    """The task (capped), the model's files and tokenizer, and the task kind holding the tokenized splits."""
    task = load_capped(args.task, args.data)
    model_path, model_config, tokenizer = load_pretrained(args.model)
    kind = task_kind(args, method, tokenizer)
    with accelerator.main_process_first():
        kind.encode(task, model_path, model_config, result)
    result["task"] = {
        "name": task.name,
        "num_labels": task.num_labels,
        "sizes": {name: len(split) for name, split in kind.encoded.items()},
    }
    result["model"] = {"name": args.model, "path": model_path, "model_type": model_config.model_type}
    if args.config["data"]["task_type"] == "classify":  # what ran: a null config means the checkpoint's own
        result["model"]["pooling"] = resolve_pooling(args.config["pooling"], model_path, model_config)
    return task, model_path, kind


def _model_and_optimizer(args: TrainArgs, method, task, model_path: str, accelerator: Accelerator, result: dict):
    """The method's model (it decides what trains) and its optimizer, prepared together."""
    device = accelerator.device
    model = method.build(model_path, task.num_labels, args.config, device)
    # The run's precision rule, once for every method, on what the method made trainable (before the optimizer:
    # its state takes the master weights' dtype). The result records the dtypes the parameters then have.
    rule = resolve_rule(args.precision, device)
    apply_rule(model, rule)
    result["precision"] = describe(model, rule)
    if args.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    trainable, total = count_parameters(model)
    result.update(trainable_params=trainable, total_params=total, trainable_percent=100 * trainable / total)
    log.info(
        "%s on %s: %s of %s parameters train (%.2f%%)",
        args.method,
        task.name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    adamw = optim.resolve_adamw(args.adamw, device.type)
    optimizer = optim.build_optimizer(decay_param_groups(model, args.weight_decay), args.lr, args.optimizer, adamw)
    result["optimizer"] = optim.describe(args.optimizer, adamw)
    # Together: FSDP2 shards the model and swaps the optimizer's parameters for the shards in one call.
    model, optimizer = accelerator.prepare(model, optimizer)  # quantized models are already placed by their device_map
    return model, optimizer, trainable


def _schedule(args: TrainArgs, optimizer, micro_batches_per_epoch: int):
    """The optimizer steps of the run, and the learning-rate schedule over them."""
    total_steps = math.ceil(micro_batches_per_epoch / args.grad_accum) * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    # Not passed to accelerator.prepare: Accelerate's scheduler steps once per process for each optimizer step.
    scheduler = get_scheduler(
        "constant_with_warmup" if args.scheduler == "constant" else args.scheduler,
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return total_steps, scheduler
