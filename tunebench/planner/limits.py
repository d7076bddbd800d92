"""What fits a budget: one method's traced step and its largest batch and sequence lengths (plan_method), from as
few fake traces as the extrapolations allow, the first of them run ahead over the machine's cores (prefetch_traces).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tunebench.methods import base_method
from tunebench.optim import BITSANDBYTES_CLASSES
from tunebench.planner.extrapolate import (
    affine_max_batch,
    extrapolation_depths,
    max_seq_len,
    trace_step_extrapolated,
    with_depth,
)
from tunebench.planner.forked import map_forked
from tunebench.planner.inputs import Device, ModelSpec, Shape
from tunebench.planner.sharding import Sharding
from tunebench.planner.tracing import StepTrace, trace_step

MAX_BATCH = 4096
MAX_SEQ_LEN = 2**20  # for a model that states no max_position_embeddings


@dataclass
class Limits:
    """What fits the budget, by varying one dimension of the planned step."""

    max_batch: int | None = None  # at the planned sequence length
    max_seq_len: int | None = None  # at the planned batch size
    max_seq_len_batch1: int | None = None  # at batch size 1


class StepTracer:
    """One method's planned step at any batch and sequence length, as plan_method traces it: extrapolated from two
    short stacks while their points line up (then every layer from there on), taken from `traced` (trace_step's
    results run ahead, keyed as first_traces) where it was run already, and as one rank holds it under sharding."""

    def __init__(
        self,
        spec: ModelSpec,
        method: str,
        shape: Shape,
        precision: str,
        settings: dict,
        full_depth: bool,
        sharding: Sharding | None,
        traced: dict | None,
    ):
        self.spec, self.method, self.shape, self.precision, self.settings = spec, method, shape, precision, settings
        self.sharding = sharding
        self.depths = None if full_depth else extrapolation_depths(spec.config)
        self.traced = dict(traced or {})

    def __call__(self, batch: int, count_flops: bool = False, seq_len: int | None = None) -> StepTrace:
        step = self._trace(batch, count_flops, self.shape.seq_len if seq_len is None else seq_len)
        return self.sharding.step(step) if self.sharding else step

    def _trace(self, batch: int, count_flops: bool, seq_len: int) -> StepTrace:
        kwargs = {
            "batch_size": batch,
            "seq_len": seq_len,
            "num_labels": self.shape.num_labels,
            "precision": self.precision,
            "count_flops": count_flops,
            **self.settings,
        }
        if self.depths:
            step = trace_step_extrapolated(self.spec.config, self.method, self.depths, self._trace_or_traced, **kwargs)
            if step is not None:
                return step
            self.depths = None  # the short stacks' steps did not line up: trace every layer from here on
        return self._trace_or_traced(self.spec.config, self.method, **kwargs)

    def _trace_or_traced(self, config, method: str, **kwargs) -> StepTrace:
        key = (config.num_hidden_layers, kwargs["batch_size"], kwargs["seq_len"], kwargs["count_flops"])
        return self.traced.pop(key) if key in self.traced else trace_step(config, method, **kwargs)


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
    sharding: Sharding | None = None,
    traced: dict | None = None,
) -> tuple[StepTrace, Limits]:
    """The trace at the requested batch (with FLOPs) and the largest batch (and sequence length) within budget.

    settings: the trace_step keywords the run's config sets (step_settings: method options, optimizer, ...).

    sharding (planner.sharding.Sharding): the traces as one rank of several GPUs holds them.

    traced: trace_step's results for first_traces' calls, run already (prefetch_traces); others are traced here.

    The largest batch comes from a second trace at twice the batch: the peak at any batch follows from the two.
    With seq_limits, a third trace at another sequence length gives the largest sequence length at the planned
    batch and at batch 1 (extrapolate.max_seq_len), up to the model's max_position_embeddings. A deep model is traced
    2 and 3 repeats of its layer pattern deep and extrapolated to its depth in the same way
    (extrapolate.extrapolate_depth), unless full_depth.
    """
    trace = StepTracer(spec, method, shape, precision, settings, full_depth, sharding, traced)
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
    together (map_forked): plan_method's `traced`. Runs that take the same step (a variant that names its base's
    defaults: lora-r16) are traced once."""
    steps = [(base_method(method), json.dumps(settings, sort_keys=True, default=str)) for method, settings in runs]
    distinct = list(dict.fromkeys(steps))
    traced = _first_traces_of(
        spec, shape, precision, budget, [runs[steps.index(d)] for d in distinct], full_depth, seq_limits
    )
    return [traced[distinct.index(step)] for step in steps]


def _first_traces_of(
    spec: ModelSpec,
    shape: Shape,
    precision: str,
    budget: int | None,
    runs: list[tuple[str, dict]],
    full_depth: bool,
    seq_limits: bool,
) -> list[dict]:
    """prefetch_traces for runs that each take a step of their own."""
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
    needs_bitsandbytes = any(settings["optimizer"] in BITSANDBYTES_CLASSES for _, settings in runs)
    unimportable = () if needs_bitsandbytes else ("bitsandbytes",)
    steps = dict(zip(order, map_forked(trace_step, calls, depths, unimportable), strict=True))
    return [{keys[key]: steps[run, key] for key in range(len(keys))} for run in range(len(runs))]


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
