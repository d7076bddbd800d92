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
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from tunebench import data as batching
from tunebench import generation
from tunebench.config import Config, dump, flatten
from tunebench.errors import UserError
from tunebench.measure import StepMeter, TensorTracker, environment
from tunebench.methods import get_method
from tunebench.metrics import classification_metrics, load_extra
from tunebench.modeling import count_parameters, decay_param_groups
from tunebench.models import load_config, load_tokenizer, resolve_model
from tunebench.optim import build_adamw, resolve_adamw
from tunebench.results import SCHEMA_VERSION, write_json_atomic
from tunebench.tasks import get_task, load_task

log = logging.getLogger("tunebench")

# Set by the CLI's SIGTERM handler. Its KeyboardInterrupt can be lost (Python drops exceptions raised
# inside a __del__ during garbage collection), so the loop also checks this each step.
stop_requested = threading.Event()

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
    accelerator = Accelerator(
        mixed_precision=cfg["train"]["mixed_precision"],
        gradient_accumulation_steps=cfg["train"]["grad_accum"],
        log_with=cfg["train"]["trackers"] or None,
        project_dir=str(run_dir / "logs"),
    )
    main = accelerator.is_main_process
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
        result["finished_at"] = _now()
        save_result()
        accelerator.end_training()
        if log_file is not None:
            log.removeHandler(log_file)
            log_file.close()
    return result


def _run(cfg: Config, run_dir: Path, accelerator: Accelerator, result: dict) -> None:
    main = accelerator.is_main_process
    set_seed(cfg["seed"])
    method = get_method(cfg["method"])
    options = cfg["method_options"]

    # -- data: checked before any model is loaded ------------------------------------------------
    task = load_task(get_task(cfg["task"]), cfg["data"])
    splits = task.splits
    if cfg["data"]["max_train_samples"]:
        splits["train"] = splits["train"].select(range(min(cfg["data"]["max_train_samples"], len(splits["train"]))))
    if cfg["data"]["max_eval_samples"]:
        for name in ("validation", "test"):
            splits[name] = splits[name].select(range(min(cfg["data"]["max_eval_samples"], len(splits[name]))))
    model_path = resolve_model(cfg["model"])
    model_config = load_config(model_path)
    tokenizer = load_tokenizer(model_path, model_config.model_type)
    generate = generation.is_generate(cfg)
    with accelerator.main_process_first():
        if generate:  # -- llm: prompt -> answer, loss on the answer only (tunebench.generation)
            generation.check_causal_lm(model_path, model_config)
            encoded, dropped = generation.tokenize(splits, tokenizer, cfg["data"])
            result["too_long_dropped"] = dropped
        else:
            encoded = batching.tokenize(splits, tokenizer, cfg["data"]["max_length"])
    result["task"] = {
        "name": task.name,
        "num_labels": task.num_labels,
        "sizes": {name: len(split) for name, split in encoded.items()},
    }
    result["model"] = {"name": cfg["model"], "path": model_path, "model_type": model_config.model_type}

    # -- model: the method decides what trains ---------------------------------------------------
    model = method.build(model_path, task, tokenizer, cfg, accelerator.device)
    if cfg["train"]["gradient_checkpointing"] and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    trainable, total = count_parameters(model)
    result.update(trainable_params=trainable, total_params=total, trainable_percent=100 * trainable / total)
    log.info(
        "%s on %s: %s of %s parameters train (%.2f%%)",
        cfg["method"],
        task.name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    model = accelerator.prepare(model)  # quantized models are already placed by their device_map
    if generate:  # -- llm: forgetting is measured on the same tokens before and after training
        result["lm_head_untied"] = getattr(model, "lm_head_untied", False)
        forgetting = generation.ForgettingProbe(tokenizer, cfg["generation"], accelerator.device)
        forgetting.measure_before(accelerator.unwrap_model(model))

    batch_size, eval_batch_size = cfg["train"]["batch_size"], cfg["train"]["eval_batch_size"]
    train_lengths = torch.tensor(encoded["train"]["length"])
    cache_seconds = 0.0
    if generate:  # -- llm: generation is scored outside the prepared loaders, on every process alike
        train_loader = generation.train_loader(
            encoded["train"], tokenizer, batch_size, cfg["seed"], cfg["data"]["group_by_length"]
        )
        eval_loaders = {}
    elif options.get("cache_features") and hasattr(method, "cache_features"):
        labels = {name: torch.tensor(split["label"]) for name, split in encoded.items()}
        # Run the frozen backbone once; from here on the head trains on pooled features.
        features = {}
        for name, split in encoded.items():
            start = time.perf_counter()
            features[name] = method.cache_features(
                accelerator.unwrap_model(model),
                batching.eval_loader(split, tokenizer, eval_batch_size),
                accelerator.device,
            )
            if name == "train":
                cache_seconds = time.perf_counter() - start
        train_loader = batching.feature_loader(features["train"], labels["train"], batch_size, cfg["seed"])
        eval_loaders = {
            name: batching.feature_loader(features[name], labels[name], eval_batch_size, None)
            for name in ("validation", "test")
        }
    else:
        train_loader = batching.train_loader(
            encoded["train"], tokenizer, batch_size, cfg["seed"], cfg["data"]["group_by_length"]
        )
        eval_loaders = {
            name: batching.eval_loader(encoded[name], tokenizer, eval_batch_size) for name in ("validation", "test")
        }

    # -- optimizer and schedule ------------------------------------------------------------------
    adamw = resolve_adamw(cfg["train"]["adamw"], accelerator.device.type)
    optimizer = build_adamw(decay_param_groups(model, cfg["train"]["weight_decay"]), cfg["train"]["lr"], adamw)
    result["optimizer"] = {"name": "adamw", "implementation": adamw}
    steps_per_epoch = math.ceil(len(train_loader) / cfg["train"]["grad_accum"])
    total_steps = steps_per_epoch * cfg["train"]["epochs"]
    if cfg["train"]["max_steps"]:
        total_steps = min(total_steps, cfg["train"]["max_steps"])
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg["train"]["scheduler"] == "constant" else cfg["train"]["scheduler"],
        optimizer,
        num_warmup_steps=int(cfg["train"]["warmup_ratio"] * total_steps),
        num_training_steps=total_steps,
    )
    optimizer, train_loader, scheduler, *eval_list = accelerator.prepare(
        optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, eval_list, strict=True))
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
        TensorTracker(accelerator.unwrap_model(model), optimizer, cfg["measure"]["memory_cap"])
        if cfg["measure"]["track_memory"] or cfg["measure"]["memory_cap"]
        else None
    )
    meter = StepMeter(accelerator.device)
    curves = {"train_loss": [], "validation": []}
    best = {"accuracy": -1.0, "step": 0, "state": None}
    step, largest_tracked = 0, 0
    eval_seconds = 0.0

    def run_eval(at_step: int) -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        metrics, _ = evaluate_split("validation")
        eval_seconds += time.perf_counter() - start
        curves["validation"].append({"step": at_step, **metrics})
        accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=at_step)
        if metrics["accuracy"] > best["accuracy"]:
            best.update(accuracy=metrics["accuracy"], step=at_step, state=_trainable_state(model, accelerator))
        log.info("step %d validation %s", at_step, metrics)

    model.train()
    wall_start = time.perf_counter()
    with tqdm(total=total_steps, disable=not main, desc=f"{cfg['method']} {task.name}", unit="step") as progress:
        for epoch in range(cfg["train"]["epochs"] if trainable else 0):  # nothing trains: the untuned model
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            for batch in train_loader:
                if stop_requested.is_set():
                    raise KeyboardInterrupt
                index = batch.pop("index")
                # non-padding tokens; a cached-feature batch stands for the tokens its examples had
                tokens = (
                    int(batch["attention_mask"].sum())
                    if "attention_mask" in batch
                    else int(train_lengths[index.cpu()].sum())
                )
                shape = batch["input_ids"].numel() if "input_ids" in batch else batch["features"].numel()
                # Memory is a function of the batch shape: trace the first two steps (the optimizer state
                # appears in step one) and every batch larger than any traced before; or all, under a cap.
                track = tracker is not None and (step < 2 or shape > largest_tracked or tracker.cap_bytes)
                largest_tracked = max(largest_tracked, shape) if track else largest_tracked
                meter.start()
                with accelerator.accumulate(model), tracker if track else nullcontext():
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if track:
                        tracker.classify_state()
                    if accelerator.sync_gradients and cfg["train"]["max_grad_norm"]:
                        accelerator.clip_grad_norm_(model.parameters(), cfg["train"]["max_grad_norm"])
                    optimizer.step()
                    scheduler.step()
                    if track:
                        tracker.classify_state()
                    optimizer.zero_grad(set_to_none=True)
                meter.stop(len(batch["labels"]) * accelerator.num_processes, tokens * accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue
                step += 1
                loss_value = loss.item()
                curves["train_loss"].append({"step": step, "loss": loss_value})
                if step % cfg["train"]["log_every"] == 0 or step == 1:
                    accelerator.log({"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0]}, step=step)
                progress.update(1)
                progress.set_postfix(
                    loss=f"{loss_value:.4f}", samples_s=f"{meter.samples / max(sum(meter.step_seconds), 1e-9):.1f}"
                )
                if cfg["train"]["eval_every"] and step % cfg["train"]["eval_every"] == 0:
                    run_eval(step)
                    model.train()
                if step >= total_steps:
                    break
            if not cfg["train"]["eval_every"] or step % cfg["train"]["eval_every"]:
                run_eval(step)
                model.train()
            if step >= total_steps:
                break
    wall_seconds = time.perf_counter() - wall_start
    if not curves["validation"]:
        run_eval(step)

    # -- save and test ---------------------------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    if main and cfg["train"]["save"] == "best_and_last":
        _save(method, unwrapped, run_dir / "last")
    if best["state"] is not None:
        unwrapped.load_state_dict(best["state"], strict=False)
    if main and cfg["train"]["save"] != "none":
        _save(method, unwrapped, run_dir / "best")
    test_metrics, predictions = evaluate_split("test")
    if main:
        (run_dir / "test_predictions.json").write_text(json.dumps(predictions.tolist()))

    meter.setup_seconds = cache_seconds  # the backbone pass over train is part of the head method's training
    speed = meter.summary()
    memory = {
        "peak_rss_bytes": speed.pop("peak_rss_bytes"),
        "tensor": tracker.summary() if tracker else None,
        "cuda": speed.pop("cuda", None),
    }
    memory["per_rank"] = _per_rank_peaks(accelerator, memory)
    cuda_peak = memory["cuda"]["max_allocated_bytes"] if memory["cuda"] else None
    result.update(
        validation=curves["validation"][-1] if curves["validation"] else None,
        best_validation_accuracy=best["accuracy"],
        best_step=best["step"],
        test=test_metrics,
        test_accuracy=test_metrics["accuracy"],
        test_f1=test_metrics["f1_macro"],
        curves=curves,
        **speed,
        wall_seconds=wall_seconds,
        eval_seconds=eval_seconds,
        memory=memory,
        peak_memory_bytes=cuda_peak if cuda_peak is not None else (memory["tensor"] or {}).get("peak_bytes"),
        peak_memory_source="cuda_max_allocated" if cuda_peak is not None else "tensor_tracker",
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


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, extra_metrics: list = ()) -> tuple[dict, np.ndarray]:
    """Metrics and predictions over a loader, in dataset order, gathered across processes."""
    model.eval()
    predictions, labels, indices = [], [], []
    for batch in loader:
        index = batch.pop("index")
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        pred, ref, idx = accelerator.gather((logits.argmax(-1), batch["labels"], index))
        predictions.append(pred.cpu())
        labels.append(ref.cpu())
        indices.append(idx.cpu())
    # Sharding pads the last batches with repeated examples so every process gets one; each example
    # carries its dataset index, so keep its first copy, in dataset order.
    _, first = np.unique(torch.cat(indices).numpy(), return_index=True)
    predictions, labels = torch.cat(predictions).numpy()[first], torch.cat(labels).numpy()[first]
    return classification_metrics(predictions, labels, extra_metrics), predictions


def _trainable_state(model, accelerator: Accelerator) -> dict:
    """A CPU copy of what trains: enough to restore the best step later."""
    unwrapped = accelerator.unwrap_model(model)
    trainable = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    return {n: t.detach().to("cpu", copy=True) for n, t in unwrapped.state_dict().items() if n in trainable}


def _save(method, model, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(model, str(tmp))
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
