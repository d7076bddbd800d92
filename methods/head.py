"""Frozen backbone, trainable task head (a linear probe); optionally the top N layers train too.

The frozen part runs without autograd, so it saves no activations and gets no gradients. With
`cache_features` the backbone runs once over the data and the head trains on the pooled features:
the reason to pick this method when compute is scarce.

For a generate task (causal LM) the head is the LM head: untied from the input embeddings first when the
checkpoint ties them (recorded as the result's lm_head_untied). Feature caching does not apply there: the loop
trains through the model as it is (the frozen blocks still run without autograd).
"""

from __future__ import annotations

import torch
from torch import nn

from tunebench.data.generate import is_generate
from tunebench.errors import UserError
from tunebench.methods import Planning
from tunebench.models.blocks import block_list
from tunebench.models.causal_lm import untie_lm_head
from tunebench.models.classifier import Classifier
from tunebench.models.meta import meta_base
from tunebench.models.params import load_trained, save_trained
from tunebench.models.precision import RULES
from tunebench.models.task_model import load_model

DEFAULTS = {
    "train": {"lr": 1.0e-2, "weight_decay": 0.0},  # a linear probe on fixed features takes a large step
    "method_options": {
        "cache_features": True,  # embed once, then train the head on cached features
        "unfreeze_top": 0,  # also train the top N transformer layers (freeze tuning)
    },
}
# A generate task's head is the pretrained LM head, not a fresh probe: 1e-2 wrecked SmolLM2's general text
# (forgetting loss +2.23) where 1e-3 kept it (+0.01) and scored best on validation (rotten_tomatoes_gen, 128
# train / 64 validation examples: 1e-2 0.53, 1e-3 0.56, 1e-4 0.09 exact match).
GENERATE_DEFAULTS = {"train": {"lr": 1.0e-3}}
# The plan traces the backbone running every step (cache_features off): an upper bound on its memory and time.
PLANNING = Planning(
    preference=3,
    mfu=0.35,
    assumption="head: frozen backbone run under no_grad each step (cache_features runs it once per example instead)",
)


def _layers(backbone: nn.Module) -> nn.ModuleList:
    layers = block_list(backbone, backbone.config.num_hidden_layers)
    if layers is None:
        raise UserError("method_options.unfreeze_top: cannot find the transformer layers of this model")
    return layers


def check_options(options: dict) -> None:
    """Called when the config is built, before any data or model loads."""
    top = options["unfreeze_top"]
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise UserError(f"method_options.unfreeze_top must be a whole number >= 0, got {top!r}")
    if top and options["cache_features"]:
        raise UserError("method_options.cache_features needs a fully frozen backbone; set unfreeze_top=0")


def check_strategy(strategy: str, cfg: dict) -> None:
    if strategy == "fsdp" and cfg["method_options"]["cache_features"] and not is_generate(cfg):
        # each rank embeds its own share of the batches outside the step, where FSDP needs every rank in every forward
        raise UserError(
            "head with cache_features (its default) cannot run under FSDP: its feature cache runs the frozen backbone "
            "outside the training step; set method_options.cache_features=false, or use DDP"
        )


def build(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    return _train_head(load_model(model_path, num_labels, cfg), cfg)


def build_meta(config, num_labels: int | None, cfg: dict, precision: str) -> nn.Module:
    return _train_head(meta_base(config, num_labels, cfg, RULES[precision].frozen), cfg)


def _train_head(model: nn.Module, cfg: dict) -> nn.Module:
    """Freeze all but the head (untied from the embeddings for a causal LM) and the top unfreeze_top layers."""
    top = cfg["method_options"]["unfreeze_top"]
    if is_generate(cfg):
        model.requires_grad_(False)
        model.lm_head_untied = untie_lm_head(model)
        model.get_output_embeddings().requires_grad_(True)
    else:
        model.backbone.requires_grad_(False)
    if top:
        layers = _layers(model)
        if top > len(layers):
            raise UserError(f"method_options.unfreeze_top={top} but the model has {len(layers)} layers")
        layers[len(layers) - top :].requires_grad_(True)
    model.train()
    return model


@torch.inference_mode()
def cache_features(model: Classifier, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the loader's examples and their dataset indices, in the loader's order."""
    model.eval()
    chunks, index = [], []
    for batch in loader:
        index.append(batch.pop("index"))
        batch.pop("labels", None)
        chunks.append(model.features(**{k: v.to(device) for k, v in batch.items()}).float())
    return torch.cat(chunks), torch.cat(index)


save = save_trained


def load(folder: str, model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    return load_trained(build(model_path, num_labels, cfg, device), folder)
