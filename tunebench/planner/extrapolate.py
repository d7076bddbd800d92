"""From a few fake traces, the step at any batch size, sequence length or depth, without tracing it.

Two traces at different batch sizes run the same ops, so each recorded point is affine in the batch (affine_peak,
affine_max_batch); a third at another sequence length gives the largest sequence length (max_seq_len); two short
stacks of a deep model's layer pattern give the whole stack (extrapolate_depth).
"""

from __future__ import annotations

import copy
import itertools

import numpy as np

from tunebench.measure import CATEGORIES
from tunebench.planner.tracing import StepTrace, trace_step


def affine_peak(small: StepTrace, large: StepTrace, batch_size: int) -> tuple[int, dict] | None:
    """Peak bytes and breakdown at batch_size from two traces of the same ops; None if their ops differ."""
    if small.points.shape != large.points.shape or small.batch_size == large.batch_size:
        return None
    slope = (large.points - small.points) / (large.batch_size - small.batch_size)
    points = small.points + slope * (batch_size - small.batch_size)
    index = int(points.sum(1).argmax())
    return int(points[index].sum()), {c: int(v) for c, v in zip(CATEGORIES, points[index], strict=True)}


def affine_max_batch(small: StepTrace, large: StepTrace, limit_bytes: float, cap: int) -> int | None:
    """Largest batch size whose traced peak stays within limit_bytes (0: none), from two aligned traces."""
    if small.points.shape != large.points.shape or small.batch_size == large.batch_size:
        return None
    totals_small, totals_large = small.points.sum(1), large.points.sum(1)
    slope = (totals_large - totals_small) / (large.batch_size - small.batch_size)
    intercept = totals_small - slope * small.batch_size
    if np.any(intercept + np.maximum(slope, 0) > limit_bytes):  # does not fit at batch 1
        return 0
    growing = slope > 0
    if not growing.any():
        return cap
    return int(min(cap, np.floor(((limit_bytes - intercept[growing]) / slope[growing]).min())))


def max_seq_len(
    base: StepTrace, double_batch: StepTrace, other_seq: StepTrace, limit_bytes: float, batch_size: int, cap: int
) -> int | None:
    """Largest sequence length whose peak at batch_size stays within limit_bytes (0: none), capped at cap.

    From three traces of the same ops: base at (b, s), double_batch at (2b, s), other_seq at (b, s'). Each point
    is taken as A + batch x (d1 s + d2 s^2): the weights, gradients and optimizer state do not depend on the
    shape, and what does grows with the examples, in tokens (activations, logits) or in their square (the
    attention mask, eager attention's scores). Terms in the sequence alone (rotary tables) count as if they grew
    with the batch: a few bytes per token. None if the traces ran different ops.
    """
    traces = (base, double_batch, other_seq)
    if len({t.points.shape for t in traces}) > 1 or double_batch.batch_size != 2 * base.batch_size:
        return None
    b, s0, s1 = base.batch_size, base.seq_len, other_seq.seq_len
    per_example_s0 = (double_batch.points.sum(1) - base.points.sum(1)) / b
    constant = base.points.sum(1) - b * per_example_s0
    per_example_s1 = (other_seq.points.sum(1) - constant) / b
    d2 = (per_example_s1 * s0 - per_example_s0 * s1) / (s0 * s1 * (s1 - s0))
    d1 = (per_example_s0 - d2 * s0 * s0) / s0

    def fits(seq: int) -> bool:
        return bool(np.all(constant + batch_size * (d1 * seq + d2 * seq * seq) <= limit_bytes))

    if not fits(1):
        return 0
    low, high = 1, cap + 1  # fits(low); not fits(high), or high is past the cap
    if fits(cap):
        return cap
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# -- depth: a stack of identical blocks -----------------------------------------------------------


def extrapolation_depths(config) -> tuple[int, int] | None:
    """Two shorter stacks, 2 and 3 repeats of the layer pattern, to trace instead of every layer.

    The pattern is the shortest period of config.layer_types that tiles the model (2 for Gemma-2's
    alternating sliding and global attention, 1 when every layer is alike). None, trace every layer, when
    the pattern does not tile the model (Gemma-3: 5 sliding + 1 global into 26 layers) or the model is so
    shallow that the two short traces cost about as much as the whole one.
    """
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None) or [None] * layers
    period = next(p for p in range(1, layers + 1) if layers % p == 0 and types == types[:p] * (layers // p))
    depths = (2 * period, 3 * period)
    return depths if layers >= 2 * sum(depths) else None


def with_depth(config, layers: int):
    """A copy of config with the first `layers` layers."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    return config


def trace_step_extrapolated(
    config, method: str, depths: tuple[int, int], trace=trace_step, **kwargs
) -> StepTrace | None:
    """trace_step at the model's depth from traces of two shorter stacks; None if their points do not line up.
    trace: trace_step, or a function that returns its results (the planner's, run ahead)."""
    low, high = (trace(with_depth(config, depth), method, **kwargs) for depth in depths)
    return extrapolate_depth(low, high, config.num_hidden_layers)


def extrapolate_depth(low: StepTrace, high: StepTrace, layers: int) -> StepTrace | None:
    """The trace of a `layers`-deep stack from traces 2 and 3 pattern repeats deep (None: points do not line up).

    Every quantity of the step is affine in the number of blocks: weights, gradients, optimizer state,
    FLOPs, and, at a given place in the step, the activations saved so far. The points the peak can be at
    are kept (_depth_points) and extrapolated one by one, as affine_peak does in the batch size; with
    whole repeats of the pattern the arithmetic is exact in integers.
    """
    (depth_low,), (depth_high,) = low.depths, high.depths
    period = depth_high - depth_low
    for parts in ("each", "largest"):  # each point where the steps line up point by point, else each part's largest
        points_low, keys_low = _depth_points(low, depth_low // period, period, parts)
        points_high, keys_high = _depth_points(high, depth_high // period, period, parts)
        if keys_low == keys_high:
            break
    if keys_low != keys_high or not any(key[1] == "first" for key in keys_low):
        return None  # the steps differ beyond the blocks, or no block was found to line them up by

    def at(a, b):
        return a + (b - a) * (layers - depth_low) // period

    points = at(points_low, points_high)
    index = len(points) - 1 - int(points.sum(1)[::-1].argmax())  # the last of equal maxima, as TensorTracker
    return StepTrace(
        batch_size=low.batch_size,
        seq_len=low.seq_len,
        peak_bytes=int(points[index].sum()),
        at_peak={c: int(v) for c, v in zip(CATEGORIES, points[index], strict=True)},
        state={c: at(low.state[c], high.state[c]) for c in low.state},
        trainable_params=at(low.trainable_params, high.trainable_params),
        total_params=at(low.total_params, high.total_params),
        flops=at(low.flops, high.flops) if low.flops is not None else None,
        points=points.astype(np.float64),
        labels=keys_low,
        depths=(depth_low, depth_high),
        attention=low.attention,
    )


def _depth_points(step: StepTrace, repeats: int, period: int, parts: str = "each") -> tuple[np.ndarray, list]:
    """The points the peak can be at, as integers, and keys that name the same point at every depth.

    In a phase that runs the blocks, a given place inside repeat k of the pattern holds c + s*k bytes
    (s: what one repeat leaves live, saved activations in forward, gradients less activations in
    backward), largest in the first or the last repeat: the repeats between are dropped. A phase without
    blocks (AdamW, clipping) walks the parameters over the same live state with temporaries that depend
    only on each parameter's shape: its largest point is the same parameter's at every depth, the one kept.
    parts: "each" point of a blocked phase kept; or, for a step that runs a few more ops at more depth in a part of it
    (AdaLoRA's orthogonality penalty walks every adapter after the stack; prefix tuning's prefix, made for every
    layer before the stack, takes its gradient in the first block's backward), "largest": the largest point of each
    part (before the blocks, each block, after them), the same op at every depth (the loss's logits, a block's MLP).
    """
    totals = step.points.sum(1)
    blocked = {phase for phase, position in step.labels if isinstance(position, int)}
    keep, keys = [], []
    for phase, run in itertools.groupby(range(len(step.labels)), key=lambda i: step.labels[i][0]):
        run = list(run)
        if phase not in blocked:
            keep.append(max(run, key=lambda i: (totals[i], i)))
            keys.append((phase, "largest"))
            continue
        for i in run:
            position = step.labels[i][1]
            if not isinstance(position, int):
                key = (phase, position)
            elif position // period == 0:
                key = (phase, "first", position)
            elif position // period == repeats - 1:
                key = (phase, "last", position % period)
            else:
                continue
            if parts == "largest" and i != run[0] and step.labels[i - 1] == step.labels[i]:  # the same part goes on
                keep[-1] = max(keep[-1], i, key=lambda j: (totals[j], j))
                continue
            keep.append(i)
            keys.append(key)
    return step.points[keep].astype(np.int64), keys
