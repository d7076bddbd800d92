"""Method registry. A method is one module here; adding one is one file and one line below.

A method module provides:
  DEFAULTS                       config layer: its learning rate, its method_options
  build(model_path, task, tokenizer, cfg, device) -> model   decides what trains
  save(model, folder, state_dict=None)  writes what the method keeps (adapter, head, or the whole model); under
                                 FSDP the loop passes the whole state dict gathered from the shards
  load(folder, model_path, task, tokenizer, cfg, device) -> model   inverse of save
and optionally
  check_options(method_options)  rejects bad options when the config is built, before anything loads
  cache_features(model, loader, device) -> (features, dataset indices)   backbone run once, the head
                                 trains on the result (the loop gathers it across processes, in dataset order)

`method` in a config may also be the dotted path of any importable module that provides the same
(tests use one that fails on one rank).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunebench.errors import unknown_choice

METHODS = {
    "full": "tunebench.methods.full",
    "lora": "tunebench.methods.lora",
    "qlora": "tunebench.methods.qlora",
    "head": "tunebench.methods.head",
    "none": "tunebench.methods.none",  # generate tasks: the untuned model, no training (zero-shot baseline)
}


def get_method(name: str) -> ModuleType:
    if name in METHODS:
        return importlib.import_module(METHODS[name])
    if "." in name:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not f"{name}.".startswith(f"{exc.name}."):  # a module it imports is missing, not the method
                raise
    raise unknown_choice("method", name, list(METHODS))
