"""Scoring a classification task: metrics over a loader, predictions gathered across processes in dataset order
(also the head method's cached features)."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator

from tunebench.metrics import classification_metrics


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, extra_metrics: list = ()) -> tuple[dict, np.ndarray]:
    """Metrics and predictions over a loader, in dataset order, gathered across processes."""
    model.eval()
    predictions, labels, indices = [], [], []
    for batch in loader:
        indices.append(batch.pop("index"))
        labels.append(batch.pop("labels"))
        predictions.append(model(**batch).logits.argmax(-1))
    predictions, labels = in_dataset_order(accelerator, torch.cat(indices), torch.cat(predictions), torch.cat(labels))
    predictions, labels = predictions.numpy(), labels.numpy()
    return classification_metrics(predictions, labels, extra_metrics), predictions


def in_dataset_order(accelerator: Accelerator, index: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """values (rows matching index, this process's examples) from every process: one row per example,
    in dataset order, on the CPU.

    Processes hold different numbers of rows (the last batches differ in size), so each pads to the
    longest before the gather, marking its padding with index -1. Sharding also repeats examples so
    that every process gets as many batches: keep each example's first copy.
    """
    device = accelerator.device
    index = accelerator.gather(accelerator.pad_across_processes(index.to(device), pad_index=-1)).cpu()
    values = [accelerator.gather(accelerator.pad_across_processes(v.to(device))).cpu() for v in values]
    examples, first = np.unique(index.numpy(), return_index=True)
    first = torch.from_numpy(first[examples >= 0])
    return [v[first] for v in values]
