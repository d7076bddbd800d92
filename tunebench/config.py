"""Layered YAML configuration.

defaults.yaml -> method DEFAULTS -> variant (configs/variants.yaml) -> task `config:` -> user file -> --set overrides.
Every key a later layer names must exist in the layers below it, so a typo fails loudly.
"""

from __future__ import annotations

import codecs
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tunebench.data.tasks import get_task
from tunebench.data.template import template_columns
from tunebench.errors import UserError, unknown_choice
from tunebench.files import CONFIG_DIR, read_yaml
from tunebench.methods import add_variants, base_method, get_method, variants
from tunebench.models.precision import PRECISION_CHOICES
from tunebench.optim import ADAMW_IMPLEMENTATIONS, OPTIMIZERS

Config = dict[str, Any]
# shortcut -> config key: the common settings, so most runs need no YAML at all (flags of `tunebench train`)
SHORTCUTS = {
    "model": "model",
    "max_train_samples": "data.max_train_samples",
    "max_eval_samples": "data.max_eval_samples",
    "max_test_samples": "data.max_test_samples",
    "max_length": "data.max_length",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "seed",
}


def _coerce(value: Any, like: Any, key: str) -> Any:
    """Give a leaf the type of its default: YAML reads 5e-5 as a string, for one."""
    if value is None or like is None or isinstance(like, (dict, list)):
        return value
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {key!r} must be true or false, got {value!r}")
    if isinstance(like, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key {key!r} must be a number, got {value!r}") from None
        if isinstance(like, int) and number.is_integer() and not isinstance(value, float):
            return int(number)
        return number if isinstance(like, float) or not number.is_integer() else int(number)
    return value


def merge(base: Config, layer: dict, where: str, prefix: str = "", free: frozenset[str] = frozenset()) -> Config:
    """Return base updated by layer; unknown keys raise. A None or {} default is a free-form leaf; free names such
    leaves an earlier layer filled (a variant's peft_config): a later mapping adds to them, unchecked."""
    out = copy.deepcopy(base)
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            valid = ", ".join(sorted(out)) or "(none)"
            raise UserError(f"unknown config key {dotted!r} in {where}; valid keys here: {valid}")
        default = out[key]
        if dotted in free and isinstance(default, dict) and isinstance(value, dict):
            out[key] = default | value
        elif isinstance(default, dict) and default and isinstance(value, dict):
            out[key] = merge(default, value, where, prefix=f"{dotted}.", free=free)
        elif isinstance(default, dict) and default and value is not None:
            raise UserError(f"config key {dotted!r} in {where} must be a mapping")
        else:
            out[key] = _coerce(value, default, dotted)
    return out


def set_dotted(target: dict, dotted: str, value: Any) -> dict:
    """target['a']['b'] = value for 'a.b', creating the mappings on the way; returns target."""
    node = target
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return target


def parse_set(items: list[str]) -> dict:
    """Turn ['train.lr=1e-4', 'method_options.r=8'] into a nested dict."""
    nested: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes key=value (for example train.lr=1e-4), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:  # `data.prompt_template={text`: a flow mapping left open
            raise UserError(
                f"--set {item!r}: YAML cannot read the value ({exc.problem}); quote text: --set '{key}=\"...\"'"
            ) from None
        set_dotted(nested, key, value)
    return nested


def build_config(
    method: str | None = None,
    task: str | None = None,
    user_file: str | Path | None = None,
    overrides: dict | None = None,
    layers: Sequence[tuple[str, dict]] = (),
) -> Config:
    """Compose the effective config for one run.

    layers are (where, layer) pairs applied in order after the user file and before overrides (a suite's
    config, task, method and grid layers); where names the layer in errors. method and task may also come
    from the user file or overrides; the explicit argument wins.
    """
    cfg = read_yaml(CONFIG_DIR / "defaults.yaml")
    user = read_yaml(user_file) if user_file else {}
    overrides = overrides or {}
    method = method or overrides.get("method") or user.get("method") or cfg["method"]
    task = task or overrides.get("task") or user.get("task") or cfg["task"]
    # the user's variants are known before the method is looked up: it may be one of them
    named = [overrides, *(layer for _, layer in reversed(layers)), user]  # the last layer to name it wins
    variants_file = next((layer["variants"] for layer in named if layer.get("variants")), None)
    if variants_file:
        add_variants(variants_file)

    spec = get_method(method)
    cfg["method"], cfg["task"] = method, task
    cfg["method_options"] = copy.deepcopy(spec.DEFAULTS.get("method_options", {}))
    method_layer = {k: v for k, v in spec.DEFAULTS.items() if k != "method_options"}
    cfg = merge(cfg, method_layer, f"method {base_method(method)!r} defaults")
    variant = variants().get(method)
    later = (
        [(f"variant {method!r} ({variant.file})", {**variant.config, "method_options": variant.options})]
        if variant
        else []
    )
    later += [(f"task {task!r}", get_task(task).config)]
    later += [(str(user_file), user)] if user else []
    later += [*layers, *([("command-line overrides", overrides)] if overrides else [])]

    free = frozenset(k for k, v in flatten(cfg).items() if v is None or v == {})

    def compose(base: Config) -> Config:
        for where, layer in later:
            base = merge(base, layer, where, free=free)
        return base

    composed = compose(cfg)
    # A method may default differently for generate tasks (head: a pretrained LM head, not a fresh probe); the
    # task type is known only once every layer is in, so those defaults then go right after the method's own.
    generate_defaults = getattr(spec, "GENERATE_DEFAULTS", None)
    if generate_defaults and composed["data"]["task_type"] == "generate":
        composed = compose(merge(cfg, generate_defaults, f"method {method!r} defaults for generate tasks"))
    cfg = composed
    # the layers above were chosen for this method and task: a `method:` or `task:` in a later layer must not
    # replace them (it would run one method with another's options)
    cfg["method"], cfg["task"] = method, task
    if cfg["variants"]:  # as read, so that `eval` of the run reads the same file from any folder
        cfg["variants"] = str(Path(cfg["variants"]).resolve())
    check_config(cfg)
    if hasattr(spec, "check_options"):
        spec.check_options(cfg["method_options"])
    if hasattr(spec, "check_settings"):
        spec.check_settings(cfg)
    return cfg


CHOICES = {
    "train.scheduler": ("linear", "cosine", "constant"),
    "train.precision": PRECISION_CHOICES,
    "train.save": ("best_and_last", "best", "none"),
    "train.optimizer": OPTIMIZERS,
    "train.adamw": ("auto", *ADAMW_IMPLEMENTATIONS),
    "data.task_type": ("classify", "generate"),
    "data.too_long": ("error", "drop"),
}
POSITIVE_INTEGERS = (
    "train.epochs",
    "train.batch_size",
    "train.grad_accum",
    "train.log_every",
    "data.max_length",
    "generation.batch_size",
    "generation.forgetting_max_length",
)
NON_NEGATIVE_INTEGERS = ("train.eval_every", "generation.margin", "generation.forgetting_texts")
# null defaults get no type from _coerce: without these checks a bad value fails mid-run, not here
POSITIVE_INTEGERS_OR_NULL = (
    "data.max_train_samples",
    "data.max_eval_samples",
    "data.max_test_samples",
    "train.max_steps",
)
COLUMN_NAMES = (
    "data.text_column",
    "data.label_column",
    "data.prompt_column",
    "data.answer_column",
    "data.messages_column",
)
COLUMN_NAMES_OR_NULL = ("data.text_pair_column", "data.prompt_template")


def check_config(cfg: Config) -> None:
    """Raise UserError for a value out of its range or choices: before any work, not mid-run."""
    from tunebench.models.classifier import check_pooling  # lazy: it imports torch and transformers

    check_pooling(cfg["pooling"])
    dropout = cfg["head_dropout"]
    number = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
    if dropout is not None and not (number and 0 <= dropout < 1):
        raise UserError(f"head_dropout must be a number in [0, 1) or null, got {dropout!r}")
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        if cfg[section][key] not in choices:
            raise UserError(f"{dotted} must be one of {', '.join(choices)}, got {cfg[section][key]!r}")
    _check_integers(cfg)
    if cfg["train"]["lr"] <= 0:
        raise UserError(f"train.lr must be positive, got {cfg['train']['lr']!r}")
    _check_texts(cfg)
    cap = cfg["measure"]["memory_cap"]
    if isinstance(cap, str):  # YAML 1.1 reads 1e9 (no dot) as a string
        try:
            cap = cfg["measure"]["memory_cap"] = float(cap)
        except ValueError:
            pass
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
        raise UserError(f"measure.memory_cap must be a positive number of bytes or null, got {cap!r}")
    try:
        codecs.lookup(cfg["data"]["encoding"])
    except (LookupError, TypeError):
        raise UserError(
            f"data.encoding must be a text encoding Python knows (utf-8, latin-1, cp1252, ...), "
            f"got {cfg['data']['encoding']!r}"
        ) from None


def _value(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return cfg[section][key]


def _check_integers(cfg: Config) -> None:
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for dotted in POSITIVE_INTEGERS:
        if not integer(value := _value(cfg, dotted)) or value < 1:
            raise UserError(f"{dotted} must be a positive integer, got {value!r}")
    for dotted in NON_NEGATIVE_INTEGERS:
        if not integer(value := _value(cfg, dotted)) or value < 0:
            raise UserError(f"{dotted} must be an integer >= 0, got {value!r}")
    for dotted in POSITIVE_INTEGERS_OR_NULL:
        value = _value(cfg, dotted)
        if value is not None and (not integer(value) or value < 1):
            raise UserError(f"{dotted} must be a positive integer or null, got {value!r}")


def _check_texts(cfg: Config) -> None:
    """Column names and the prompt template are text; a template's braces must pair up."""
    for dotted in (*COLUMN_NAMES, *COLUMN_NAMES_OR_NULL):
        value = _value(cfg, dotted)
        if (value is None and dotted in COLUMN_NAMES_OR_NULL) or (isinstance(value, str) and value):
            continue
        if isinstance(value, dict):  # `--set 'data.prompt_template=Review: {text}'`: YAML read key: value
            raise UserError(
                f"{dotted} must be text, got the mapping {value!r} (YAML reads 'a: b' and {{a}} as mappings); "
                f"quote the value: --set '{dotted}=\"...\"'"
            )
        raise UserError(
            f"{dotted} must be {'text or null' if dotted in COLUMN_NAMES_OR_NULL else 'text'}, got {value!r}"
        )
    if cfg["data"]["prompt_template"] is not None:
        template_columns(cfg["data"]["prompt_template"])


def run_config(
    method: str | None = None,
    task: str | None = None,
    *,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    **shortcuts: Any,
) -> Config:
    """The effective config of a run: defaults, method, task, the config file, overrides, then shortcuts.

    overrides maps dotted keys to values, as `--set` does: {"train.lr": 1e-4, "method_options.r": 8}.
    """
    unknown = set(shortcuts) - set(SHORTCUTS)
    if unknown:
        raise unknown_choice("setting", sorted(unknown)[0], [*SHORTCUTS, "config", "overrides", "out"])
    layer: dict = {}
    for key, value in (overrides or {}).items():
        set_dotted(layer, key, value)
    for name, value in shortcuts.items():
        if value is not None:
            set_dotted(layer, SHORTCUTS[name], value)
    if out is not None:
        layer["out"] = str(out)
    return build_config(method, task, config, layer)


def flatten(data: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; empty mappings stay as values."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
