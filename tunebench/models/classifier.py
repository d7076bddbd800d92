"""The model every method builds (Classifier: backbone -> pooling -> dropout -> linear head), its save and load,
and the parameter groups and counts the loop and the planner take from it."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tunebench.errors import UserError
from tunebench.models.hub import default_pooling, hub_error, load_config

POOLINGS = ("mean", "cls", "last")
# Name of the task head in Classifier: trainable and saved in every method, never quantized.
TASK_HEAD = "classifier"
# Kept in full precision under quantization: peft cannot train a quantized head.
UNQUANTIZED = (TASK_HEAD, "pooler")
DROPOUT = 0.1  # before the head, as BERT's own classification head; config key head_dropout (null: this)


class Classifier(nn.Module):
    """Every method's model: backbone (AutoModel) -> pooling -> dropout -> linear head.

    The methods differ only in what trains: all of it (full), adapters in the backbone (lora, qlora on a
    quantized backbone) or the head alone (head). The backbone's own pooler, if any, is not used.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str, dropout: float = DROPOUT):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        # in the backbone's dtype, as transformers' own classification heads (a bf16 checkpoint trains in bf16)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels, dtype=backbone.dtype)

    @property
    def config(self):
        return self.backbone.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The backbone's block classes: Accelerate's FSDP TRANSFORMER_BASED_WRAP shards block by block by them."""
        return getattr(self.backbone, "_no_split_modules", None)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def train(self, mode: bool = True) -> Classifier:
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


def check_pooling(pooling: str | None) -> None:
    if pooling not in (None, *POOLINGS):
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)} or null, got {pooling!r}")


def resolve_pooling(pooling: str | None, model_path: str, config) -> str:
    """The configured pooling, or (null) what the checkpoint was trained with."""
    return pooling or default_pooling(model_path, config)


def load_classifier(model_path: str, num_labels: int, cfg: dict, **kwargs) -> Classifier:
    """The backbone from model_path (kwargs go to AutoModel.from_pretrained) under a fresh task head, with the
    config's pooling and head dropout."""
    from transformers import AutoModel

    config = load_config(model_path)
    try:
        backbone = AutoModel.from_pretrained(model_path, **kwargs)
    except OSError as exc:
        raise hub_error(model_path, exc) from None
    pooling = resolve_pooling(cfg["pooling"], model_path, config)
    return Classifier(drop_pooler(backbone), num_labels, pooling, head_dropout(cfg))


def head_dropout(cfg: dict) -> float:
    return DROPOUT if cfg["head_dropout"] is None else cfg["head_dropout"]


def drop_pooler(backbone: nn.Module) -> nn.Module:
    """The backbone without its own pooler (BERT's dense + tanh on CLS): unused by every pooling here, and
    as a trainable it would get no gradient."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone
