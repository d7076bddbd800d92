"""Method registry: the one place that knows which methods exist. Every list of methods (train's choices, the
planner's, the report's order, the default MFU table, the CLI help) is derived from `registry()`.

Adding a method is one file (a module that satisfies `Method` below) and one line: its name in BUILTIN, or, from
another package, an entry point in the group "tunebench.methods" (`[project.entry-points."tunebench.methods"]`,
`bitfit = "mypackage.bitfit"` in its pyproject.toml). `method` in a config may also be the dotted path of any
importable module that provides the same (tests use one that fails on one rank).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, NamedTuple, Protocol

from tunebench.errors import unknown_choice

if TYPE_CHECKING:  # the CLI reads the registry's names without importing torch
    import torch
    from torch import nn

ENTRY_POINT_GROUP = "tunebench.methods"
BUILTIN = {
    "full": "tunebench.methods.full",
    "lora": "tunebench.methods.lora",
    "qlora": "tunebench.methods.qlora",
    "head": "tunebench.methods.head",
    "none": "tunebench.methods.none",  # generate tasks: the untuned model, no training (zero-shot baseline)
}


class Planning(NamedTuple):
    """What `tunebench plan` needs beyond the method's model: its place among the others and its speed."""

    preference: float  # the plan recommends the fitting method lowest here: the more of the model trains, the better
    mfu: float  # model FLOPs utilization assumed when no GPU result calibrates it
    assumption: str | None = None  # what the plan assumes of this method, printed with the plan


class Method(Protocol):
    """A fine-tuning method: what trains, what is saved, and how the planner traces it.

    Optional members, looked up with hasattr:
      check_options(method_options) -> None: rejects bad options when the config is built, before anything loads;
      check_strategy(strategy, cfg) -> None: rejects a multi-GPU strategy ("ddp" | "fsdp") this run's settings cannot
        use (`plan --strategy` asks it before tracing, the loop before building the model under FSDP);
      cache_features(model, loader, device) -> (features, dataset indices): the backbone runs once and the head
        trains on the result (the loop gathers it across processes, in dataset order).
    """

    DEFAULTS: dict  # config layer: its learning rate, its method_options
    PLANNING: Planning | None  # None: `plan` leaves it out (nothing trains)

    def build(self, model_path: str, num_labels: int | None, cfg: dict, device: torch.device) -> nn.Module:
        """The model, with what trains set to requires_grad (num_labels: the classifier's; None for generate)."""

    def build_meta(self, config, num_labels: int | None, cfg: dict, precision: str) -> nn.Module:
        """The same model from a transformers config, called under torch.device("meta") (needed when PLANNING is
        set): same modules, trainable set and dtypes (precision: a rule of
        tunebench.models.precision.RULES; the planner applies its dtypes after, as the loop does after build)."""

    def save(self, model: nn.Module, folder: str, state_dict: dict | None = None) -> None:
        """Write what the method keeps (adapter, head, or the whole model); under FSDP the loop passes the whole
        state dict gathered from the shards (state_dict), as model's own parameters are shards."""

    def load(self, folder: str, model_path: str, num_labels: int | None, cfg: dict, device: torch.device) -> nn.Module:
        """The inverse of save."""


@functools.cache
def registry() -> dict[str, str]:
    """name -> module: the built-in methods, then those installed packages declare as entry points."""
    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return BUILTIN | {name: module for name, module in declared.items() if name not in BUILTIN}


def get_method(name: str) -> Method:
    methods = registry()
    if name in methods:
        return importlib.import_module(methods[name])
    if "." in name:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not f"{name}.".startswith(f"{exc.name}."):  # a module it imports is missing, not the method
                raise
    raise unknown_choice("method", name, list(methods))


def plannable() -> list[str]:
    """The methods `plan` traces, most preferred first."""
    planned = {name: get_method(name).PLANNING for name in registry()}
    return sorted((name for name, p in planned.items() if p is not None), key=lambda name: planned[name].preference)
