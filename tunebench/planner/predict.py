"""The plan: per method, the traced step's peak memory on the device, whether it fits, its limits and speed (FLOPs
over the peak FLOP/s at an MFU, calibrated from the user's results where they match), the recommendation, and
when nothing fits the next steps to try, traced.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

from tunebench.errors import UserError
from tunebench.methods import get_method, plannable
from tunebench.models.precision import RULES, dtype_name
from tunebench.planner.inputs import (
    Device,
    ModelSpec,
    PlannedRun,
    Shape,
    load_gpus,
    match_gpu,
    parse_budget,
    parse_precisions,
    planned_run,
    resolve_device,
    result_precision,
)
from tunebench.planner.limits import Limits, plan_method, prefetch_traces
from tunebench.planner.request import PlanRequest
from tunebench.planner.sharding import (
    Sharding,
    check_sharding,
    fsdp_trace_precision,
    make_sharding,
    sharding_assumptions,
)
from tunebench.planner.tracing import StepTrace, trains_with
from tunebench.results import read_result, result_files
from tunebench.units import format_gib


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


def calibrate_mfu(
    results_dir: str | None, model: str, precision: str, shape: Shape, flops_per_token: dict[str, float]
) -> dict[str, tuple]:
    """method -> (MFU, source): the median MFU of matching successful GPU runs per method, else the default.

    A run matches when it trained this model, in this precision, at this batch size and max_length, on a GPU
    of configs/planner/gpus.yaml (exact name). Its achieved FLOP/s is this plan's FLOPs per token x its
    measured tokens_per_second (non-padding tokens, so padding lowers the MFU: what the plan's tokens/s then
    means is useful tokens per second). An MFU above 1 is impossible and is clipped to 1.
    """
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


def _method_plan(
    method: str, step: StepTrace, grad_accum: int, device: Device, budget: int | None, limits: Limits, mfu: tuple
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
        return "no budget given (budget or gpu): nothing to recommend"
    order = plannable(with_variants=True)  # most preferred first
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
    shardings: dict[str, Sharding | None] | None = None,
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
            run = settings[plan.method]
            if key == "gradient_checkpointing" and not trains_with(plan.method, run["options"], run["task_type"], True):
                continue  # prefix tuning
            tried.append((plan, what, flag, run | {key: value}))
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


def predict_plan(request: PlanRequest) -> dict:
    """The plan a request asks for (tunebench.plan, `tunebench plan`), with the seconds it took. Several precision
    rules: the first rule's plan, with the others' whole plans in other_precisions."""
    rules = parse_precisions(request.precision)
    if len(rules) > 1:
        plans = [predict_plan(replace(request, precision=rule)) for rule in rules]
        return plans[0] | {"other_precisions": plans[1:]}
    run = planned_run(request)
    device = resolve_device(request.gpu, request.peak_tflops, run.precision, request.gpus)
    budget = parse_budget(request.budget) if request.budget else device.memory_bytes
    started = time.perf_counter()
    plan = make_plan(run, device, budget, request.results, request.full_depth, request.gpus, request.strategy)
    plan["seconds_to_plan"] = round(time.perf_counter() - started, 1)
    return plan


def make_plan(
    run: PlannedRun,
    device: Device,
    budget: int | None,
    results: str | None = None,
    full_depth: bool = False,
    gpus: int | None = None,
    strategy: str | None = None,
) -> dict:
    """The plan of a run on a device within budget: each method's traced step (MethodPlan), the assumptions, the
    recommendation, and next steps when nothing fits. results: a folder of results that calibrates the MFU."""
    run = replace(run, settings=dict(run.settings))  # the default list loses what a strategy cannot run, below
    spec, shape, precision = run.spec, run.shape, run.precision
    check_sharding(gpus, strategy, spec.config.num_hidden_layers)
    shardings = _shardings(run, gpus, strategy)
    traced_in = fsdp_trace_precision(precision) if strategy == "fsdp" else precision  # what each rank computes in
    prefetched = prefetch_traces(spec, shape, traced_in, budget, list(run.settings.items()), full_depth)
    traces = {
        m: plan_method(
            spec, m, shape, traced_in, device, budget, settings, full_depth, sharding=shardings[m], traced=traced
        )
        for (m, settings), traced in zip(run.settings.items(), prefetched, strict=True)
    }
    tokens_per_step = {m: shape.batch_size * shape.seq_len * run.settings[m]["grad_accum"] for m in traces}
    flops_per_token = {m: step.flops / tokens_per_step[m] for m, (step, _) in traces.items()}
    mfu = calibrate_mfu(results, spec.name, precision, shape, flops_per_token)
    plans = [
        _method_plan(m, step, run.settings[m]["grad_accum"], device, budget, limits, mfu[m])
        for m, (step, limits) in traces.items()
    ]
    out = {
        "model": {"name": spec.name, "source": spec.source, "model_type": spec.config.model_type},
        "shape": asdict(shape),
        "task_type": run.task_type,
        "precision": precision,
        "precision_dtypes": _rule_dtypes(precision),
        "settings": run.settings,
        "not_planned": run.not_planned,
        "device": asdict(device),
        "budget_bytes": budget,
        "sharding": {"gpus": gpus or 1, "strategy": strategy},
        "assumptions": _assumptions(run, device, [step for step, _ in traces.values()], gpus, strategy),
        "methods": [asdict(p) for p in plans],
        "recommendation": recommend(plans, budget),
    }
    if budget is not None and not any(p.fits for p in plans):
        out["next_steps"] = next_steps(
            spec, shape, traced_in, device, budget, run.settings, plans, full_depth, shardings
        )
    return out


def _rule_dtypes(rule: str) -> dict:
    """The dtypes the plan assumed, from the rule's table (the traced models carry them)."""
    dtypes = RULES[rule]
    return {
        "trainable": dtype_name(dtypes.trainable),
        "frozen": dtype_name(dtypes.frozen),
        "autocast": dtype_name(dtypes.autocast),
        "qlora_compute": dtype_name(dtypes.compute),
    }


def _shardings(run: PlannedRun, gpus: int | None, strategy: str | None) -> dict[str, Sharding | None]:
    """method -> its Sharding (None on one GPU). A method the strategy cannot run is an error when the methods were
    named; from the default list it is left out of run.settings (head's feature cache under fsdp)."""
    shardings = {}
    for m, settings in list(run.settings.items()):
        try:
            shardings[m] = make_sharding(
                run.spec.config,
                m,
                gpus,
                strategy,
                num_labels=run.shape.num_labels,
                precision=run.precision,
                options=settings["options"],
                pooling=settings["pooling"],
                task_type=run.task_type,
            )
        except UserError:
            if run.methods_named:
                raise
            del run.settings[m]
    return shardings


def _assumptions(
    run: PlannedRun, device: Device, steps: list[StepTrace], gpus: int | None, strategy: str | None
) -> list[str]:
    """What the plan assumes: attention, how it traced, the optimizers, the depths, the device constants, the
    methods' own assumptions and the sharding's."""
    attention = steps[0].attention  # the methods share the backbone
    layers = run.spec.config.num_hidden_layers
    depths = {step.depths for step in steps}
    return [
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
        *sharding_assumptions(gpus, strategy, run.precision),
    ]


def _optimizer_assumption(settings: dict) -> str:
    if settings["optimizer"] == "adamw":
        return f"optimizer: torch AdamW, {settings['adamw']} (train.adamw=auto uses fused on CUDA)"
    paged = settings["optimizer"].startswith("paged")
    return f"optimizer: bitsandbytes {settings['optimizer']} (uint8 states, fp32 absmax per 256 values)" + (
        "; paged: its states live in CUDA unified memory and page out to host RAM under pressure" if paged else ""
    )
