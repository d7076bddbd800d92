"""The optimizer, chosen explicitly: the loop and the planner's trace build it here, so both use the same kernel.

`train.optimizer` picks the algorithm's storage: `adamw` (torch, two fp32 states per trainable value, or bf16
for bf16 weights), or bitsandbytes' 8-bit AdamW, `adamw_8bit` (AdamW8bit: each state in uint8 with an fp32
absmax per block of 256 values; tensors under 4096 values keep fp32 states) and `paged_adamw_8bit`
(PagedAdamW8bit: the same, its states of 100k+ values in CUDA unified memory, which the driver pages out to
host RAM under memory pressure; on the CPU plain buffers). bitsandbytes has CPU kernels for both; its CPU
update dequantizes a tensor's states into fp32 temporaries inside the op (CUDA's fused kernel makes none).

torch's AdamW has three implementations with different speed and memory (`train.adamw`): `fused` (one kernel
per parameter group, no extra temporaries), `foreach` (multi-tensor ops; on CUDA a temporary as large as
all trainable parameters) and `single_tensor` (a Python loop over parameters). `auto` picks fused
wherever torch has the kernel for the device, as Hugging Face Trainer does by default.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
ADAMW_IMPLEMENTATIONS = ("fused", "foreach", "single_tensor")
BITSANDBYTES_CLASSES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit"}


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


def build_optimizer(param_groups: list[dict], lr: float, name: str, adamw: str) -> torch.optim.Optimizer:
    """The optimizer `name` (one of OPTIMIZERS); adamw: the resolved torch implementation, used by `adamw` only.

    bitsandbytes' defaults are torch AdamW's (betas 0.9/0.999, eps 1e-8); the groups set the weight decay.
    """
    if name == "adamw":
        return build_adamw(param_groups, lr, adamw)
    import bitsandbytes as bnb

    return getattr(bnb.optim, BITSANDBYTES_CLASSES[name])(param_groups, lr=lr)


def describe(name: str, adamw: str) -> dict:
    """What the result records as `optimizer`: the algorithm and the code that runs it."""
    if name == "adamw":
        return {"name": name, "implementation": adamw}
    return {"name": name, "implementation": f"bitsandbytes.optim.{BITSANDBYTES_CLASSES[name]}"}
