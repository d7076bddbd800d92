"""The optimizer, chosen explicitly: the loop and the planner's trace build it here, so both use the same kernel.

torch's AdamW has three implementations with different speed and memory: `fused` (one kernel per
parameter group, no extra temporaries), `foreach` (multi-tensor ops; on CUDA a temporary as large as
all trainable parameters) and `single_tensor` (a Python loop over parameters). `auto` picks fused
wherever torch has the kernel for the device, as Hugging Face Trainer does by default.
"""

from __future__ import annotations

import torch

ADAMW_IMPLEMENTATIONS = ("fused", "foreach", "single_tensor")


def resolve_adamw(choice: str, device_type: str) -> str:
    """`auto` -> the implementation the loop will use on this device type; an explicit choice stays."""
    if choice != "auto":
        return choice
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return "fused" if device_type in _get_fused_kernels_supported_devices() else "foreach"


def build_adamw(param_groups: list[dict], lr: float, implementation: str) -> torch.optim.AdamW:
    """AdamW with exactly this implementation (one of ADAMW_IMPLEMENTATIONS), never torch's silent default."""
    flags = {
        "fused": {"fused": True, "foreach": False},
        "foreach": {"fused": False, "foreach": True},
        "single_tensor": {"fused": False, "foreach": False},
    }[implementation]
    return torch.optim.AdamW(param_groups, lr=lr, **flags)
