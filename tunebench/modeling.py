"""What the methods share: loading a classifier, parameter groups and counts."""

from __future__ import annotations

import torch
from torch import nn

from tunebench.models import DECODER_TYPES, hub_error, load_config

# Names transformers gives the task head: trainable in every method.
TASK_HEADS = ("classifier", "score")
# Kept in full precision under quantization: peft cannot train a quantized head.
UNQUANTIZED = (*TASK_HEADS, "pooler")


def load_classifier(path: str, label_names: list[str], pad_token_id: int | None = None, **kwargs) -> nn.Module:
    """AutoModelForSequenceClassification with the task's labels; kwargs go to from_pretrained."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(path)
    extra = {}
    if config.model_type in DECODER_TYPES:
        # sequence classification on a decoder pools the last non-pad token: it must know the pad id
        extra["pad_token_id"] = pad_token_id
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            **extra,
            **kwargs,
        )
    except OSError as exc:
        raise hub_error(path, exc) from None


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) counting elements; a packed 4-bit weight counts its real element count."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None:
            n = int(torch.Size(quant_state.shape).numel())
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def set_trainable(model: nn.Module, names: tuple[str, ...]) -> None:
    """Freeze everything, then unfreeze parameters under any module called one of names."""
    for name, param in model.named_parameters():
        parts = name.split(".")
        param.requires_grad = any(n in parts for n in names)
