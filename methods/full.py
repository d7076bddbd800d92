"""Full fine-tuning: every weight trains; the whole model is saved."""

from __future__ import annotations

from torch import nn

from tunebench.classifier import load_trained, save_trained
from tunebench.generation import load_model

DEFAULTS = {"train": {"lr": 5.0e-5}, "method_options": {}}


def build(model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    model = load_model(model_path, task, cfg)  # a classifier, or the causal LM of a generate task
    model.requires_grad_(True)
    return model


save = save_trained


def load(folder: str, model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    return load_trained(build(model_path, task, tokenizer, cfg, device), folder)
