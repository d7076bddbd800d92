"""The model a method builds on: the causal LM of a generate task, else the classifier."""

from __future__ import annotations

from torch import nn

from tunebench.data.generate import is_generate
from tunebench.models.causal_lm import load_causal_lm
from tunebench.models.classifier import load_classifier


def load_model(model_path: str, num_labels: int | None, cfg: dict, **kwargs) -> nn.Module:
    """What every method builds on: the causal LM of a generate task, else the classifier (kwargs: from_pretrained)."""
    if is_generate(cfg):
        return load_causal_lm(model_path, **kwargs)

    return load_classifier(model_path, num_labels, cfg, **kwargs)
