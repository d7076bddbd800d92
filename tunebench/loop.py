"""The training loop shared by every method: one function, read it top to bottom.

The method (tunebench.methods) decides what trains and what is saved; Accelerate handles the
device, mixed precision, gradient accumulation and multiple processes; tunebench.measure
measures. Everything else is here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from tunebench import generation, optim
from tunebench.config import Config, dump, flatten
from tunebench.data import batching
from tunebench.data import generate as generate_data
from tunebench.data.tasks import load_capped
from tunebench.errors import UserError
from tunebench.evaluation import evaluate, in_dataset_order
from tunebench.measure import StepMeter, TensorTracker, environment
from tunebench.methods import get_method
from tunebench.metrics import load_extra
from tunebench.models.causal_lm import check_causal_lm
from tunebench.models.hub import load_pretrained
from tunebench.models.params import count_parameters, decay_param_groups
from tunebench.results import SCHEMA_VERSION, rank_failure_path, read_rank_failures, write_json_atomic

log = logging.getLogger("tunebench")

# Set by the CLI's SIGTERM handler. Its KeyboardInterrupt can be lost (Python drops exceptions raised
# inside a __del__ during garbage collection), so the loop also checks this each step.
stop_requested = threading.Event()
# Set while train() records how the run ended; a SIGTERM then (torchrun stopping the other ranks after one
# failed) must not cut that short.
finishing = threading.Event()

CUDA_PEAK_INCLUDES = "CUDA allocator peak over the whole run: model, training, evaluation"
TRACKER_PEAK_INCLUDES = "live tensors in the traced training steps: weights, gradients, optimizer state, activations"
OOM_HINT = "out of memory: try a smaller --batch-size or --max-length, or a lighter method (lora, qlora, head)"


def train(cfg: Config, run_dir: str | Path, result_path: str | Path | None = None, meta: dict | None = None) -> dict:
    """Train one run as cfg says, write run_dir/{config.yaml,result.json,best/,last/,logs/}.

    The result is written when the run starts (status running) and again when it ends, whatever
    the end: ok, oom, failed or interrupted. meta (the harness's run_id, suite, grid) goes into the
    result as it is. Returns the result.
    """
    run_dir = Path(run_dir)
    result_path = Path(result_path or run_dir / "result.json")
    stop_requested.clear()
    finishing.clear()
    # Accelerate keeps one process-wide state that refuses a second precision; each run sets its own (the
    # process group, kept in PartialState, stays).
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg["train"]["mixed_precision"],
        log_with=cfg["train"]["trackers"] or None,
        dataloader_config=DataLoaderConfiguration(non_blocking=True),  # batches reach the GPU without a wait
        project_dir=str(run_dir / "logs"),
    )
    main = accelerator.is_main_process
    rank_failure_path(run_dir, accelerator.process_index).unlink(missing_ok=True)  # from an earlier attempt
    result = {
        "schema": SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "started_at": _now(),
        "finished_at": None,
        "config": cfg,
        "run_dir": str(run_dir),
        "environment": environment(accelerator.num_processes),
        **(meta or {}),
    }

    def save_result() -> None:
        if main:
            write_json_atomic(result_path, result)

    log_file = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump(cfg))
        log_file = _log_to_file(run_dir / "train.log")
    save_result()
    try:
        _run(cfg, run_dir, accelerator, result)
        result["status"] = "ok"
    except torch.OutOfMemoryError as exc:
        result.update(status="oom", error=f"{OOM_HINT} ({str(exc).splitlines()[0]})")
        log.error(result["error"])
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted (Ctrl-C or SIGTERM) before the run finished")
        raise
    except UserError as exc:
        result.update(status="failed", error=str(exc))
        raise
    except Exception as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    finally:
        finishing.set()
        result["finished_at"] = _now()
        if accelerator.num_processes > 1:
            _record_rank_failures(accelerator, run_dir, result)
        save_result()
        accelerator.end_training()
        if log_file is not None:
            log.removeHandler(log_file)
            log_file.close()
        finishing.clear()
    return result


def _run(cfg: Config, run_dir: Path, accelerator: Accelerator, result: dict) -> None:
    run_start = time.perf_counter()
    main, device = accelerator.is_main_process, accelerator.device
    seed, method_name, options = cfg["seed"], cfg["method"], cfg["method_options"]
    data_cfg, train_cfg = cfg["data"], cfg["train"]
    max_length = data_cfg["max_length"]
    epochs, max_steps, grad_accum = train_cfg["epochs"], train_cfg["max_steps"], train_cfg["grad_accum"]
    batch_size, eval_batch_size = train_cfg["batch_size"], train_cfg["eval_batch_size"]
    lr, weight_decay, max_grad_norm = train_cfg["lr"], train_cfg["weight_decay"], train_cfg["max_grad_norm"]
    eval_every, log_every, save = train_cfg["eval_every"], train_cfg["log_every"], train_cfg["save"]
    track_memory, memory_cap = cfg["measure"]["track_memory"], cfg["measure"]["memory_cap"]
    set_seed(seed)
    method = get_method(method_name)
    if accelerator.is_fsdp2 and hasattr(method, "check_strategy"):
        method.check_strategy("fsdp", cfg)
    meter = StepMeter(device)  # on CUDA: resets the peak statistics before the model loads

    # -- data: checked before any model is loaded ------------------------------------------------
    task = load_capped(cfg["task"], data_cfg)
    splits = task.splits
    model_path, model_config, tokenizer = load_pretrained(cfg["model"])
    generate = generate_data.is_generate(cfg)
    with accelerator.main_process_first():
        if generate:  # -- llm: prompt -> answer, loss on the answer only (tunebench.generation)
            check_causal_lm(model_path, model_config)
            encoded, dropped = generate_data.tokenize(splits, tokenizer, data_cfg)
            result["too_long_dropped"] = dropped
        else:
            encoded = batching.tokenize(splits, tokenizer, max_length)
    result["task"] = {
        "name": task.name,
        "num_labels": task.num_labels,
        "sizes": {name: len(split) for name, split in encoded.items()},
    }
    result["model"] = {"name": cfg["model"], "path": model_path, "model_type": model_config.model_type}

    # -- model: the method decides what trains ---------------------------------------------------
    model = method.build(model_path, task.num_labels, cfg, device)
    if train_cfg["gradient_checkpointing"] and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    trainable, total = count_parameters(model)
    result.update(trainable_params=trainable, total_params=total, trainable_percent=100 * trainable / total)
    log.info(
        "%s on %s: %s of %s parameters train (%.2f%%)",
        method_name,
        task.name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    adamw = optim.resolve_adamw(train_cfg["adamw"], device.type)
    optimizer = optim.build_optimizer(decay_param_groups(model, weight_decay), lr, train_cfg["optimizer"], adamw)
    result["optimizer"] = optim.describe(train_cfg["optimizer"], adamw)
    # Together: FSDP2 shards the model and swaps the optimizer's parameters for the shards in one call.
    model, optimizer = accelerator.prepare(model, optimizer)  # quantized models are already placed by their device_map
    meter.model_loaded()
    if generate:  # -- llm: forgetting is measured on the same tokens before and after training
        result["lm_head_untied"] = getattr(model, "lm_head_untied", False)
        forgetting = generation.ForgettingProbe(tokenizer, cfg["generation"], device)
        forgetting.measure_before(accelerator.unwrap_model(model))

    # Non-padding tokens the backbone runs over outside the steps: the head's one cached pass over train.
    cached_tokens = 0
    if generate:  # -- llm: generation is scored outside the prepared loaders, on every process alike
        train_loader = batching.train_loader(
            encoded["train"],
            tokenizer,
            batch_size,
            seed,
            data_cfg["group_by_length"],
            collate_fn=generate_data.collate(tokenizer.pad_token_id),
        )
        eval_loaders = {}
    elif options.get("cache_features") and hasattr(method, "cache_features"):
        labels = {name: torch.tensor(split["label"]) for name, split in encoded.items()}
        # Run the frozen backbone once (processes share each split); from here on the head trains on pooled features.
        features = {}
        for name, split in encoded.items():
            start = time.perf_counter()
            features[name] = cached_features(method, model, split, name, tokenizer, eval_batch_size, accelerator)
            if name == "train":
                meter.setup_seconds = time.perf_counter() - start  # part of the head method's training
                cached_tokens = sum(split["length"])
        train_loader = batching.feature_loader(features["train"], labels["train"], batch_size, seed)
        eval_loaders = {
            name: batching.feature_loader(features[name], labels[name], eval_batch_size, None)
            for name in ("validation", "test")
        }
    else:
        train_loader = batching.train_loader(encoded["train"], tokenizer, batch_size, seed, data_cfg["group_by_length"])
        eval_loaders = {
            name: batching.eval_loader(encoded[name], tokenizer, eval_batch_size) for name in ("validation", "test")
        }
    train_loader = accelerator.prepare(train_loader)
    eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}

    # -- optimizer and schedule: counted on this process's shard of the batches -------------------
    micro_batches_per_epoch = len(train_loader)
    total_steps = math.ceil(micro_batches_per_epoch / grad_accum) * epochs
    if max_steps:
        total_steps = min(total_steps, max_steps)
    # Not passed to accelerator.prepare: Accelerate's scheduler steps once per process for each optimizer step.
    scheduler = get_scheduler(
        "constant_with_warmup" if train_cfg["scheduler"] == "constant" else train_cfg["scheduler"],
        optimizer,
        num_warmup_steps=int(train_cfg["warmup_ratio"] * total_steps),
        num_training_steps=total_steps,
    )
    extra_metrics = load_extra(cfg["metrics"])

    def evaluate_split(name: str) -> tuple[dict, np.ndarray]:
        if generate:  # -- llm
            return generation.evaluate(
                accelerator.unwrap_model(model),
                encoded[name],
                tokenizer,
                cfg["generation"]["batch_size"],
                cfg["generation"]["margin"],
                accelerator.device,
            )
        return evaluate(model, eval_loaders[name], accelerator, extra_metrics)

    # trackers take flat scalar hyper-parameters
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(cfg).items()}
    accelerator.init_trackers("tunebench", config=hparams)

    # -- the loop --------------------------------------------------------------------------------
    tracker = (
        TensorTracker(accelerator.unwrap_model(model), optimizer, memory_cap) if track_memory or memory_cap else None
    )
    curves = {"train_loss": [], "validation": []}
    best = {"accuracy": -1.0, "step": 0, "state": None}
    step = micro_batches = examples = largest_tracked = logged_step = 0
    eval_seconds = 0.0
    # Per-step figures stay on the device; they are read back (a wait for the device) only when logging.
    loss_sum = torch.zeros((), device=device)  # each optimizer step's mean micro-batch loss, since the last log
    tokens = torch.zeros((), dtype=torch.long, device=device)  # non-padding tokens of the training batches

    def run_eval(at_step: int) -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        metrics, _ = evaluate_split("validation")
        eval_seconds += time.perf_counter() - start
        curves["validation"].append({"step": at_step, **metrics})
        accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=at_step)
        if metrics["accuracy"] > best["accuracy"]:
            best.update(
                accuracy=metrics["accuracy"], step=at_step, state=_trainable_state(accelerator.unwrap_model(model))
            )
        log.info("step %d validation %s", at_step, metrics)

    model.train()
    meter.resume()
    with tqdm(total=total_steps, disable=not main, desc=f"{method_name} {task.name}", unit="step") as progress:
        for epoch in range(epochs if trainable else 0):  # nothing trains (the none baseline): the untuned model
            train_loader.set_epoch(epoch)  # reaches the sampler, which reshuffles
            for i, batch in enumerate(train_loader):
                if stop_requested.is_set():
                    raise KeyboardInterrupt
                del batch["index"]
                # The epoch's last optimizer step may gather fewer micro-batches; its loss is their mean too.
                group = min(grad_accum, micro_batches_per_epoch - i // grad_accum * grad_accum)
                update = (i + 1) % grad_accum == 0 or i + 1 == micro_batches_per_epoch
                examples += len(batch["labels"])
                if "attention_mask" in batch:  # cached features stand for tokens counted once, above
                    tokens += batch["attention_mask"].sum()
                shape = batch["input_ids"].numel() if "input_ids" in batch else batch["features"].numel()
                # Memory is a function of the batch shape: trace the first two steps (the optimizer state
                # appears in step one) and every batch larger than any traced before; or all, under a cap.
                track = tracker is not None and (step < 2 or shape > largest_tracked or tracker.cap_bytes)
                largest_tracked = max(largest_tracked, shape) if track else largest_tracked
                with (
                    nullcontext() if update else accelerator.no_sync(model),
                    tracker if track else nullcontext(),
                ):
                    loss = model(**batch).loss / group
                    accelerator.backward(loss)
                    if track:
                        tracker.classify_state()
                    if update:
                        if max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                        step_lr = scheduler.get_last_lr()[0]
                        optimizer.step()
                        if not accelerator.optimizer_step_was_skipped:
                            scheduler.step()
                        if track:
                            tracker.classify_state()
                        optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
                micro_batches += 1
                if not update:
                    continue
                step += 1
                progress.update(1)
                done = step == total_steps
                evaluate_now = (eval_every and step % eval_every == 0) or i + 1 == micro_batches_per_epoch or done
                if step == 1 or step % log_every == 0 or evaluate_now:
                    meter.lap(step - logged_step)  # waits for the device; the clock stays stopped until resume()
                    mean_loss = (accelerator.reduce(loss_sum, "mean") / (step - logged_step)).item()
                    loss_sum.zero_()
                    logged_step = step
                    curves["train_loss"].append({"step": step, "loss": mean_loss, "lr": step_lr})
                    accelerator.log({"train/loss": mean_loss, "train/lr": step_lr}, step=step)
                    progress.set_postfix(
                        loss=f"{mean_loss:.4f}",
                        samples_s=f"{examples * accelerator.num_processes / meter.train_seconds:.1f}",
                    )
                    if evaluate_now:
                        run_eval(step)
                        model.train()
                    meter.resume()
                if done:
                    break
            if step == total_steps:
                break
    examples, tokens = accelerator.reduce(torch.stack([torch.tensor(examples, device=device), tokens]), "sum").tolist()
    train_seconds = meter.train_seconds
    if not curves["validation"]:  # nothing trained: validate the untuned model once
        run_eval(step)

    # -- save and test ---------------------------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    if save == "best_and_last":
        _save(method, unwrapped, run_dir / "last", accelerator)
    if best["state"] is not None:
        _restore(unwrapped, best["state"])  # under FSDP2 each rank restores its own shards
    if save != "none":
        _save(method, unwrapped, run_dir / "best", accelerator)
    test_metrics, predictions = evaluate_split("test")
    if main:
        (run_dir / "test_predictions.json").write_text(json.dumps(predictions.tolist()))

    tokens += cached_tokens
    timing = meter.summary()
    memory = {
        "peak_rss_bytes": timing.pop("peak_rss_bytes"),
        "tensor": tracker.summary() if tracker else None,
        "cuda": timing.pop("cuda"),
    }
    memory["per_rank"] = _per_rank_peaks(accelerator, memory)
    if memory["cuda"]:
        peak = (memory["cuda"]["max_allocated_bytes"], "cuda_max_allocated", CUDA_PEAK_INCLUDES)
    elif memory["tensor"]:
        peak = (memory["tensor"]["peak_bytes"], "tensor_tracker", TRACKER_PEAK_INCLUDES)
    else:
        peak = (None, None, None)
    result.update(
        validation=curves["validation"][-1] if curves["validation"] else None,
        best_validation_accuracy=best["accuracy"],
        best_step=best["step"],
        test=test_metrics,
        test_accuracy=test_metrics["accuracy"],
        test_f1=test_metrics["f1_macro"],
        curves=curves,
        optimizer_steps=step,
        micro_batches=micro_batches,
        examples_seen=examples,
        tokens_processed=tokens,
        # no rates where nothing trained (the none baseline)
        tokens_per_second=tokens / train_seconds if train_seconds else None,
        samples_per_second=examples / train_seconds if train_seconds else None,
        epochs_per_second=micro_batches / micro_batches_per_epoch / train_seconds if train_seconds else None,
        **timing,
        eval_seconds=eval_seconds,
        run_seconds=time.perf_counter() - run_start,
        memory=memory,
        peak_memory_bytes=peak[0],
        peak_memory_source=peak[1],
        peak_memory_includes=peak[2],
        checkpoint_bytes=_folder_bytes(run_dir / "best"),
    )
    if generate:  # -- llm
        result.update(
            generation.result_fields(test_metrics),
            sample_generations=generation.samples(encoded["test"], predictions),
            forgetting=forgetting.result(unwrapped),
        )
    accelerator.log({"test/accuracy": test_metrics["accuracy"], "test/f1_macro": test_metrics["f1_macro"]}, step=step)
    log.info("test %s", test_metrics)


def cached_features(
    method, model, split, name: str, tokenizer, batch_size: int, accelerator: Accelerator
) -> torch.Tensor:
    """The method's pooled backbone features of every example in split, in dataset order, on the CPU.
    Each process embeds its share of the batches."""
    loader = accelerator.prepare(batching.eval_loader(split, tokenizer, batch_size))
    loader = tqdm(loader, desc=f"features {name}", disable=not accelerator.is_main_process)
    features, index = method.cache_features(accelerator.unwrap_model(model), loader, accelerator.device)
    [features] = in_dataset_order(accelerator, index, features)
    return features


def _record_rank_failures(accelerator: Accelerator, run_dir: Path, result: dict) -> None:
    """Only rank 0 writes the result, and a failure elsewhere reaches rank 0 only as a torn collective or
    torchrun's SIGTERM (which reads `interrupted`). So every other rank leaves how it failed in the run
    folder, before it leaves the process group, and rank 0 records the failures it finds: the result
    names the rank and its error."""
    rank = accelerator.process_index
    if rank:
        if result["status"] in ("failed", "oom"):
            failure = {"rank": rank, "status": result["status"], "error": result["error"]}
            write_json_atomic(rank_failure_path(run_dir, rank), failure)
        return
    failures = read_rank_failures(run_dir)  # the cause: rank 0's own error is then a torn collective
    if not failures and result["status"] in ("failed", "oom"):
        failures = [{"rank": 0, "status": result["status"], "error": result["error"]}]
    if failures:
        error = "; ".join(f"rank {failure['rank']}: {failure['error']}" for failure in failures)
        result.update(status=failures[0]["status"], error=error)


def _trainable_state(model) -> dict:
    """A CPU copy of what trains (under FSDP2, this rank's shards): enough to restore the best step later."""
    return {n: _local(p).detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _restore(model, state: dict) -> None:
    """Load the best step's trainable tensors; any trainable tensor missing, or any extra one, is an error."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    targets = model.state_dict(keep_vars=True)
    unexpected = set(state) - set(targets)
    missing = trainable - set(state)
    if missing or unexpected:
        raise RuntimeError(
            f"restoring the best step: missing trainable {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            _local(targets[name]).copy_(tensor)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a DTensor), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _save(method, model, folder: Path, accelerator: Accelerator) -> None:
    """Rank 0 writes what the method keeps. Under FSDP2 every rank first takes part in gathering the whole state
    dict from the shards (Accelerate's get_state_dict: full, offloaded to rank 0's CPU), which the method saves
    from (untested on hardware)."""
    if not accelerator.is_fsdp2:
        if accelerator.is_main_process:
            _write(folder, lambda tmp: method.save(model, tmp))
        return
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        _write(folder, lambda tmp: method.save(model, tmp, state_dict=state_dict))


def _write(folder: Path, save) -> None:
    """save(tmp) into a .partial folder, then swapped in whole."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def _per_rank_peaks(accelerator: Accelerator, memory: dict) -> list[dict]:
    tensor_peak = (memory["tensor"] or {}).get("peak_bytes") or 0
    cuda_peak = (memory["cuda"] or {}).get("max_allocated_bytes") or 0
    mine = torch.tensor(
        [[memory["peak_rss_bytes"], tensor_peak, cuda_peak]], dtype=torch.float64, device=accelerator.device
    )
    rows = accelerator.gather(mine).cpu().tolist()
    return [
        {"rank": i, "peak_rss_bytes": int(r[0]), "tensor_peak_bytes": int(r[1]), "cuda_max_allocated_bytes": int(r[2])}
        for i, r in enumerate(rows)
    ]


def _folder_bytes(folder: Path) -> int | None:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else None


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
