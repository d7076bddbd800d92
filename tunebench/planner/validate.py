"""Validation: the planner's prediction against real steps on this machine (two steps of the loop's sequence, and
tiny `tunebench train` runs), or against the peaks a results folder recorded.
"""

from __future__ import annotations

import itertools
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunebench.config import build_config
from tunebench.data import batching
from tunebench.data.tasks import get_task, load_task
from tunebench.errors import UserError
from tunebench.measure import ProfiledPeak, TensorTracker, quantization_state
from tunebench.methods import default_options, get_method, plannable
from tunebench.models.hub import DECODER_TYPES, load_config, load_tokenizer, resolve_model
from tunebench.models.params import decay_param_groups
from tunebench.models.precision import RULES, apply_rule
from tunebench.optim import build_adamw, resolve_adamw
from tunebench.planner.inputs import ModelSpec, Shape, load_gpus, parse_methods, resolve_spec, result_precision
from tunebench.planner.request import PlanRequest
from tunebench.planner.tracing import (
    LR,
    WEIGHT_DECAY,
    StepTrace,
    loop_step,
    make_batch,
    method_cfg,
    pad_id,
    trace_step,
    trains_with,
)
from tunebench.results import read_result, result_files
from tunebench.training.run import train
from tunebench.units import format_gib

VALIDATION_SHAPE = Shape(batch_size=8, seq_len=64, num_labels=2)


def measure_step(
    model_path: str,
    method: str,
    *,
    batch_size: int,
    seq_len: int,
    num_labels: int,
    precision: str,
    device: torch.device,
    gradient_checkpointing: bool = False,
    task_type: str = "classify",
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
    module = get_method(method)
    # pooling None: what the checkpoint was trained with, as the planner's spec.pooling
    cfg = method_cfg(default_options(method), None, gradient_checkpointing, task_type, precision)
    config = load_config(model_path)
    model = module.build(model_path, None if task_type == "generate" else num_labels, cfg, device)
    apply_rule(model, precision)  # as the loop's setup does after build
    if gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()  # as the loop does after build
    if not quantization_state(model):  # a quantized model is placed by its device_map as it loads
        model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adamw(decay_param_groups(model, WEIGHT_DECAY), LR, resolve_adamw("auto", device.type))
    batch = make_batch(batch_size, seq_len, num_labels, config.vocab_size, pad_id(config), device, task_type)
    tracker = TensorTracker(model, optimizer)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    persistent = [*model.parameters(), *model.buffers(), *quantization_state(model)]
    allocator = nullcontext() if cuda else ProfiledPeak(persistent)
    with allocator:
        for _ in range(2):
            state = loop_step(model, optimizer, batch, tracker, RULES[precision].autocast, device.type)
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


def tiny_llama_folder(folder: str | Path, tie_word_embeddings: bool = False) -> str:
    """A small random grouped-query-attention Llama checkpoint (4 layers, hidden 256, 8 query and 4 key/value
    heads) saved once with MiniLM's tokenizer, so that the loop can train it: the decoder validation model.
    tie_word_embeddings: the LM head shares the input embeddings (as in SmolLM2, Llama-3.2 1B/3B, Qwen2.5 small)."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
        tokenizer.save_pretrained(folder)
        config = LlamaConfig(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            dtype="float32",
        )
        LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def validate_steps(
    model: str,
    methods: list[str],
    shape: Shape = VALIDATION_SHAPE,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    task_type: str = "classify",
) -> list[dict]:
    """Per method: the fake-trace prediction against two real steps of the loop on this machine, on a padded
    batch, with the AdamW implementation the loop uses here; measured by TensorTracker and independently
    (measure_step: the CPU allocator's events, or torch.cuda.max_memory_allocated). task_type
    "generate" steps the causal LM on answer-masked labels (the SFT step), "classify" the sequence classifier.
    A method that cannot train with these settings (trains_with: prompt learning on the classifier, prefix tuning
    under gradient checkpointing) has no row."""
    spec = _weighted_spec(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, device_constants = load_gpus()
    rows = []
    for method in methods:
        if not trains_with(method, default_options(method), task_type, gradient_checkpointing):
            continue
        predicted = trace_step(
            spec.config,
            method,
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            precision=precision,
            options=default_options(method),
            pooling=spec.pooling,
            gradient_checkpointing=gradient_checkpointing,
            adamw=resolve_adamw("auto", device.type),
            task_type=task_type,
        )
        measured = measure_step(
            spec.path,
            method,
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            precision=precision,
            device=device,
            gradient_checkpointing=gradient_checkpointing,
            task_type=task_type,
        )
        independent = measured.independent
        measured_by = independent["by"]
        if "max_reserved_bytes" in independent:  # CUDA: the device constants the plan adds, checked
            margin = independent["max_reserved_bytes"] / independent["bytes"] - 1
            planned_margin = device_constants["allocator_margin"]
            measured_by += (
                f"; reserved +{100 * margin:.1f}% (gpus.yaml margin: +{100 * planned_margin:.0f}%),"
                f" {format_gib(independent['outside_allocator_bytes'])} outside the allocator"
                f" (gpus.yaml context: {device_constants['context_gib']} GiB)"
            )
        rows.append(
            _row(model, method, precision, "2 steps", predicted.peak_bytes, measured.peak_bytes, independent["bytes"])
            | {"measured_by": measured_by, "independent": independent}
            | {"task_type": task_type, "gradient_checkpointing": gradient_checkpointing}
        )
    return rows


def validate_loop(model: str, methods: list[str], precision: str, run_root: Path) -> list[dict]:
    """Per method: the prediction against a tiny real `tunebench train` run (loop.train) of rotten_tomatoes.

    Its batches are padded to their longest example (dynamic padding), every step is traced (a memory cap far
    above use makes the loop trace them all, so the longest batch is traced with AdamW's state), and the head
    method runs its backbone every step (cache_features off), as the plan assumes. The prediction is at the
    batch size and the longest example's length; the run's own peak (TensorTracker on the CPU,
    max_memory_allocated on CUDA) is the measurement.
    """
    spec = _weighted_spec(model)
    overrides = {
        "model": spec.path,
        "data": {"max_train_samples": 16, "max_eval_samples": 8, "max_length": 64},
        "train": {"batch_size": 8, "eval_batch_size": 8, "epochs": 2, "precision": precision},
        "measure": {"memory_cap": 2**50},
    }
    overrides["train"] |= {"trackers": [], "save": "none", "warmup_ratio": 0.0}
    rows = []
    for method in methods:
        if not trains_with(method, default_options(method), "classify"):
            continue  # prompt learning: generate tasks only
        cfg = build_config(method, "rotten_tomatoes", overrides=overrides)
        if "cache_features" in cfg["method_options"]:
            cfg["method_options"]["cache_features"] = False
        result = train(cfg, run_root / f"{Path(spec.name).name}-{method}-{precision}")
        if result["status"] != "ok":
            raise RuntimeError(f"validation run {method} ended {result['status']}: {result['error']}")
        task = load_task(get_task(cfg["task"]), cfg["data"])
        train_split = task.splits["train"].select(range(cfg["data"]["max_train_samples"]))
        tokenizer = load_tokenizer(spec.path, spec.config.model_type)
        encoded = batching.tokenize(DatasetDict(train=train_split), tokenizer, cfg["data"]["max_length"])
        longest = max(encoded["train"]["length"])
        precision = result_precision(cfg)
        predicted = trace_step(
            spec.config,
            method,
            batch_size=cfg["train"]["batch_size"],
            seq_len=longest,
            num_labels=task.num_labels,
            precision=precision,
            options=cfg["method_options"],
            pooling=spec.pooling,
            adamw=result["optimizer"]["implementation"],
        )
        measured = result["peak_memory_bytes"]
        rows.append(
            _row(model, method, precision, "loop.train", predicted.peak_bytes, measured, None)
            | {"measured_by": f"the run's {result['peak_memory_source']}", "seq_len": longest}
        )
    return rows


def _weighted_spec(model: str) -> ModelSpec:
    spec = resolve_spec(model)
    if spec.path is None:
        raise UserError(f"validation runs real steps: {model!r} has no weights here; use an embedded model or a folder")
    return spec


def _row(model, method, precision, path, predicted: int, tracked: int, independent: int | None) -> dict:
    """One validation row; the error is against the independent figure where there is one."""
    reference = independent if independent is not None else tracked
    return {
        "model": model,
        "method": method,
        "precision": precision,
        "measured_on": path,
        "predicted_bytes": predicted,
        "tracker_bytes": tracked,
        "independent_bytes": independent,
        "error_percent": 100 * (predicted - reference) / reference,
    }


def validate_results(results_dir: str) -> list[dict]:
    """Predicted against the peak each successful harness result recorded, at its config's batch and max_length.

    Real batches are at most max_length long (padding to the longest in the batch), so the prediction is
    an upper bound when the data has shorter texts.
    """
    rows = []
    for path in result_files(results_dir):
        result = read_result(path)
        if not result or result["status"] != "ok" or not result.get("peak_memory_bytes"):
            continue
        cfg = result["config"]
        spec = resolve_spec(cfg["model"])
        shape = Shape(cfg["train"]["batch_size"], cfg["data"]["max_length"], result["task"]["num_labels"])
        optimizer = (result.get("optimizer") or {}).get("name", "adamw")
        predicted = trace_step(
            spec.config,
            cfg["method"],
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            precision=result_precision(cfg),
            options=cfg["method_options"],
            pooling=cfg.get("pooling") or spec.pooling,
            gradient_checkpointing=cfg["train"]["gradient_checkpointing"],
            optimizer=optimizer,
            adamw=(result.get("optimizer") or {}).get("implementation") if optimizer == "adamw" else None,
            max_grad_norm=cfg["train"]["max_grad_norm"],
            grad_accum=cfg["train"]["grad_accum"],
        )
        measured = result["peak_memory_bytes"]
        rows.append(
            _row(cfg["model"], cfg["method"], result_precision(cfg), path.name, predicted.peak_bytes, measured, None)
            | {"measured_by": result["peak_memory_source"]}
        )
    return rows


def validation_rows(request: PlanRequest) -> list[dict]:
    """Predicted against measured peak per model and method (tunebench.plan with validate): the request's model, or
    MiniLM and a tiny Llama; against a results folder's recorded peaks when it names one. Without named methods,
    the methods, and on a decoder every variant too, on the causal-LM SFT step (fp32)."""
    if request.gpus is not None or request.strategy is not None:
        raise UserError("validation measures one process on this machine: it takes no gpus or strategy")
    methods = parse_methods(request.methods)
    if request.results:
        return validate_results(request.results)
    variants = [] if request.methods else [m for m in plannable(with_variants=True) if m not in methods]
    with tempfile.TemporaryDirectory() as tmp:
        models = [request.model] if request.model else ["minilm", tiny_llama_folder(Path(tmp) / "tiny-llama")]
        rows = []
        for model in models:
            rows += validate_steps(model, methods)
            if resolve_spec(model).config.model_type in DECODER_TYPES:  # the causal-LM SFT step, too
                for precision, checkpointing in itertools.product(("fp32", "bf16-mixed"), (False, True)):
                    rows += validate_steps(model, methods, VALIDATION_SHAPE, precision, checkpointing, "generate")
                rows += validate_steps(model, variants, VALIDATION_SHAPE, "fp32", False, "generate")
            rows += validate_loop(model, methods, "bf16-mixed", Path(tmp) / "runs")
    for row in rows:
        if row["model"].endswith("tiny-llama"):
            row["model"] = "tiny-llama (GQA, 4 layers)"
    return rows
