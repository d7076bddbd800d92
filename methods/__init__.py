"""Method registry. A method is one module here; adding one is one file and one line below.

A method module provides:
  DEFAULTS                       config layer: its learning rate, its method_options
  build(model_path, task, tokenizer, cfg, device) -> model   decides what trains
  save(model, folder)            writes what the method keeps (adapter, head, or the whole model)
  load(folder, model_path, task, tokenizer, cfg, device) -> model   inverse of save
and optionally
  check_options(method_options)  rejects bad options when the config is built, before anything loads
  cache_features(model, loader, device) -> tensor    backbone run once, head trained on the result
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
    if name not in METHODS:
        raise unknown_choice("method", name, list(METHODS))
    return importlib.import_module(METHODS[name])
