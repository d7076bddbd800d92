"""`tunebench plan`: predict each method's peak memory and step time for a GPU budget, and recommend one.

Memory comes from tracing one real training step of the actual model, method, optimizer and precision
under FakeTensorMode (tunebench.tracing), counted by the harness's own TensorTracker; FLOPs from
FlopCounterMode on the same trace. The device adds constants per GPU (configs/planner/gpus.yaml):
device bytes = tensor peak x (1 + allocator margin) + CUDA context. Time = FLOPs / (peak FLOP/s x MFU).
`--validate` runs real steps on this machine and prints prediction against measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunebench import CONFIG_DIR
from tunebench.config import read_yaml
from tunebench.errors import UserError, unknown_choice

PLANNER_DIR = CONFIG_DIR / "planner"
METHODS = ("full", "lora", "qlora", "head")  # also the order of preference: the more of the model trains, the better
GiB = 2**30
MAX_BATCH = 4096
# Model FLOPs utilization when no result calibrates it. Single-GPU fine-tuning with HF models at moderate
# batch typically reaches 30-45% of dense peak (the PaLM paper's MFU definition; 46% is its large-scale
# figure); LoRA skips the frozen weights' gradient matmuls but keeps their overheads, and QLoRA adds
# dequantization kernels that FLOPs do not count (QLoRA runs ~30-40% slower than LoRA in public reports).
DEFAULT_MFU = {"full": 0.35, "lora": 0.30, "qlora": 0.20, "head": 0.35}
BUDGET_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20}
BUDGET_UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
BUDGET_FORMAT = "a number with an optional unit: 24GiB, 24GB, 80G (= GiB), 512MiB, or plain bytes"


# -- inputs --------------------------------------------------------------------------------------
def parse_budget(text: str) -> int:
    """Bytes from '24GiB', '24GB' (decimal), '80G' (binary, as nvidia-smi and PyTorch print), '512MiB', '1e9'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in BUDGET_UNITS:
        raise UserError(f"cannot read the budget {text!r}; use {BUDGET_FORMAT}")
    value = float(match.group(1)) * BUDGET_UNITS[match.group(2)]
    if value <= 0:
        raise UserError(f"the budget must be positive, got {text!r}")
    return int(value)


def load_presets() -> dict[str, dict]:
    return read_yaml(PLANNER_DIR / "presets.yaml")


def load_gpus() -> tuple[dict[str, dict], dict]:
    raw = read_yaml(PLANNER_DIR / "gpus.yaml")
    return raw["gpus"], raw["defaults"]


@dataclass
class ModelSpec:
    name: str
    source: str  # preset | embedded | folder | config.json
    config: object  # transformers PretrainedConfig
    pooling: str  # what every method pools by default (the checkpoint's pooling)
    path: str | None = None  # a folder real models load from (validation)


def resolve_spec(name: str) -> ModelSpec:
    """A preset, an embedded model, a local folder, or a config.json path."""
    from transformers import AutoConfig

    from tunebench.models import DECODER_TYPES, EMBEDDED, default_pooling, load_config, resolve_model

    presets = load_presets()
    if name in presets:
        values = dict(presets[name])
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        return ModelSpec(name, "preset", config, "last" if config.model_type in DECODER_TYPES else "cls")
    path = Path(name)
    if path.is_file() and path.name.endswith(".json"):
        try:
            values = json.loads(path.read_text())
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        except (ValueError, KeyError) as exc:
            raise UserError(f"{path} is not a model config.json: {exc}") from None
        return ModelSpec(name, "config.json", config, "last" if config.model_type in DECODER_TYPES else "cls")
    if name in EMBEDDED or path.is_dir():
        folder = resolve_model(name)
        config = load_config(folder)
        return ModelSpec(
            name, "embedded" if name in EMBEDDED else "folder", config, default_pooling(folder, config), folder
        )
    raise unknown_choice("model", name, [*presets, *EMBEDDED, "<local folder>", "<path/to/config.json>"])


@dataclass
class Device:
    name: str
    memory_bytes: int | None
    peak_flops: float | None  # at the planned precision
    context_bytes: int
    allocator_margin: float
    source: str

    def bytes_for(self, tensor_bytes: float) -> int:
        return int(tensor_bytes * (1 + self.allocator_margin) + self.context_bytes)

    def tensor_limit(self, budget: int) -> float:
        return (budget - self.context_bytes) / (1 + self.allocator_margin)


def resolve_device(gpu: str | None, peak_tflops: float | None, precision: str) -> Device:
    gpus, defaults = load_gpus()
    if gpu is not None and gpu not in gpus:
        raise unknown_choice("GPU", gpu, list(gpus))
    entry = defaults | (gpus[gpu] if gpu else {})
    key = "fp32_tflops" if precision == "fp32" else "bf16_tflops"
    tflops = peak_tflops if peak_tflops is not None else entry.get(key)
    return Device(
        name=gpu or "unspecified GPU",
        memory_bytes=int(entry["memory_gib"] * GiB) if "memory_gib" in entry else None,
        peak_flops=tflops * 1e12 if tflops else None,
        context_bytes=int(entry["context_gib"] * GiB),
        allocator_margin=entry["allocator_margin"],
        source="--peak-tflops" if peak_tflops is not None else f"configs/planner/gpus.yaml ({gpu or 'defaults'})",
    )


# -- MFU from the user's results -----------------------------------------------------------------
def calibrate_mfu(results_dir: str | None, model: str, flops_per_token: dict[str, float]) -> dict[str, tuple]:
    """method -> (MFU, source): the median MFU of this model's successful GPU runs per method, else the default.

    A result's achieved FLOP/s is this plan's FLOPs per token x its measured tokens_per_second (non-padding
    tokens, so padding lowers the MFU: what the plan's tokens/s then means is useful tokens per second).
    """
    from tunebench.results import read_result, result_files

    gpus, _ = load_gpus()
    found: dict[str, list[float]] = {}
    for path in result_files(results_dir) if results_dir else ():
        result = read_result(path)
        if not result or result["status"] != "ok" or not (result.get("environment") or {}).get("gpu"):
            continue
        cfg, gpu_name = result["config"], result["environment"]["gpu"]["name"]
        method = cfg.get("method")
        entry = _match_gpu(gpus, gpu_name)
        if (
            method not in flops_per_token
            or cfg.get("model") != model
            or not entry
            or not result.get("tokens_per_second")
        ):
            continue
        precision_key = "bf16_tflops" if cfg["train"].get("mixed_precision") in ("bf16", "fp16") else "fp32_tflops"
        achieved = flops_per_token[method] * result["tokens_per_second"]
        found.setdefault(method, []).append(achieved / (entry[precision_key] * 1e12))
    out = {}
    for method in flops_per_token:
        if found.get(method):
            out[method] = (statistics.median(found[method]), f"calibrated: median of {len(found[method])} result(s)")
        else:
            out[method] = (DEFAULT_MFU[method], "default (no matching GPU result)")
    return out


def _match_gpu(gpus: dict, device_name: str) -> dict | None:
    """The gpus.yaml entry whose `match` is the longest substring of a CUDA device name."""
    hits = [e for e in gpus.values() if e["match"].lower() in device_name.lower()]
    return max(hits, key=lambda e: len(e["match"]), default=None)


# -- planning ------------------------------------------------------------------------------------
@dataclass
class MethodPlan:
    method: str
    batch_size: int
    tensor_peak_bytes: int
    at_peak: dict
    state: dict  # full-size weights / gradients / optimizer state
    device_bytes: int
    fits: bool | None
    spare_bytes: int | None
    max_batch: int | None
    trainable_params: int
    total_params: int
    flops_per_step: int
    mfu: float
    mfu_source: str
    step_seconds: float | None
    tokens_per_second: float | None
    extra: dict = field(default_factory=dict)


@dataclass
class Shape:
    batch_size: int
    seq_len: int
    num_labels: int


def plan_method(
    spec: ModelSpec,
    method: str,
    shape: Shape,
    precision: str,
    device: Device,
    budget: int | None,
    options: dict,
    gradient_checkpointing: bool = False,
    full_depth: bool = False,
) -> tuple[object, int | None]:
    """The trace at the requested batch (with FLOPs) and the largest batch that fits the budget.

    The largest batch comes from a second trace at twice the batch: the peak at any batch follows from the two.
    A deep model is traced 2 and 3 repeats of its layer pattern deep and extrapolated to its depth in the same
    way (tracing.extrapolate_depth), unless full_depth.
    """
    from tunebench.tracing import affine_max_batch, extrapolation_depths, trace_step, trace_step_extrapolated

    depths = None if full_depth else extrapolation_depths(spec.config)

    def trace(batch: int, count_flops: bool):
        nonlocal depths
        kwargs = {
            "batch_size": batch,
            "seq_len": shape.seq_len,
            "num_labels": shape.num_labels,
            "precision": precision,
            "options": options,
            "pooling": spec.pooling,
            "gradient_checkpointing": gradient_checkpointing,
            "count_flops": count_flops,
        }
        if depths:
            step = trace_step_extrapolated(spec.config, method, depths, **kwargs)
            if step is not None:
                return step
            depths = None  # the short stacks' steps did not line up: trace every layer from here on
        return trace_step(spec.config, method, **kwargs)

    step = trace(shape.batch_size, True)
    max_batch = None
    if budget is not None:
        limit = device.tensor_limit(budget)
        max_batch = affine_max_batch(step, trace(2 * shape.batch_size, False), limit, MAX_BATCH)
        if max_batch is None:  # the two traces ran different ops: search by traces instead
            max_batch = _search_max_batch(lambda b: trace(b, False).peak_bytes <= limit)
    return step, max_batch


def _search_max_batch(fits) -> int:
    """Double until it does not fit, then bisect."""
    if not fits(1):
        return 0
    low = 1
    while low * 2 <= MAX_BATCH and fits(low * 2):
        low *= 2
    high = min(low * 2, MAX_BATCH + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _method_plan(method: str, step, device: Device, budget: int | None, max_batch, mfu: tuple) -> MethodPlan:
    mfu, mfu_source = mfu
    device_bytes = device.bytes_for(step.peak_bytes)
    seconds = step.flops / (device.peak_flops * mfu) if device.peak_flops else None
    return MethodPlan(
        method=method,
        batch_size=step.batch_size,
        tensor_peak_bytes=step.peak_bytes,
        at_peak=step.at_peak,
        state=step.state,
        device_bytes=device_bytes,
        fits=device_bytes <= budget if budget is not None else None,
        spare_bytes=budget - device_bytes if budget is not None else None,
        max_batch=max_batch,
        trainable_params=step.trainable_params,
        total_params=step.total_params,
        flops_per_step=step.flops,
        mfu=mfu,
        mfu_source=mfu_source,
        step_seconds=seconds,
        tokens_per_second=step.batch_size * step.seq_len / seconds if seconds else None,
    )


ADAM8BIT_BYTES = 2 + 2 * 4 / 256  # bitsandbytes AdamW8bit: two uint8 states + one fp32 absmax per 256 values each


def optimizer_8bit_bytes(plan: MethodPlan, state_bytes_per_value: int) -> int:
    """Tensor peak with AdamW's two states in 8 bits (bitsandbytes, blockwise): an estimate, not a trace."""
    saved = plan.at_peak["optimizer_state"] * (1 - ADAM8BIT_BYTES / (2 * state_bytes_per_value))
    return int(plan.tensor_peak_bytes - saved)


def recommend(plans: list[MethodPlan], budget: int | None) -> str:
    """The most-adapting method that fits at the requested batch, why, and what the others would need."""
    if budget is None:
        return "no budget given (--budget or --gpu): nothing to recommend"
    plans = sorted(plans, key=lambda p: METHODS.index(p.method))
    fitting = [p for p in plans if p.fits]
    if not fitting:
        return f"nothing fits {_gib(budget)} at batch {plans[0].batch_size}; see the next steps"
    best = fitting[0]
    reason = f"{best.method}: fits at batch {best.batch_size} with {_gib(best.spare_bytes)} to spare"
    others = [p for p in fitting[1:] if p.tokens_per_second and best.tokens_per_second]
    if others:
        ratio = best.tokens_per_second / others[0].tokens_per_second
        reason += f", est. {ratio:.1f}x the throughput of {others[0].method}"
    needs = [
        f"{p.method} needs {_gib(p.device_bytes)}"
        for p in plans
        if not p.fits and METHODS.index(p.method) < METHODS.index(best.method)
    ]
    return "; ".join([reason, *needs])


def next_steps(
    spec: ModelSpec,
    shape: Shape,
    precision: str,
    device: Device,
    budget: int,
    options: dict,
    plans: list[MethodPlan],
    full_depth: bool = False,
) -> list[str]:
    """When nothing fits: a smaller batch, gradient checkpointing (traced), 8-bit optimizer states (estimated)."""
    from tunebench.tracing import PRECISIONS

    steps = []
    for plan in plans:
        if plan.max_batch:
            accum = math.ceil(shape.batch_size / plan.max_batch)
            steps.append(
                f"{plan.method} fits at batch {plan.max_batch}: --batch-size {plan.max_batch} "
                f"--set train.grad_accum={accum} keeps an effective batch of {plan.max_batch * accum}"
            )
    for plan in plans:
        if plan.method == "head":  # its backbone saves nothing for backward already
            continue
        step, max_batch = plan_method(
            spec, plan.method, shape, precision, device, budget, options[plan.method], True, full_depth
        )
        need = device.bytes_for(step.peak_bytes)
        steps.append(
            f"{plan.method} with gradient checkpointing (--set train.gradient_checkpointing=true) "
            f"{'fits' if need <= budget else 'still needs'} {_gib(need)} at batch {shape.batch_size} "
            f"(traced; largest batch {max_batch})"
        )
    value_bytes = PRECISIONS[precision][0].itemsize
    for plan in plans:
        if plan.method == "full":
            need = device.bytes_for(optimizer_8bit_bytes(plan, value_bytes))
            verdict = "fits" if need <= budget else "still needs"
            steps.append(
                f"full with 8-bit AdamW states (bitsandbytes AdamW8bit, not in tunebench's loop) {verdict} "
                f"~{_gib(need)} (estimate)"
            )
    return steps


def _gib(value: float) -> str:
    return f"{value / GiB:.1f} GiB"


# -- the command ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="a preset (llama-3.1-8b, qwen2.5-7b, ...), an embedded model, a folder, or a config.json"
    )
    parser.add_argument("--budget", help="GPU memory to plan for, e.g. 24GiB, 24GB, 80G, 512MiB (default: the GPU's)")
    parser.add_argument("--task", help="take the sequence length and labels from a registered task")
    parser.add_argument("--seq-len", type=int, help="tokens per example (default: the task's max_length, else 512)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default: 8)")
    parser.add_argument("--num-labels", type=int, help="classes (default: the task's, else 2)")
    parser.add_argument(
        "--precision",
        default="bf16",
        choices=("bf16", "fp32", "amp"),
        help="bf16: pure bf16 weights/grads/AdamW state with bf16 autocast (default); "
        "amp: fp32 weights with bf16 autocast; fp32: everything fp32",
    )
    parser.add_argument("--gpu", help="a GPU from configs/planner/gpus.yaml (h100-80g, a100-40g, l4, rtx4090, ...)")
    parser.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s at the precision, instead of the GPU's")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of full,lora,qlora,head")
    parser.add_argument("--results", help="a results folder: calibrates MFU (and, with --validate, checks peaks)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--validate", action="store_true", help="compare predictions with real steps on this machine")
    parser.add_argument(
        "--full-depth",
        action="store_true",
        help="trace every layer instead of extrapolating a deep model from 2 and 3 of its layers (slower, same result)",
    )


def run_plan(args: argparse.Namespace) -> int:
    if args.validate:
        return run_validate(args)
    if not args.model:
        raise UserError("plan needs --model (a preset, an embedded model, a folder, or a config.json)")
    methods = _parse_methods(args.methods)
    device = resolve_device(args.gpu, args.peak_tflops, args.precision)
    budget = parse_budget(args.budget) if args.budget else device.memory_bytes
    spec = resolve_spec(args.model)
    shape = _shape(args)
    started = time.perf_counter()
    plan = make_plan(spec, shape, args.precision, device, budget, methods, args.results, args.full_depth)
    plan["seconds_to_plan"] = round(time.perf_counter() - started, 1)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def make_plan(
    spec: ModelSpec,
    shape: Shape,
    precision: str,
    device: Device,
    budget,
    methods,
    results=None,
    full_depth: bool = False,
) -> dict:
    from tunebench.methods import get_method
    from tunebench.tracing import attention_implementation, build_meta_model, with_depth

    options = {m: dict(get_method(m).DEFAULTS["method_options"]) for m in methods}
    traces = {
        m: plan_method(spec, m, shape, precision, device, budget, options[m], full_depth=full_depth) for m in methods
    }
    flops_per_token = {m: step.flops / (shape.batch_size * shape.seq_len) for m, (step, _) in traces.items()}
    mfu = calibrate_mfu(results, spec.name, flops_per_token)
    plans = [_method_plan(m, step, device, budget, max_batch, mfu[m]) for m, (step, max_batch) in traces.items()]
    attention = attention_implementation(  # one layer tells, and building 80 costs seconds
        build_meta_model(with_depth(spec.config, 1), "full", num_labels=2, precision=precision, options={})
    )
    layers = spec.config.num_hidden_layers
    depths = {step.depths for step, _ in traces.values()}
    out = {
        "model": {"name": spec.name, "source": spec.source, "model_type": spec.config.model_type},
        "shape": asdict(shape),
        "precision": precision,
        "device": asdict(device),
        "budget_bytes": budget,
        "assumptions": [
            f"attention: {attention}"
            + (" (fused kernel: no s x s matrix saved)" if attention == "sdpa" else " (saves the s x s scores)"),
            "traced with CPU kernels under FakeTensorMode; full-length batches (no padding)",
            *(
                f"depth: traced {' and '.join(map(str, d))} of {layers} layers, extrapolated (affine in depth)"
                if len(d) == 2
                else f"depth: traced all {layers} layers"
                for d in sorted(depths)
            ),
            f"device bytes = tensor peak x {1 + device.allocator_margin:.2f} "
            f"+ {_gib(device.context_bytes)} CUDA context",
            "qlora: bitsandbytes NF4 double-quant base (~0.516 byte/weight), other weights fp32, LoRA adapters fp32",
            "head: frozen backbone run under no_grad each step (cache_features runs it once per example instead)",
        ],
        "methods": [asdict(p) for p in plans],
        "recommendation": recommend(plans, budget),
    }
    if budget is not None and not any(p.fits for p in plans):
        out["next_steps"] = next_steps(spec, shape, precision, device, budget, options, plans, full_depth)
    return out


def _parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise unknown_choice("method", method, METHODS)
    return methods


def _shape(args: argparse.Namespace) -> Shape:
    seq_len, num_labels = 512, 2
    if args.task:
        from tunebench.config import build_config
        from tunebench.tasks import get_task, load_task

        cfg = build_config(None, args.task, None, {})
        seq_len = cfg["data"]["max_length"]
        spec = get_task(args.task)
        num_labels = len(spec.label_names) if spec.label_names else load_task(spec, cfg["data"]).num_labels
    shape = Shape(args.batch_size or 8, args.seq_len or seq_len, args.num_labels or num_labels)
    if min(shape.batch_size, shape.seq_len) < 1 or shape.num_labels < 2:
        raise UserError("--batch-size and --seq-len must be at least 1, --num-labels at least 2")
    return shape


def format_plan(plan: dict) -> str:
    device, shape = plan["device"], plan["shape"]
    budget = plan["budget_bytes"]
    lines = [
        f"{plan['model']['name']} ({plan['model']['source']}, {plan['model']['model_type']}): "
        f"batch {shape['batch_size']} x {shape['seq_len']} tokens, {shape['num_labels']} labels, {plan['precision']}; "
        f"budget {_gib(budget) if budget else 'none'} on {device['name']}"
        + (f" ({device['peak_flops'] / 1e12:.0f} TFLOP/s peak)" if device["peak_flops"] else ""),
        "",
        f"{'method':7} {'trainable':>10} {'peak':>9} {'weights':>8} {'grads':>8} {'optim':>8} {'activ':>8} {'other':>8}"
        f" {'device':>9} {'fits':>4} {'max bs':>6} {'TFLOP':>8} {'s/step':>7} {'tok/s':>8} {'MFU':>5}",
    ]
    for p in plan["methods"]:
        at = p["at_peak"]
        seconds = f"{p['step_seconds']:.3f}" if p["step_seconds"] else "-"
        tokens = f"{p['tokens_per_second']:.0f}" if p["tokens_per_second"] else "-"
        fits = "-" if p["fits"] is None else ("yes" if p["fits"] else "no")
        lines.append(
            f"{p['method']:7} {p['trainable_params'] / 1e6:9.1f}M {_g(p['tensor_peak_bytes']):>9}"
            f" {_g(at['weights']):>8} {_g(at['gradients']):>8} {_g(at['optimizer_state']):>8}"
            f" {_g(at['activations']):>8} {_g(at['other']):>8}"
            f" {_g(p['device_bytes']):>9} {fits:>4} {p['max_batch'] if p['max_batch'] is not None else '-':>6}"
            f" {p['flops_per_step'] / 1e12:8.2f} {seconds:>7} {tokens:>8} {p['mfu']:5.2f}"
        )
    lines += ["", "GiB; weights..other: tensors live at the peak (other: inputs, logits/loss, temporaries)."]
    lines += [f"MFU {p['method']}: {p['mfu']:.2f}, {p['mfu_source']}" for p in plan["methods"]]
    lines += [f"assumes {a}" for a in plan["assumptions"]]
    lines += [f"device constants from {device['source']}; planned in {plan.get('seconds_to_plan', '?')} s", ""]
    lines.append(f"recommendation: {plan['recommendation']}")
    lines += [f"  next step: {s}" for s in plan.get("next_steps", [])]
    return "\n".join(lines)


def _g(value: float) -> str:
    return f"{value / GiB:.2f}"


# -- validation ----------------------------------------------------------------------------------
VALIDATION_SHAPE = Shape(batch_size=8, seq_len=64, num_labels=2)


def tiny_llama_folder(folder: str | Path) -> str:
    """A small random Llama checkpoint (4 layers, hidden 256) saved once: the decoder validation model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").exists():
        config = LlamaConfig(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=8192,
            max_position_embeddings=512,
            pad_token_id=0,
            dtype="float32",
        )
        LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def validate(model: str, methods: list[str], shape: Shape = VALIDATION_SHAPE) -> list[dict]:
    """Per method: the fake-trace prediction against two real steps on this machine (fp32)."""
    import torch

    from tunebench.methods import get_method
    from tunebench.tracing import measure_step, trace_step

    spec = resolve_spec(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for method in methods:
        predicted = trace_step(
            spec.config,
            method,
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            precision="fp32",
            options=dict(get_method(method).DEFAULTS["method_options"]),
            pooling=spec.pooling,
        )
        measured = measure_step(
            spec.path,
            method,
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            device=device,
        )
        rows.append(
            {
                "model": model,
                "method": method,
                "predicted_bytes": predicted.peak_bytes,
                "measured_bytes": measured.peak_bytes,
                "error_percent": 100 * (predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes,
                "measured_by": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "TensorTracker (CPU)",
            }
        )
    return rows


def validate_results(results_dir: str) -> list[dict]:
    """Predicted against the peak each successful harness result recorded, at its config's batch and max_length.

    Real batches are at most max_length long (padding to the longest in the batch), so the prediction is
    an upper bound when the data has shorter texts.
    """
    from tunebench.results import read_result, result_files

    rows = []
    for path in result_files(results_dir):
        result = read_result(path)
        if not result or result["status"] != "ok" or not result.get("peak_memory_bytes"):
            continue
        cfg = result["config"]
        precision = "fp32" if cfg["train"]["mixed_precision"] == "no" else "amp"
        spec = resolve_spec(cfg["model"])
        shape = Shape(cfg["train"]["batch_size"], cfg["data"]["max_length"], result["task"]["num_labels"])
        from tunebench.tracing import trace_step

        predicted = trace_step(
            spec.config,
            cfg["method"],
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            precision=precision,
            options=cfg["method_options"],
            pooling=cfg.get("pooling") or spec.pooling,
            gradient_checkpointing=cfg["train"]["gradient_checkpointing"],
        )
        measured = result["peak_memory_bytes"]
        rows.append(
            {
                "model": cfg["model"],
                "method": cfg["method"],
                "predicted_bytes": predicted.peak_bytes,
                "measured_bytes": measured,
                "error_percent": 100 * (predicted.peak_bytes - measured) / measured,
                "measured_by": f"{path.name}: {result['peak_memory_source']}",
            }
        )
    return rows


def run_validate(args: argparse.Namespace) -> int:
    import tempfile

    methods = _parse_methods(args.methods)
    if args.results:
        rows = validate_results(args.results)
    elif args.model:
        rows = validate(args.model, methods)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = validate("minilm", methods) + validate(tiny_llama_folder(Path(tmp) / "tiny-llama"), methods)
        for row in rows[len(methods) :]:
            row["model"] = "tiny-llama (4 layers, hidden 256)"
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':36} {'method':7} {'predicted MiB':>14} {'measured MiB':>13} {'error':>8}  measured by")
    for row in rows:
        print(
            f"{row['model'][:36]:36} {row['method']:7} {row['predicted_bytes'] / 2**20:14.2f} "
            f"{row['measured_bytes'] / 2**20:13.2f} {row['error_percent']:+7.2f}%  {row['measured_by']}"
        )
    return 0
