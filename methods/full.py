"""Full fine-tuning: every weight trains; the whole model is saved."""

from __future__ import annotations

from torch import nn

from tunebench.modeling import load_classifier

DEFAULTS = {"train": {"lr": 5.0e-5}, "method_options": {}}


def build(model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    model = load_classifier(model_path, task.label_names, tokenizer.pad_token_id)
    model.requires_grad_(True)
    return model


def save(model: nn.Module, folder: str) -> None:
    model.save_pretrained(folder)


def load(folder: str, model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    return load_classifier(folder, task.label_names, tokenizer.pad_token_id)
