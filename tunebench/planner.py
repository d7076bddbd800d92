"""`tunebench plan`: predict each method's peak memory and step time for a GPU budget, and recommend one.

It plans the run `tunebench train` would launch with the same config flags (planned_run): each method's
config through the same layering, and from it what changes one training step (HONOURED).

Memory comes from tracing one real training step of the actual model, method, optimizer and precision
under FakeTensorMode (tunebench.tracing), counted by the harness's own TensorTracker; FLOPs from
FlopCounterMode on the same trace. The device adds constants per GPU (configs/planner/gpus.yaml):
device bytes = tensor peak x (1 + allocator margin) + CUDA context. Time = FLOPs / (peak FLOP/s x MFU).
`--validate` runs real steps on this machine and prints prediction against measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunebench.errors import UserError, unknown_choice
from tunebench.files import CONFIG_DIR, read_yaml
from tunebench.units import GiB, MiB, format_gib

PLANNER_DIR = CONFIG_DIR / "planner"
MAX_BATCH = 4096
MAX_SEQ_LEN = 2**20  # for a model that states no max_position_embeddings
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

    from tunebench.models.hub import DECODER_TYPES, EMBEDDED, default_pooling, load_config, resolve_model

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


@dataclass
class Shape:
    batch_size: int
    seq_len: int
    num_labels: int


# -- MFU from the user's results -----------------------------------------------------------------
def result_precision(cfg: dict) -> str:
    """The planner precision a harness run trained in: fp32 weights, with bf16/fp16 autocast or without."""
    return "fp32" if cfg["train"]["mixed_precision"] == "no" else "amp"


def calibrate_mfu(
    results_dir: str | None, model: str, precision: str, shape: Shape, flops_per_token: dict[str, float]
) -> dict[str, tuple]:
    """method -> (MFU, source): the median MFU of matching successful GPU runs per method, else the default.

    A run matches when it trained this model, in this precision, at this batch size and max_length, on a GPU
    of configs/planner/gpus.yaml (exact name). Its achieved FLOP/s is this plan's FLOPs per token x its
    measured tokens_per_second (non-padding tokens, so padding lowers the MFU: what the plan's tokens/s then
    means is useful tokens per second). An MFU above 1 is impossible and is clipped to 1.
    """
    from tunebench.methods import get_method
    from tunebench.results import read_result, result_files

    gpus, _ = load_gpus()
    found: dict[str, list[float]] = {}
    for path in result_files(results_dir) if results_dir else ():
        result = read_result(path)
        if not result or result["status"] != "ok" or not (result.get("environment") or {}).get("gpu"):
            continue
        cfg = result["config"]
        method = cfg.get("method")
        entry = match_gpu(gpus, result["environment"]["gpu"]["name"])
        if (
            method not in flops_per_token
            or cfg.get("model") != model
            or result_precision(cfg) != precision
            or (cfg["train"]["batch_size"], cfg["data"]["max_length"]) != (shape.batch_size, shape.seq_len)
            or not entry
            or not result.get("tokens_per_second")
        ):
            continue
        peak = entry["fp32_tflops" if precision == "fp32" else "bf16_tflops"] * 1e12
        found.setdefault(method, []).append(min(1.0, flops_per_token[method] * result["tokens_per_second"] / peak))
    out = {}
    for method in flops_per_token:
        if found.get(method):
            out[method] = (statistics.median(found[method]), f"calibrated: median of {len(found[method])} result(s)")
        else:
            mfu = get_method(method).PLANNING.mfu
            out[method] = (mfu, "the method's default (no GPU result of this model, precision and shape)")
    return out


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'geforce rtx 4090': case, spacing and the vendor prefix do not matter."""
    name = " ".join(name.lower().split())
    return name.removeprefix("nvidia ")


def match_gpu(gpus: dict, device_name: str) -> dict | None:
    """The gpus.yaml entry that lists this CUDA device name (torch.cuda.get_device_name), normalized; exact,
    so that an A100 80GB PCIe never takes an A10's figures, nor an L40 an L4's."""
    name = normalize_gpu_name(device_name)
    return next((e for e in gpus.values() if name in map(normalize_gpu_name, e["names"])), None)


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
    max_seq_len: int | None  # at batch_size
    max_seq_len_batch1: int | None
    trainable_params: int
    total_params: int
    flops_per_step: int
    mfu: float
    mfu_source: str
    step_seconds: float | None
    tokens_per_second: float | None
    extra: dict = field(default_factory=dict)


@dataclass
class Limits:
    """What fits the budget, by varying one dimension of the planned step."""

    max_batch: int | None = None  # at the planned sequence length
    max_seq_len: int | None = None  # at the planned batch size
    max_seq_len_batch1: int | None = None  # at batch size 1


def plan_method(
    spec: ModelSpec,
    method: str,
    shape: Shape,
    precision: str,
    device: Device,
    budget: int | None,
    settings: dict,
    full_depth: bool = False,
    seq_limits: bool = True,
    sharding=None,
    traced: dict | None = None,
) -> tuple[object, Limits]:
    """The trace at the requested batch (with FLOPs) and the largest batch (and sequence length) within budget.

    settings: the trace_step keywords the run's config sets (step_settings: method options, optimizer, ...).

    sharding (tunebench.sharding.Sharding): the traces as one rank of several GPUs holds them.

    traced: trace_step's results for first_traces' calls, run already (prefetch_traces); others are traced here.

    The largest batch comes from a second trace at twice the batch: the peak at any batch follows from the two.
    With seq_limits, a third trace at another sequence length gives the largest sequence length at the planned
    batch and at batch 1 (tracing.max_seq_len), up to the model's max_position_embeddings. A deep model is traced
    2 and 3 repeats of its layer pattern deep and extrapolated to its depth in the same way
    (tracing.extrapolate_depth), unless full_depth.
    """
    from tunebench.tracing import (
        affine_max_batch,
        extrapolation_depths,
        max_seq_len,
        trace_step,
        trace_step_extrapolated,
    )

    depths = None if full_depth else extrapolation_depths(spec.config)
    traced = dict(traced or {})

    def trace_or_traced(config, method: str, **kwargs):
        key = (config.num_hidden_layers, kwargs["batch_size"], kwargs["seq_len"], kwargs["count_flops"])
        return traced.pop(key) if key in traced else trace_step(config, method, **kwargs)

    def trace(batch: int, count_flops: bool = False, seq_len: int = shape.seq_len):
        step = trace_one(batch, count_flops, seq_len)
        return sharding.step(step) if sharding else step

    def trace_one(batch: int, count_flops: bool, seq_len: int):
        nonlocal depths
        kwargs = {
            "batch_size": batch,
            "seq_len": seq_len,
            "num_labels": shape.num_labels,
            "precision": precision,
            "count_flops": count_flops,
            **settings,
        }
        if depths:
            step = trace_step_extrapolated(spec.config, method, depths, trace_or_traced, **kwargs)
            if step is not None:
                return step
            depths = None  # the short stacks' steps did not line up: trace every layer from here on
        return trace_or_traced(spec.config, method, **kwargs)

    step = trace(shape.batch_size, True)
    limits = Limits()
    if budget is None:
        return step, limits
    limit = device.tensor_limit(budget)
    double_batch = trace(2 * shape.batch_size)
    limits.max_batch = affine_max_batch(step, double_batch, limit, MAX_BATCH)
    if limits.max_batch is None:  # the two traces ran different ops: search by traces instead
        limits.max_batch = _search_max(lambda b: trace(b).peak_bytes <= limit, MAX_BATCH)
    cap, other = _other_seq_len(spec, shape)
    if not seq_limits or other < 1:
        return step, limits
    other_seq = trace(shape.batch_size, seq_len=other)
    for batch, name in ((shape.batch_size, "max_seq_len"), (1, "max_seq_len_batch1")):
        found = max_seq_len(step, double_batch, other_seq, limit, batch, cap)
        if found is None:  # the traces ran different ops: search by traces instead
            found = _search_max(lambda s, batch=batch: trace(batch, seq_len=s).peak_bytes <= limit, cap)
        setattr(limits, name, found)
    return step, limits


def _other_seq_len(spec: ModelSpec, shape: Shape) -> tuple[int, int]:
    """The model's longest sequence, and the second sequence length plan_method traces below it."""
    cap = getattr(spec.config, "max_position_embeddings", None) or MAX_SEQ_LEN
    return cap, 2 * shape.seq_len if 2 * shape.seq_len <= cap else shape.seq_len // 2


def first_traces(
    spec: ModelSpec, shape: Shape, budget: int | None, seq_limits: bool, full_depth: bool
) -> list[tuple[int, int, int, bool]]:
    """The trace_step calls plan_method starts from, as (layers, batch, seq_len, count_flops): the planned step with
    its FLOPs; with a budget, twice its batch, and with seq_limits too another sequence length; each at the two
    extrapolation depths, or at the model's own."""
    from tunebench.tracing import extrapolation_depths

    shapes = [(shape.batch_size, shape.seq_len, True)]
    if budget is not None:
        shapes.append((2 * shape.batch_size, shape.seq_len, False))
        _, other = _other_seq_len(spec, shape)
        if seq_limits and other >= 1:
            shapes.append((shape.batch_size, other, False))
    depths = (None if full_depth else extrapolation_depths(spec.config)) or (spec.config.num_hidden_layers,)
    return [(layers, *traced) for traced in shapes for layers in depths]


def prefetch_traces(
    spec: ModelSpec,
    shape: Shape,
    precision: str,
    budget: int | None,
    runs: list[tuple[str, dict]],
    full_depth: bool = False,
    seq_limits: bool = True,
) -> list[dict]:
    """For each (method, settings) of runs, plan_method's first traces (first_traces), all run over the cores
    together (map_forked): plan_method's `traced`."""
    from tunebench.tracing import trace_step, with_depth

    keys = first_traces(spec, shape, budget, seq_limits, full_depth)
    depths = len({layers for layers, *_ in keys})
    # by shape, then method: a worker takes a trace's depths together and shapes other methods traced too, whose
    # ops FakeTensorMode's cache (one per process) has seen
    order = [
        (run, key)
        for pair in range(0, len(keys), depths)
        for run in range(len(runs))
        for key in range(pair, pair + depths)
    ]
    calls = [
        {
            "config": with_depth(spec.config, keys[key][0]),
            "method": runs[run][0],
            "batch_size": keys[key][1],
            "seq_len": keys[key][2],
            "count_flops": keys[key][3],
            "num_labels": shape.num_labels,
            "precision": precision,
            **runs[run][1],
        }
        for run, key in order
    ]
    # peft imports bitsandbytes whenever it is installed, and bitsandbytes sets up torch.compile at import (about
    # 1.5 s a process on 2 cores); the traces stand in for its 4-bit layers and need it only for its optimizers
    from tunebench.optim import BITSANDBYTES_CLASSES

    needs_bitsandbytes = any(settings["optimizer"] in BITSANDBYTES_CLASSES for _, settings in runs)
    unimportable = () if needs_bitsandbytes else ("bitsandbytes",)
    steps = dict(zip(order, map_forked(trace_step, calls, depths, unimportable), strict=True))
    return [{keys[key]: steps[run, key] for key in range(len(keys))} for run in range(len(runs))]


def map_forked(fn, calls: list[dict], chunksize: int = 1, unimportable: tuple[str, ...] = ()) -> list:
    """[fn(**kwargs) for kwargs in calls], spread over this machine's cores: each call runs in a process forked from
    this one, which shares the libraries it has imported (most of a plan's start-up), chunksize consecutive calls
    in the same one; in those processes the packages `unimportable` (not imported here) fail to import, as if
    not installed. Here, one call after another, where there is one core or no fork (not Linux). fn and the
    calls' values must pickle (a module's function)."""
    workers = min(len(calls), len(os.sched_getaffinity(0))) if sys.platform == "linux" else 1
    if workers < 2:
        return [fn(**kwargs) for kwargs in calls]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker, initargs=(unimportable,)) as pool:
        return list(pool.map(_call, itertools.repeat(fn), calls, chunksize=chunksize))


def _worker(unimportable: tuple[str, ...]) -> None:
    """A forked worker's torch runs on one thread: the traces are fake, and the OpenMP pool is not fork-safe."""
    import torch

    torch.set_num_threads(1)
    for package in unimportable:
        sys.modules.setdefault(package, None)  # `import package` raises ImportError; find_spec finds nothing


def _call(fn, kwargs: dict):
    return fn(**kwargs)


def _search_max(fits, cap: int) -> int:
    """The largest n <= cap with fits(n), fits monotone: double until it does not fit, then bisect."""
    if not fits(1):
        return 0
    low = 1
    while low * 2 <= cap and fits(low * 2):
        low *= 2
    high = min(low * 2, cap + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _method_plan(
    method: str, step, grad_accum: int, device: Device, budget: int | None, limits: Limits, mfu: tuple
) -> MethodPlan:
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
        max_batch=limits.max_batch,
        max_seq_len=limits.max_seq_len,
        max_seq_len_batch1=limits.max_seq_len_batch1,
        trainable_params=step.trainable_params,
        total_params=step.total_params,
        flops_per_step=step.flops,
        mfu=mfu,
        mfu_source=mfu_source,
        step_seconds=seconds,
        tokens_per_second=grad_accum * step.batch_size * step.seq_len / seconds if seconds else None,
    )


def recommend(plans: list[MethodPlan], budget: int | None) -> str:
    """The most-adapting method that fits at the requested batch, why, and what the others would need."""
    if budget is None:
        return "no budget given (--budget or --gpu): nothing to recommend"
    from tunebench.methods import plannable

    order = plannable()  # most preferred first
    plans = sorted(plans, key=lambda p: order.index(p.method))
    fitting = [p for p in plans if p.fits]
    if not fitting:
        return f"nothing fits {format_gib(budget)} at batch {plans[0].batch_size}; see the next steps"
    best = fitting[0]
    reason = f"{best.method}: fits at batch {best.batch_size} with {format_gib(best.spare_bytes)} to spare"
    others = [p for p in fitting[1:] if p.tokens_per_second and best.tokens_per_second]
    if others:
        ratio = best.tokens_per_second / others[0].tokens_per_second
        reason += f", est. {ratio:.1f}x the throughput of {others[0].method}"
    needs = [
        f"{p.method} needs {format_gib(p.device_bytes)}"
        for p in plans
        if not p.fits and order.index(p.method) < order.index(best.method)
    ]
    return "; ".join([reason, *needs])


def next_steps(
    spec: ModelSpec,
    shape: Shape,
    precision: str,
    device: Device,
    budget: int,
    settings: dict[str, dict],
    plans: list[MethodPlan],
    full_depth: bool = False,
    shardings: dict | None = None,
) -> list[str]:
    """When nothing fits: a smaller batch with more accumulation, then what the config does not use yet, traced:
    gradient checkpointing, and 8-bit AdamW states where the optimizer state is large; only steps that save memory."""
    steps = []
    for plan in plans:
        if plan.max_batch:
            effective = shape.batch_size * settings[plan.method]["grad_accum"]
            accum = math.ceil(effective / plan.max_batch)
            steps.append(
                f"{plan.method} fits at batch {plan.max_batch}: --batch-size {plan.max_batch} "
                f"--set train.grad_accum={accum} keeps an effective batch of {plan.max_batch * accum}"
            )
    tries = [
        ("gradient_checkpointing", True, "gradient checkpointing", "--set train.gradient_checkpointing=true"),
        ("optimizer", "adamw_8bit", "8-bit AdamW states", "--set train.optimizer=adamw_8bit"),
    ]
    tried = []
    for key, value, what, flag in tries:
        for plan in plans:
            if settings[plan.method][key] == value:
                continue
            if key == "optimizer" and plan.at_peak.get("optimizer_state", 0) < plan.tensor_peak_bytes / 10:
                continue  # small optimizer state (adapters, a head): little to save
            tried.append((plan, what, flag, settings[plan.method] | {key: value}))
    prefetched = prefetch_traces(
        spec, shape, precision, budget, [(p.method, s) for p, _, _, s in tried], full_depth, seq_limits=False
    )
    for (plan, what, flag, plan_settings), traced in zip(tried, prefetched, strict=True):
        step, limits = plan_method(
            spec,
            plan.method,
            shape,
            precision,
            device,
            budget,
            plan_settings,
            full_depth,
            seq_limits=False,
            sharding=(shardings or {}).get(plan.method),
            traced=traced,
        )
        if step.peak_bytes >= plan.tensor_peak_bytes:  # nothing to gain (head: a frozen backbone saves nothing)
            continue
        need = device.bytes_for(step.peak_bytes)
        steps.append(
            f"{plan.method} with {what} ({flag}) {'fits' if need <= budget else 'still needs'} "
            f"{format_gib(need)} at batch {shape.batch_size} (traced; largest batch {limits.max_batch})"
        )
    return steps


# -- the command ---------------------------------------------------------------------------------
# The config keys one training step depends on, which the plan traces; every other key (epochs, lr, seed, what
# is saved, evaluation, sample caps, ...) changes the run but not one step of it. data's columns and encoding
# say how to read the task's data (its labels). README "Plan before you train" lists them.
HONOURED = (
    "model",
    "method",
    "task",
    "pooling",
    "method_options.*",
    "data.max_length",
    "data.task_type",
    "data.text_column",
    "data.text_pair_column",
    "data.label_column",
    "data.prompt_column",
    "data.answer_column",
    "data.messages_column",
    "data.encoding",
    "train.batch_size",
    "train.grad_accum",
    "train.gradient_checkpointing",
    "train.mixed_precision",
    "train.optimizer",
    "train.adamw",
    "train.max_grad_norm",
)


def honoured(key: str) -> bool:
    return key in HONOURED or key.startswith("method_options.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunebench.cli import add_config_arguments

    add_config_arguments(parser)  # the same run's config as `train` builds, from the same flags
    parser.add_argument("--seq-len", dest="max_length", type=int, help="tokens per example: --max-length's alias")
    parser.add_argument("--budget", help="GPU memory to plan for, e.g. 24GiB, 24GB, 80G, 512MiB (default: the GPU's)")
    parser.add_argument("--num-labels", type=int, help="classes (default: the task's)")
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32", "amp"),
        help="default: the run's (the checkpoint's dtype, autocast if train.mixed_precision is set); "
        "bf16: pure bf16 weights/grads/AdamW state; amp: fp32 weights with bf16 autocast; fp32: everything fp32",
    )
    parser.add_argument("--gpu", help="a GPU from configs/planner/gpus.yaml (h100-80g, a100-40g, l4, rtx4090, ...)")
    parser.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s at the precision, instead of the GPU's")
    from tunebench.methods import plannable

    parser.add_argument(
        "--methods",
        help=f"comma-separated subset of {','.join(plannable())} to compare (default: --method's, else all)",
    )
    parser.add_argument("--results", help="a results folder: calibrates MFU (and, with --validate, checks peaks)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--validate", action="store_true", help="compare predictions with real steps on this machine")
    parser.add_argument(
        "--full-depth",
        action="store_true",
        help="trace every layer instead of extrapolating a deep model from 2 and 3 of its layers (slower, same result)",
    )
    parser.add_argument("--gpus", type=int, help="GPUs the run spreads over (with --strategy); memory is per GPU")
    parser.add_argument(
        "--strategy", help="ddp (replicated model, gradient buckets) or fsdp (FSDP2 full sharding, block by block)"
    )


def run_plan(args: argparse.Namespace) -> int:
    if args.validate:
        return run_validate(args)
    plan = plan_from_args(args)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


@dataclass
class PlannedRun:
    """The run a `tunebench train` with the same flags would launch, as the plan traces it."""

    spec: ModelSpec
    shape: Shape
    precision: str
    task_type: str
    settings: dict[str, dict]  # method -> its config's trace_step keywords (step_settings)
    not_planned: list[str]  # keys the --config file sets that do not change one training step
    methods_named: bool  # False: every plannable method, by default


def planned_run(args: argparse.Namespace) -> PlannedRun:
    """Each method's config through train's layering (tunebench.api.run_config), and what the plan traces of it.

    A --set key or flag the planner cannot honour (HONOURED) is an error; a --config file's such keys are
    listed in the plan (the file describes a whole run: its epochs and learning rate are not in one step).
    """
    from tunebench.api import SHORTCUTS, run_config
    from tunebench.cli import config_options
    from tunebench.config import flatten

    options = config_options(args)
    for key in options["overrides"]:
        if not honoured(key):
            raise UserError(f"plan cannot honour --set {key}: it does not change one training step; {_honours()}")
    for name in SHORTCUTS:
        if options[name] is not None and not honoured(SHORTCUTS[name]):
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"plan cannot honour {flag} ({SHORTCUTS[name]}): it does not change one training step; {_honours()}"
            )
    user = read_yaml(args.config) if args.config else {}
    named = args.methods or args.method or options["overrides"].get("method") or user.get("method")
    methods = _parse_methods(named)
    if len(methods) > 1 and any(k.startswith("method_options.") for k in options["overrides"]):
        raise UserError("--set method_options.* is one method's: plan it alone with --method")
    configs = {m: run_config(m, args.task, **options) for m in methods}
    cfg = configs[methods[0]]
    spec = resolve_spec(cfg["model"])
    task_type = cfg["data"]["task_type"]
    num_labels = 2  # a generate task has no classes: its step is the causal LM's
    if task_type == "classify":
        from tunebench.data.tasks import get_task, load_task

        task = get_task(cfg["task"])
        num_labels = len(task.label_names) if task.label_names else load_task(task, cfg["data"]).num_labels
    shape = Shape(cfg["train"]["batch_size"], cfg["data"]["max_length"], args.num_labels or num_labels)
    if shape.num_labels < 2:
        raise UserError(f"--num-labels must be at least 2, got {shape.num_labels}")
    return PlannedRun(
        spec=spec,
        shape=shape,
        precision=args.precision or run_precision(spec, cfg),
        task_type=task_type,
        settings={m: step_settings(c, spec) for m, c in configs.items()},
        not_planned=[k for k in flatten(user) if not honoured(k)],
        methods_named=bool(named),
    )


def _honours() -> str:
    return f"the planner honours {', '.join(HONOURED)}"


def run_precision(spec: ModelSpec, cfg: dict) -> str:
    """The planner precision of the run cfg describes: the loop keeps the checkpoint's dtype (transformers >= 5),
    so a bf16 or fp16 checkpoint trains in 16 bits; an fp32 one in fp32, under autocast if mixed_precision is on."""
    dtype = str(getattr(spec.config, "dtype", None) or "float32").removeprefix("torch.")
    if dtype in ("bfloat16", "float16"):
        return "bf16"
    return "fp32" if cfg["train"]["mixed_precision"] == "no" else "amp"


def step_settings(cfg: dict, spec: ModelSpec) -> dict:
    """The trace_step keywords a run's config sets: what in it changes one training step."""
    from tunebench.optim import resolve_adamw

    train = cfg["train"]
    return {
        "options": cfg["method_options"],
        "pooling": cfg["pooling"] or spec.pooling,
        "gradient_checkpointing": train["gradient_checkpointing"],
        "grad_accum": train["grad_accum"],
        "optimizer": train["optimizer"],
        "adamw": resolve_adamw(train["adamw"], "cuda"),  # plans are for CUDA devices
        "max_grad_norm": train["max_grad_norm"],
        "task_type": cfg["data"]["task_type"],
    }


def plan_from_args(args: argparse.Namespace) -> dict:
    """The plan for `tunebench plan`'s arguments (the Python API's tunebench.plan builds them too)."""
    run = planned_run(args)
    device = resolve_device(args.gpu, args.peak_tflops, run.precision)
    budget = parse_budget(args.budget) if args.budget else device.memory_bytes
    started = time.perf_counter()
    plan = make_plan(run, device, budget, args.results, args.full_depth, args.gpus, args.strategy)
    plan["seconds_to_plan"] = round(time.perf_counter() - started, 1)
    return plan


def make_plan(
    run: PlannedRun,
    device: Device,
    budget,
    results=None,
    full_depth: bool = False,
    gpus: int | None = None,
    strategy: str | None = None,
) -> dict:
    from tunebench.methods import get_method
    from tunebench.sharding import check_sharding, make_sharding, sharding_assumptions

    run = replace(run, settings=dict(run.settings))  # the default list loses what a strategy cannot run, below
    spec, shape, precision = run.spec, run.shape, run.precision
    check_sharding(gpus, strategy, spec.config.num_hidden_layers)
    shardings = {}
    for m, settings in list(run.settings.items()):
        try:
            shardings[m] = make_sharding(
                spec.config,
                m,
                gpus,
                strategy,
                num_labels=shape.num_labels,
                precision=precision,
                options=settings["options"],
                pooling=settings["pooling"],
                task_type=run.task_type,
            )
        except UserError:
            if run.methods_named:
                raise
            del run.settings[m]  # the default list: leave out what this strategy cannot run (head's feature cache)
    prefetched = prefetch_traces(spec, shape, precision, budget, list(run.settings.items()), full_depth)
    traces = {
        m: plan_method(
            spec, m, shape, precision, device, budget, settings, full_depth, sharding=shardings[m], traced=traced
        )
        for (m, settings), traced in zip(run.settings.items(), prefetched, strict=True)
    }
    tokens_per_step = {m: shape.batch_size * shape.seq_len * run.settings[m]["grad_accum"] for m in traces}
    flops_per_token = {m: step.flops / tokens_per_step[m] for m, (step, _) in traces.items()}
    attention = next(iter(traces.values()))[0].attention  # the methods share the backbone
    mfu = calibrate_mfu(results, spec.name, precision, shape, flops_per_token)
    plans = [
        _method_plan(m, step, run.settings[m]["grad_accum"], device, budget, limits, mfu[m])
        for m, (step, limits) in traces.items()
    ]
    layers = spec.config.num_hidden_layers
    depths = {step.depths for step, _ in traces.values()}
    out = {
        "model": {"name": spec.name, "source": spec.source, "model_type": spec.config.model_type},
        "shape": asdict(shape),
        "task_type": run.task_type,
        "precision": precision,
        "settings": run.settings,
        "not_planned": run.not_planned,
        "device": asdict(device),
        "budget_bytes": budget,
        "sharding": {"gpus": gpus or 1, "strategy": strategy},
        "assumptions": [
            f"attention: {attention}"
            + (" (fused kernel: no s x s matrix saved)" if attention == "sdpa" else " (saves the s x s scores)"),
            "traced with CPU kernels under FakeTensorMode; batches padded to the sequence length, attention mask"
            " applied (a batch with no padding at all skips the mask and needs slightly less)",
            *sorted({_optimizer_assumption(s) for s in run.settings.values()}),
            *(
                f"depth: traced {' and '.join(map(str, d))} of {layers} layers, extrapolated (affine in depth)"
                if len(d) == 2
                else f"depth: traced all {layers} layers"
                for d in sorted(depths)
            ),
            f"device bytes = tensor peak x {1 + device.allocator_margin:.2f} "
            f"+ {format_gib(device.context_bytes)} CUDA context",
            *(get_method(m).PLANNING.assumption for m in run.settings if get_method(m).PLANNING.assumption),
            *sharding_assumptions(gpus, strategy),
        ],
        "methods": [asdict(p) for p in plans],
        "recommendation": recommend(plans, budget),
    }
    if budget is not None and not any(p.fits for p in plans):
        out["next_steps"] = next_steps(
            spec, shape, precision, device, budget, run.settings, plans, full_depth, shardings
        )
    return out


def _optimizer_assumption(settings: dict) -> str:
    if settings["optimizer"] == "adamw":
        return f"optimizer: torch AdamW, {settings['adamw']} (train.adamw=auto uses fused on CUDA)"
    paged = settings["optimizer"].startswith("paged")
    return f"optimizer: bitsandbytes {settings['optimizer']} (uint8 states, fp32 absmax per 256 values)" + (
        "; paged: its states live in CUDA unified memory and page out to host RAM under pressure" if paged else ""
    )


def _parse_methods(text: str | None) -> list[str]:
    from tunebench.methods import plannable

    choices = plannable()
    methods = [m.strip() for m in text.split(",") if m.strip()] if text else choices
    for method in methods:
        if method not in choices:
            raise unknown_choice("method", method, choices)
    return methods


def format_plan(plan: dict) -> str:
    device, shape = plan["device"], plan["shape"]
    budget = plan["budget_bytes"]
    lines = [
        f"{plan['model']['name']} ({plan['model']['source']}, {plan['model']['model_type']}): "
        f"batch {shape['batch_size']} x {shape['seq_len']} tokens, "
        + (f"{shape['num_labels']} labels" if plan["task_type"] == "classify" else "causal-LM SFT")
        + f", {plan['precision']}; budget {format_gib(budget) if budget else 'none'} on {device['name']}"
        + (f" ({device['peak_flops'] / 1e12:.0f} TFLOP/s peak)" if device["peak_flops"] else "")
        + (
            f"; {plan['sharding']['gpus']} GPUs, {plan['sharding']['strategy']}: memory and batch per GPU"
            if plan["sharding"]["strategy"]
            else ""
        ),
        *(f"{method}: {_describe_settings(s)}" for method, s in plan["settings"].items()),
        "",
        f"{'method':7} {'trainable':>10} {'peak':>9} {'weights':>8} {'buffers':>8} {'grads':>8} {'optim':>8}"
        f" {'activ':>8} {'other':>8}"
        f" {'device':>9} {'fits':>4} {'max bs':>6} {'max seq':>7} {'bs1 seq':>7}"
        f" {'TFLOP':>8} {'s/step':>7} {'tok/s':>8} {'MFU':>5}",
    ]
    for p in plan["methods"]:
        at = p["at_peak"]
        seconds = f"{p['step_seconds']:.3f}" if p["step_seconds"] else "-"
        tokens = f"{p['tokens_per_second']:.0f}" if p["tokens_per_second"] else "-"
        fits = "-" if p["fits"] is None else ("yes" if p["fits"] else "no")
        lines.append(
            f"{p['method']:7} {p['trainable_params'] / 1e6:9.1f}M {_g(p['tensor_peak_bytes']):>9}"
            f" {_g(at['weights']):>8} {_g(at['buffers']):>8} {_g(at['gradients']):>8} {_g(at['optimizer_state']):>8}"
            f" {_g(at['activations']):>8} {_g(at['other']):>8}"
            f" {_g(p['device_bytes']):>9} {fits:>4} {_n(p['max_batch']):>6} {_n(p['max_seq_len']):>7}"
            f" {_n(p['max_seq_len_batch1']):>7}"
            f" {p['flops_per_step'] / 1e12:8.2f} {seconds:>7} {tokens:>8} {p['mfu']:5.2f}"
        )
    lines += [
        "",
        "GiB; weights..other: tensors live at the peak (buffers: module buffers and quantization constants;"
        " other: inputs, logits/loss, temporaries). max bs: the largest batch at this sequence length;"
        " max seq / bs1 seq: the longest sequence at this batch / at batch 1 (up to max_position_embeddings).",
    ]
    lines += [f"MFU {p['method']}: {p['mfu']:.2f}, {p['mfu_source']}" for p in plan["methods"]]
    lines += [f"assumes {a}" for a in plan["assumptions"]]
    if plan["not_planned"]:
        lines.append(f"not planned (the config's keys that do not change one step): {', '.join(plan['not_planned'])}")
    lines += [f"device constants from {device['source']}; planned in {plan.get('seconds_to_plan', '?')} s", ""]
    lines.append(f"recommendation: {plan['recommendation']}")
    lines += [f"  next step: {s}" for s in plan.get("next_steps", [])]
    return "\n".join(lines)


def _describe_settings(settings: dict) -> str:
    """One line of what the run's config sets that the step depends on."""
    options = ", ".join(f"{k}={v}" for k, v in settings["options"].items() if v is not None) or "no options"
    clip = f"clip {settings['max_grad_norm']}" if settings["max_grad_norm"] else "no clipping"
    return (
        f"{options}; {settings['optimizer']}, {clip}, gradient accumulation {settings['grad_accum']}, "
        f"checkpointing {'on' if settings['gradient_checkpointing'] else 'off'}, {settings['pooling']} pooling"
    )


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _g(value: float) -> str:
    return f"{value / GiB:.2f}"


# -- validation ----------------------------------------------------------------------------------
VALIDATION_SHAPE = Shape(batch_size=8, seq_len=64, num_labels=2)


def tiny_llama_folder(folder: str | Path, tie_word_embeddings: bool = False) -> str:
    """A small random grouped-query-attention Llama checkpoint (4 layers, hidden 256, 8 query and 4 key/value
    heads) saved once with MiniLM's tokenizer, so that the loop can train it: the decoder validation model.
    tie_word_embeddings: the LM head shares the input embeddings (as in SmolLM2, Llama-3.2 1B/3B, Qwen2.5 small)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunebench.models.hub import resolve_model

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
    (tracing.measure_step: the CPU allocator's events, or torch.cuda.max_memory_allocated). task_type
    "generate" steps the causal LM on answer-masked labels (the SFT step), "classify" the sequence classifier."""
    import torch

    from tunebench.methods import get_method
    from tunebench.optim import resolve_adamw
    from tunebench.tracing import measure_step, trace_step

    spec = _weighted_spec(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, device_constants = load_gpus()
    rows = []
    for method in methods:
        predicted = trace_step(
            spec.config,
            method,
            batch_size=shape.batch_size,
            seq_len=shape.seq_len,
            num_labels=shape.num_labels,
            precision=precision,
            options=dict(get_method(method).DEFAULTS["method_options"]),
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


def validate_loop(model: str, methods: list[str], mixed_precision: str, run_root: Path) -> list[dict]:
    """Per method: the prediction against a tiny real `tunebench train` run (loop.train) of rotten_tomatoes.

    Its batches are padded to their longest example (dynamic padding), every step is traced (a memory cap far
    above use makes the loop trace them all, so the longest batch is traced with AdamW's state), and the head
    method runs its backbone every step (cache_features off), as the plan assumes. The prediction is at the
    batch size and the longest example's length; the run's own peak (TensorTracker on the CPU,
    max_memory_allocated on CUDA) is the measurement.
    """
    from datasets import DatasetDict

    from tunebench.config import build_config
    from tunebench.data import batching
    from tunebench.data.tasks import get_task, load_task
    from tunebench.models.hub import load_tokenizer
    from tunebench.tracing import trace_step
    from tunebench.training.run import train

    spec = _weighted_spec(model)
    overrides = {
        "model": spec.path,
        "data": {"max_train_samples": 16, "max_eval_samples": 8, "max_length": 64},
        "train": {"batch_size": 8, "eval_batch_size": 8, "epochs": 2, "mixed_precision": mixed_precision},
        "measure": {"memory_cap": 2**50},
    }
    overrides["train"] |= {"trackers": [], "save": "none", "warmup_ratio": 0.0}
    rows = []
    for method in methods:
        cfg = build_config(method, "rotten_tomatoes", overrides=overrides)
        if "cache_features" in cfg["method_options"]:
            cfg["method_options"]["cache_features"] = False
        result = train(cfg, run_root / f"{Path(spec.name).name}-{method}-{mixed_precision}")
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
        raise UserError(f"--validate runs real steps: {model!r} has no weights here; use an embedded model or a folder")
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
    from tunebench.results import read_result, result_files
    from tunebench.tracing import trace_step

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


def run_validate(args: argparse.Namespace) -> int:
    rows = validation_rows(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'model':26} {'method':6} {'task':8} {'prec':4} {'ckpt':4} {'measured on':11} {'predicted':>10} "
        f"{'tracker':>10} {'independent':>11} {'error':>8}  measured by"
    )
    for row in rows:
        independent = row["independent_bytes"]
        independent = f"{independent / MiB:11.2f}" if independent is not None else "-".rjust(11)
        checkpointing = {True: "yes", False: "no"}.get(row.get("gradient_checkpointing"), "-")
        print(
            f"{row['model'][:26]:26} {row['method']:6} {row.get('task_type', 'classify'):8} {row['precision']:4} "
            f"{checkpointing:4} {row['measured_on'][:11]:11} "
            f"{row['predicted_bytes'] / MiB:10.2f} {row['tracker_bytes'] / MiB:10.2f} {independent} "
            f"{row['error_percent']:+7.2f}%  {row['measured_by']}"
        )
    print(
        "MiB. 2 steps: two real steps on a padded batch of 8 x 64 tokens (task generate: the causal-LM SFT step, "
        "labels -100 on prompt and padding; ckpt: gradient checkpointing); the error is against the independent "
        "figure over the same two steps. loop.train: a tiny run of rotten_tomatoes (16 examples, batch 8, 2 epochs, "
        "padded), predicted at its longest batch; the error is against the run's own peak."
    )
    return 0


def validation_rows(args: argparse.Namespace) -> list[dict]:
    """Predicted against measured peak per model and method, for `plan --validate`'s arguments."""
    import tempfile

    from tunebench.models.hub import DECODER_TYPES

    if args.gpus is not None or args.strategy is not None:
        raise UserError("--validate measures one process on this machine; drop --gpus and --strategy")
    methods = _parse_methods(args.methods)
    if args.results:
        return validate_results(args.results)
    with tempfile.TemporaryDirectory() as tmp:
        models = [args.model] if args.model else ["minilm", tiny_llama_folder(Path(tmp) / "tiny-llama")]
        rows = []
        for model in models:
            rows += validate_steps(model, methods)
            if resolve_spec(model).config.model_type in DECODER_TYPES:  # the causal-LM SFT step, too
                for precision, checkpointing in itertools.product(("fp32", "amp"), (False, True)):
                    rows += validate_steps(model, methods, VALIDATION_SHAPE, precision, checkpointing, "generate")
            rows += validate_loop(model, methods, "bf16", Path(tmp) / "runs")
    for row in rows:
        if row["model"].endswith("tiny-llama"):
            row["model"] = "tiny-llama (GQA, 4 layers)"
    return rows
