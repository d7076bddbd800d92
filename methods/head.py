"""Frozen backbone, trainable task head (a linear probe); optionally the top N layers train too.

The frozen part runs without autograd, so it saves no activations and gets no gradients. With
`cache_features` the backbone runs once over the data and the head trains on the pooled features:
the reason to pick this method when compute is scarce.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tunebench.errors import UserError
from tunebench.models import default_pooling, hub_error, load_config

DEFAULTS = {
    "train": {"lr": 1.0e-2, "weight_decay": 0.0},  # a linear probe on fixed features takes a large step
    "method_options": {
        "pooling": None,  # mean | cls | last; None: what the checkpoint was trained with
        "cache_features": True,  # embed once, then train the head on cached features
        "unfreeze_top": 0,  # also train the top N transformer layers (freeze tuning)
        "dropout": 0.1,
    },
}
POOLINGS = ("mean", "cls", "last")


class HeadClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)

    def train(self, mode: bool = True) -> HeadClassifier:
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()  # a frozen backbone gives the same features in training and evaluation
        return self

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(needs_grad):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        if self.pooling == "cls":
            return hidden[:, 0]
        last = attention_mask.sum(1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(
        self, labels: torch.Tensor | None = None, features: torch.Tensor | None = None, **inputs
    ) -> SequenceClassifierOutput:
        if features is None:
            features = self.features(**inputs)
        logits = self.classifier(self.dropout(features.to(self.classifier.weight.dtype)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as num_hidden_layers."""
    depth = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise UserError("method_options.unfreeze_top: cannot find the transformer layers of this model")


def check_options(options: dict) -> None:
    """Called when the config is built, before any data or model loads."""
    if options["pooling"] not in (None, *POOLINGS):
        raise UserError(f"method_options.pooling must be one of {', '.join(POOLINGS)}, got {options['pooling']!r}")
    top = options["unfreeze_top"]
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise UserError(f"method_options.unfreeze_top must be a whole number >= 0, got {top!r}")
    if top and options["cache_features"]:
        raise UserError("method_options.cache_features needs a fully frozen backbone; set unfreeze_top=0")


def _build(model_path: str, task, cfg: dict) -> HeadClassifier:
    from transformers import AutoModel

    options = cfg["method_options"]
    config = load_config(model_path)
    pooling = options["pooling"] or default_pooling(model_path, config)
    top = options["unfreeze_top"]
    try:
        backbone = AutoModel.from_pretrained(model_path)
    except OSError as exc:
        raise hub_error(model_path, exc) from None
    backbone.requires_grad_(False)
    if top:
        layers = _layers(backbone)
        if top > len(layers):
            raise UserError(f"method_options.unfreeze_top={top} but the model has {len(layers)} layers")
        layers[len(layers) - top :].requires_grad_(True)
    model = HeadClassifier(backbone, task.num_labels, pooling, options["dropout"])
    model.train()
    return model


def build(model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    return _build(model_path, task, cfg)


@torch.inference_mode()
def cache_features(model: HeadClassifier, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the loader's examples and their dataset indices, in the loader's order."""
    model.eval()
    chunks, index = [], []
    for batch in loader:
        index.append(batch.pop("index"))
        batch.pop("labels", None)
        chunks.append(model.features(**{k: v.to(device) for k, v in batch.items()}).float())
    return torch.cat(chunks), torch.cat(index)


def save(model: HeadClassifier, folder: str) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(Path(folder, "head.safetensors")))
    Path(folder, "head_config.json").write_text(json.dumps({"pooling": model.pooling}, indent=2))


def load(folder: str, model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    model = _build(model_path, task, cfg)
    model.pooling = json.loads(Path(folder, "head_config.json").read_text())["pooling"]
    state = load_file(str(Path(folder, "head.safetensors")))
    unexpected = set(state) - set(model.state_dict())
    if unexpected:
        raise UserError(f"saved head in {folder} does not fit this model: unexpected {sorted(unexpected)[:3]}")
    model.load_state_dict(state, strict=False)
    return model
