"""Parameter helpers every method and the loop share: AdamW groups, counts, and saving or loading what trains."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunebench.errors import UserError

SAVED = "classifier.safetensors"  # the trained parameters of full and head (lora and qlora save peft adapters)


def save_trained(model: nn.Module, folder: str, state_dict: dict | None = None) -> None:
    """The trainable parameters (all of them for full, the head and any unfrozen layers for head).

    state_dict: the whole model's, gathered from FSDP's shards (the model's own parameters are shards then).
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else dict(model.named_parameters())
    trained = {n: state[n].detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(Path(folder, SAVED)))


def load_trained(model: nn.Module, folder: str) -> nn.Module:
    """Inverse of save_trained on a model built the same way."""
    state = load_file(str(Path(folder, SAVED)))
    unexpected = set(state) - set(model.state_dict())
    if unexpected:
        raise UserError(f"saved weights in {folder} do not fit this model: unexpected {sorted(unexpected)[:3]}")
    # in the dtype they were saved in (fp32 master weights over a bf16 checkpoint), not rounded to the checkpoint's
    parameters = dict(model.named_parameters())
    for name, tensor in state.items():
        if name in parameters and parameters[name].dtype != tensor.dtype:
            parameters[name].data = parameters[name].data.to(tensor.dtype)
    model.load_state_dict(state, strict=False)
    return model


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
