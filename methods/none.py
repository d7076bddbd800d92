"""No training: the untuned model, evaluated as it is. The zero-shot baseline of a generate task, so that
each method's gain over the starting checkpoint shows; the loop runs no optimizer step when nothing trains.
`plan` leaves it out (PLANNING None): it plans training steps, and this method takes none."""

from __future__ import annotations

from torch import nn

from tunebench.data.generate import is_generate
from tunebench.errors import UserError
from tunebench.models.causal_lm import load_causal_lm
from tunebench.models.params import load_trained, save_trained

DEFAULTS = {"train": {}, "method_options": {}}
PLANNING = None


def build(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    if not is_generate(cfg):
        raise UserError(
            "method none (the untuned, zero-shot baseline) needs a generate task: a new classifier head is random"
        )
    model = load_causal_lm(model_path)
    model.requires_grad_(False)
    return model


save = save_trained  # nothing trains: an empty file, so that `eval` finds the run's weights


def load(folder: str, model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    return load_trained(build(model_path, num_labels, cfg, device), folder)
