"""Method registry: the one place that knows which methods exist. Every list of methods (train's choices, the
planner's, the report's order, the default MFU table, the CLI help) is derived from `registry()`.

Adding a method is one file (a module that satisfies `Method` below) and one line: its name in BUILTIN, or, from
another package, an entry point in the group "tunebench.methods" (`[project.entry-points."tunebench.methods"]`,
`bitfit = "mypackage.bitfit"` in its pyproject.toml). `method` in a config may also be the dotted path of any
importable module that provides the same (tests use one that fails on one rank).

A variant is a name for a base method with options (`dora` is lora with use_dora): configs/variants.yaml ships
them, a user's file adds more (the config key `variants`, add_variants). A variant's name works wherever a method's
does: get_method resolves it to its base's module, and build_config layers its options over the base's defaults.
"""

from __future__ import annotations

import functools
import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import yaml

from tunebench.errors import UserError, unknown_choice
from tunebench.files import CONFIG_DIR, YAML_READ

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
SHIPPED_VARIANTS = CONFIG_DIR / "variants.yaml"
VARIANT_KEYS = ("base", "source", "options", "config")  # options: method_options; config: any other config layer

# The report's families, in its order. A base method's family, and lora's by the peft type it is configured with.
FAMILIES = ("full", "LoRA family", "other adapters", "prompt learning", "head", "none")
BASE_FAMILY = {"full": "full", "qlora": "LoRA family", "head": "head", "none": "none"}
LORA_FAMILY_TYPES = {"LORA", "ADALORA"}
# peft's prompt-learning types (peft.utils.peft_types: is_prompt_learning) and the other prompt-side adapters
PROMPT_LEARNING_TYPES = {
    "PROMPT_TUNING",
    "MULTITASK_PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "ADAPTION_PROMPT",
    "CPT",
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
        trains on the result (the loop gathers it across processes, in dataset order);
      check_settings(cfg) -> None: rejects options the run's other settings cannot use (prefix tuning under
        gradient checkpointing), when the config is built; the planner suggests no such settings;
      step_hook(model, total_steps) -> callable(step) | None: what the loop calls after each optimizer step, before
        zero_grad, given the run's step count first (AdaLoRA's rank reallocation).
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


class Variant(NamedTuple):
    """A named base method with its options (a method_options layer) and any other config layer."""

    name: str
    base: str
    options: dict
    config: dict
    source: str  # where its defaults come from: peft's docs, the paper
    file: str  # the variants file that declares it


class _NoDuplicates(yaml.SafeLoader):
    """YAML that refuses a key given twice (safe_load keeps the last): two variants of one name are an error."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise UserError(f"two variants named {key!r} (line {node.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


@functools.cache
def read_variants(path: str) -> dict[str, Variant]:
    """The variants a file declares, checked: known keys, a known base method, options as a mapping."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_NoDuplicates) or {}
        YAML_READ.add(Path(path).resolve())
    except FileNotFoundError:
        raise UserError(f"variants file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"variants file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"variants file {path} must map variant names to {{base, options, source}}")
    out = {}
    for name, entry in data.items():
        where = f"variant {name!r} in {path}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping with keys {', '.join(VARIANT_KEYS)}")
        bad = sorted(set(entry) - set(VARIANT_KEYS))
        if bad:
            raise UserError(f"unknown key {bad[0]!r} in {where}; valid keys: {', '.join(VARIANT_KEYS)}")
        if entry.get("base") not in registry():
            raise UserError(
                f"{where}: unknown base method {entry.get('base')!r}; choose one of: {', '.join(registry())}"
            )
        if str(name) in registry():
            raise UserError(f"{where}: {name!r} is a method's own name; a variant needs another")
        layers = {key: entry.get(key) or {} for key in ("options", "config")}
        for key, layer in layers.items():
            if not isinstance(layer, dict):
                raise UserError(f"{where}: {key} must be a mapping, got {layer!r}")
        out[str(name)] = Variant(
            str(name), entry["base"], layers["options"], layers["config"], entry.get("source") or "", path
        )
    return out


_added: dict[str, Variant] = {}  # the user's variants files named in this process (the config key `variants`)


def add_variants(path: str | Path) -> None:
    """Add a user's variants file to this process's variants; a name already taken by another file is an error."""
    for name, variant in read_variants(str(Path(path).resolve())).items():
        taken = variants().get(name)
        if taken is not None and taken.file != variant.file:
            raise UserError(f"two variants named {name!r}: in {taken.file} and in {variant.file}")
        _added[name] = variant


def variants() -> dict[str, Variant]:
    """name -> Variant: the shipped ones (configs/variants.yaml), then those of the user's files added."""
    return read_variants(str(SHIPPED_VARIANTS)) | _added


def method_names() -> list[str]:
    """Every name `--method` takes: the methods, then the variants."""
    return [*registry(), *variants()]


def base_method(name: str) -> str:
    """The method a name runs: a variant's base, else the name itself."""
    variant = variants().get(name)
    return variant.base if variant else name


def default_options(name: str) -> dict:
    """The method_options a name runs with by default: its base's DEFAULTS, then a variant's own."""
    variant = variants().get(name)
    return dict(get_method(name).DEFAULTS["method_options"]) | (variant.options if variant else {})


def family(base: str, peft_type: str | None = None) -> str:
    """The report's family of a run of base (its peft type, for lora's): one of FAMILIES, or "other adapters"."""
    if base == "lora":
        kind = (peft_type or "LORA").upper()
        if kind in LORA_FAMILY_TYPES:
            return "LoRA family"
        return "prompt learning" if kind in PROMPT_LEARNING_TYPES else "other adapters"
    return BASE_FAMILY.get(base, "other adapters")


def describe(name: str, model: object) -> dict:
    """What a result records of the method it ran: the name (a variant's), its base method, its family and the
    effective peft config (the adapter's, with peft's defaults filled in; None for a model peft does not wrap)."""
    peft = (getattr(model, "peft_config", None) or {}).get("default")
    config = json.loads(json.dumps(peft.to_dict(), default=_jsonable)) if peft is not None else None
    base = base_method(name)
    return {"name": name, "base": base, "family": family(base, config and config["peft_type"]), "peft_config": config}


def _jsonable(value: object) -> object:
    """peft configs hold sets (target modules) and, for some types, classes or dtypes: as JSON, lists and text."""
    return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else str(value)


def get_method(name: str) -> Method:
    methods = registry()
    name = base_method(name)
    if name in methods:
        return importlib.import_module(methods[name])
    if "." in name:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not f"{name}.".startswith(f"{exc.name}."):  # a module it imports is missing, not the method
                raise
    raise unknown_choice("method", name, method_names())


def plannable(with_variants: bool = False) -> list[str]:
    """The methods `plan` traces, most preferred first (a variant right after its base); with_variants: and the
    variants of those methods (a plan names them; by default it compares the methods alone)."""
    planned = {name: get_method(name).PLANNING for name in registry()}
    bases = sorted((name for name, p in planned.items() if p is not None), key=lambda name: planned[name].preference)
    if not with_variants:
        return bases
    named = [v for v in variants().values() if v.base in bases]
    return sorted([*bases, *(v.name for v in named)], key=lambda name: bases.index(base_method(name)))
