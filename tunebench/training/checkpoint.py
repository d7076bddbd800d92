"""What a run keeps: the best validation step's trainable state (restored before the test), and the folders the
method saves (best/, last/), each written to a .partial folder and swapped in whole."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.tensor import DTensor


@dataclass
class BestStep:
    """The validation step with the highest accuracy so far, and a CPU copy of what trained at it."""

    accuracy: float = -1.0
    step: int = 0
    state: dict | None = None

    def consider(self, accuracy: float, step: int, model) -> None:
        """Keep this step when it beats the best so far (model unwrapped)."""
        if accuracy > self.accuracy:
            self.accuracy, self.step, self.state = accuracy, step, trainable_state(model)


def trainable_state(model) -> dict:
    """A CPU copy of what trains (under FSDP2, this rank's shards): enough to restore the best step later."""
    return {n: _local(p).detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def restore(model, state: dict) -> None:
    """Load the best step's trainable tensors; any trainable tensor missing, or any extra one, is an error."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    targets = model.state_dict(keep_vars=True)
    unexpected = set(state) - set(targets)
    missing = trainable - set(state)
    if missing or unexpected:
        raise RuntimeError(
            f"restoring the best step: missing trainable {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            _local(targets[name]).copy_(tensor)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a DTensor), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def save(method, model, folder: Path, accelerator: Accelerator) -> None:
    """Rank 0 writes what the method keeps. Under FSDP2 every rank first takes part in gathering the whole state
    dict from the shards (Accelerate's get_state_dict: full, offloaded to rank 0's CPU), which the method saves
    from (untested on hardware)."""
    if not accelerator.is_fsdp2:
        if accelerator.is_main_process:
            _write(folder, lambda tmp: method.save(model, tmp))
        return
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        _write(folder, lambda tmp: method.save(model, tmp, state_dict=state_dict))


def _write(folder: Path, save_to) -> None:
    """save_to(tmp) into a .partial folder, then swapped in whole."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_to(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def folder_bytes(folder: Path) -> int | None:
    """The bytes of every file under folder; None when it does not exist (nothing saved)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else None
