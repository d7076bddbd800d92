"""Where a model keeps its transformer blocks (head's unfreeze_top, FSDP's wrap and the planner's depth)."""

from __future__ import annotations

from torch import nn


def block_list(model: nn.Module, num_layers: int) -> nn.ModuleList | None:
    """The model's stack of transformer blocks: the ModuleList with one module per layer."""
    return next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers), None)
