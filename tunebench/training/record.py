"""What a run measured, as result fields: throughput, and memory (which peak is the headline: the CUDA allocator's
in the training steps when there is one, else the tensor tracker's; every rank's peaks)."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from tunebench.measure import TensorTracker

CUDA_PEAK_INCLUDES = (
    "CUDA allocator peak in the training steps: model, gradients, optimizer state, activations; "
    "evaluation's own peak is memory.cuda.eval_peak_bytes, the whole run's memory.cuda.max_allocated_bytes"
)
TRACKER_PEAK_INCLUDES = "live tensors in the traced training steps: weights, gradients, optimizer state, activations"


def throughput(
    steps: int, micro_batches: int, examples: int, tokens: int, micro_batches_per_epoch: int, train_seconds: float
) -> dict:
    """Counts and rates of training; no rates where nothing trained (the none baseline)."""
    return {
        "optimizer_steps": steps,
        "micro_batches": micro_batches,
        "examples_seen": examples,
        "tokens_processed": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds else None,
        "samples_per_second": examples / train_seconds if train_seconds else None,
        "epochs_per_second": (micro_batches / micro_batches_per_epoch / train_seconds if train_seconds else None),
    }


def eval_timing(validation_seconds: float, test_seconds: float) -> dict:
    """Evaluation's seconds: validation (every evaluation during training, or the untuned model's one) and test;
    eval_seconds is both."""
    return {
        "validation_seconds": validation_seconds,
        "test_seconds": test_seconds,
        "eval_seconds": validation_seconds + test_seconds,
    }


def memory(timing: dict, tracker: TensorTracker | None, accelerator: Accelerator) -> dict:
    """The result's `memory`, taking the peak RSS and the CUDA figures out of the meter's timing summary."""
    out = {
        "peak_rss_bytes": timing.pop("peak_rss_bytes"),
        "tensor": tracker.summary() if tracker else None,
        "cuda": timing.pop("cuda"),
    }
    out["per_rank"] = _per_rank_peaks(accelerator, out)
    return out


def peak(memory: dict) -> dict:
    """The headline peak, where it comes from and what it includes."""
    if memory["cuda"]:
        value, source, includes = memory["cuda"]["train_peak_bytes"], "cuda_train_peak", CUDA_PEAK_INCLUDES
    elif memory["tensor"]:
        value, source, includes = memory["tensor"]["peak_bytes"], "tensor_tracker", TRACKER_PEAK_INCLUDES
    else:
        value = source = includes = None
    return {"peak_memory_bytes": value, "peak_memory_source": source, "peak_memory_includes": includes}


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
