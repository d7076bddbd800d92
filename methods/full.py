"""Full fine-tuning: every weight trains; the whole model is saved."""

from __future__ import annotations

from torch import nn

from tunebench.methods import Planning
from tunebench.models.meta import meta_base
from tunebench.models.params import load_trained, save_trained
from tunebench.models.precision import RULES
from tunebench.models.task_model import load_model

DEFAULTS = {"train": {"lr": 5.0e-5}, "method_options": {}}
# Single-GPU fine-tuning with HF models at moderate batch typically reaches 30-45% of dense peak (the PaLM paper's
# MFU definition; 46% is its large-scale figure).
PLANNING = Planning(preference=0, mfu=0.35)


def build(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    model = load_model(model_path, num_labels, cfg)  # a classifier, or the causal LM of a generate task
    model.requires_grad_(True)
    return model


def build_meta(config, num_labels: int | None, cfg: dict, precision: str) -> nn.Module:
    return meta_base(config, num_labels, cfg, RULES[precision].frozen)


save = save_trained


def load(folder: str, model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    return load_trained(build(model_path, num_labels, cfg, device), folder)
