"""The step loop: epochs of optimizer steps, each over its micro-batches (gradient accumulation), with the loss
logged and the model validated at fixed points. Read it top to bottom.

Per micro-batch: forward, loss / group size, backward (no gradient sync unless it is the step's last). After the
last: clip, optimizer step, scheduler step, zero the gradients. The tensor tracker classifies state after each
backward and after the optimizer step, on the micro-batches it traces.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from tunebench.measure import TensorTracker
from tunebench.training.checkpoint import BestStep
from tunebench.training.setup import Setup

log = logging.getLogger("tunebench")


@dataclass
class Tally:
    """What the loop has done. The per-step figures stay on the device; they are read back (a wait for the
    device) only when logging."""

    loss_sum: torch.Tensor  # each optimizer step's mean micro-batch loss, since the last log
    tokens: torch.Tensor  # non-padding tokens of the training batches
    step: int = 0  # optimizer steps
    micro_batches: int = 0
    examples: int = 0
    logged_step: int = 0
    largest_traced: int = 0  # elements of the largest batch traced by the tensor tracker
    # The last micro-batch and its loss, each replaced only once the next one exists (the next batch fetched, the
    # next forward done) and kept until the run ends: what is live at each traced step's peak, and over evaluation
    # (the CUDA peak), is part of the measurement.
    batch: dict | None = None
    loss: torch.Tensor | None = None


class Validation:
    """Validation during training: the curve, the best step (its trainable state kept), the time it took."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.curve: list[dict] = []
        self.best = BestStep()
        self.seconds = 0.0

    def __call__(self, at_step: int) -> None:
        s = self.setup
        start = time.perf_counter()
        with s.meter.phase("eval"):
            metrics, _ = s.kind.evaluate("validation", s.model, s.accelerator, s.extra_metrics)
        self.seconds += time.perf_counter() - start
        self.curve.append({"step": at_step, **metrics})
        s.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=at_step)
        self.best.consider(metrics["accuracy"], at_step, s.accelerator.unwrap_model(s.model))
        log.info("step %d validation %s", at_step, metrics)


@dataclass
class Fitted:
    """What training did, totalled over processes."""

    curves: dict = field(default_factory=dict)  # train_loss and validation, by step
    best: BestStep = field(default_factory=BestStep)
    steps: int = 0
    micro_batches: int = 0
    examples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    validation_seconds: float = 0.0
    tracker: TensorTracker | None = None
    tally: Tally | None = None  # held until the run ends (see Tally.batch)


def fit(s: Setup, stop: threading.Event) -> Fitted:
    """Train for the setup's epochs or steps; stop (set by a signal handler) ends it with a KeyboardInterrupt."""
    args, accelerator = s.args, s.accelerator
    tracker = _tensor_tracker(s)
    losses: list[dict] = []
    validation = Validation(s)
    device = accelerator.device
    tally = Tally(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))
    s.model.train()
    s.meter.enter("train")
    s.meter.resume()
    desc, quiet = f"{args.method} {s.task_name}", not accelerator.is_main_process
    with tqdm(total=s.total_steps, disable=quiet, desc=desc, unit="step") as progress:
        for epoch in range(args.epochs if s.trainable else 0):  # nothing trains (the none baseline): the untuned model
            s.train_loader.set_epoch(epoch)  # reaches the sampler, which reshuffles
            for group, last_of_epoch, micro_batches in optimizer_steps(s.train_loader, args.grad_accum):
                step_lr = optimizer_step(s, group, micro_batches, tracker, tally, stop)
                tally.step += 1
                progress.update(1)
                done = tally.step == s.total_steps
                evaluate_now = (args.eval_every and tally.step % args.eval_every == 0) or last_of_epoch or done
                if tally.step == 1 or tally.step % args.log_every == 0 or evaluate_now:
                    _log_step(s, tally, step_lr, losses, progress)
                    if evaluate_now:
                        validation(tally.step)
                        s.model.train()
                    s.meter.resume()
                if done:
                    break
            if tally.step == s.total_steps:
                break
    s.meter.enter("other")
    counts = torch.stack([torch.tensor(tally.examples, device=device), tally.tokens])
    examples, tokens = accelerator.reduce(counts, "sum").tolist()
    train_seconds = s.meter.train_seconds
    if not validation.curve:  # nothing trained: validate the untuned model once
        validation(tally.step)
    return Fitted(
        curves={"train_loss": losses, "validation": validation.curve},
        best=validation.best,
        steps=tally.step,
        micro_batches=tally.micro_batches,
        examples=examples,
        tokens=tokens,
        train_seconds=train_seconds,
        validation_seconds=validation.seconds,
        tracker=tracker,
        tally=tally,
    )


def _tensor_tracker(s: Setup) -> TensorTracker | None:
    """The tensor-memory tracker of the traced steps, when memory is tracked or capped."""
    if not (s.args.track_memory or s.args.memory_cap):
        return None
    return TensorTracker(s.accelerator.unwrap_model(s.model), s.optimizer, s.args.memory_cap)


def optimizer_steps(loader, grad_accum: int) -> Iterator[tuple[int, bool, Iterator[dict]]]:
    """Each optimizer step of an epoch as (its micro-batch count, whether it ends the epoch, its micro-batches).
    The micro-batches are drawn from the loader one at a time, as they are used; the epoch's last step may
    gather fewer than grad_accum."""
    per_epoch = len(loader)
    batches = iter(loader)
    for first in range(0, per_epoch, grad_accum):
        group = min(grad_accum, per_epoch - first)
        yield group, first + group == per_epoch, itertools.islice(batches, group)
    next(batches, None)  # runs the loader to its end, as a for loop would: Accelerate closes the epoch there


def optimizer_step(
    s: Setup, group: int, micro_batches: Iterator[dict], tracker: TensorTracker | None, tally: Tally, stop
) -> float:
    """Forward and backward over the step's micro-batches, then the update; returns the learning rate used."""
    accelerator, model = s.accelerator, s.model
    for k, batch in enumerate(micro_batches):
        tally.batch = batch
        if stop.is_set():
            raise KeyboardInterrupt
        del batch["index"]
        update = k == group - 1
        tally.examples += len(batch["labels"])
        if "attention_mask" in batch:  # cached features stand for tokens counted once, in setup
            tally.tokens += batch["attention_mask"].sum()
        shape = batch["input_ids"].numel() if "input_ids" in batch else batch["features"].numel()
        # Memory is a function of the batch shape: trace the first two steps (the optimizer state appears in
        # step one) and every batch larger than any traced before; or all, under a cap.
        track = tracker is not None and (tally.step < 2 or shape > tally.largest_traced or tracker.cap_bytes)
        tally.largest_traced = max(tally.largest_traced, shape) if track else tally.largest_traced
        with (
            nullcontext() if update else accelerator.no_sync(model),
            tracker if track else nullcontext(),
        ):
            tally.loss = model(**batch).loss / group  # the step's loss is the mean over its micro-batches
            accelerator.backward(tally.loss)
            if track:
                tracker.classify_state()
            if update:
                step_lr = _update(s, tracker if track else None, tally.step)
        tally.loss_sum += tally.loss.detach()
        tally.micro_batches += 1
    return step_lr


def _update(s: Setup, tracker: TensorTracker | None, step: int) -> float:
    """Clip, step the optimizer and the schedule (and the method's step hook), zero the gradients; returns the
    learning rate stepped with."""
    if s.args.max_grad_norm:
        s.accelerator.clip_grad_norm_(s.model.parameters(), s.args.max_grad_norm)
    step_lr = s.scheduler.get_last_lr()[0]
    s.optimizer.step()
    if not s.accelerator.optimizer_step_was_skipped:
        s.scheduler.step()
    if s.after_step is not None:
        s.after_step(step)
    if tracker is not None:
        tracker.classify_state()
    s.optimizer.zero_grad(set_to_none=True)
    return step_lr


def _log_step(s: Setup, tally: Tally, step_lr: float, losses: list[dict], progress) -> None:
    """The mean loss since the last log, read back from the device; the step clock stays stopped until resumed."""
    accelerator = s.accelerator
    s.meter.lap(tally.step - tally.logged_step)  # waits for the device
    mean_loss = (accelerator.reduce(tally.loss_sum, "mean") / (tally.step - tally.logged_step)).item()
    tally.loss_sum.zero_()
    tally.logged_step = tally.step
    losses.append({"step": tally.step, "loss": mean_loss, "lr": step_lr})
    accelerator.log({"train/loss": mean_loss, "train/lr": step_lr}, step=tally.step)
    progress.set_postfix(
        loss=f"{mean_loss:.4f}",
        samples_s=f"{tally.examples * accelerator.num_processes / s.meter.train_seconds:.1f}",
    )
