"""LoRA adapters through peft; any other peft method (IA3, DoRA via use_dora, ...) via `peft_config`.

The base weights stay frozen and bit-identical; only the adapter and the task head train and are saved.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tunebench.data.generate import is_generate
from tunebench.errors import UserError, unknown_choice
from tunebench.methods import Planning
from tunebench.models.classifier import TASK_HEAD
from tunebench.models.meta import meta_base
from tunebench.models.precision import RULES
from tunebench.models.task_model import load_model

DEFAULTS = {
    "train": {"lr": 1.0e-3},
    "method_options": {
        "r": 16,
        "alpha": 32,
        # peft's dropout copies each adapted layer's input for backward: on MiniLM that made LoRA's
        # activation peak larger than full fine-tuning's. 0 keeps LoRA's memory saving.
        "dropout": 0.0,
        "target_modules": None,  # None: the per-architecture default below
        "use_dora": False,
        "peft_config": None,  # a whole peft config as a mapping, e.g. {peft_type: IA3, ...}; wins over the above
    },
}
# LoRA skips the frozen weights' gradient matmuls but keeps their overheads: a lower MFU than full's.
PLANNING = Planning(preference=1, mfu=0.30)

# Attention and MLP projections per architecture; unknown ones fall back to peft's "all-linear".
TARGET_MODULES = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "mpnet": ["q", "k", "v", "o", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


# peft types tunebench's loop cannot train, and why (peft 0.21): refused when the config is built
UNSUPPORTED = {
    "POLY": "routes each example by a task id (task_ids), which tunebench's batches do not carry",
    "MULTITASK_PROMPT_TUNING": "routes each example by a task id (task_ids), which tunebench's batches do not carry",
    "XLORA": "mixes LoRA adapters trained beforehand (its adapters option) and trains none of its own",
    "CPT": "needs each example's context token ids and masks (cpt_token_ids, cpt_mask), which tunebench's batches "
    "do not carry",
}
# options a type needs that peft leaves unset: without them it trains nothing or fails mid-run
REQUIRED = {
    "TRAINABLE_TOKENS": (("token_indices",), "the tokens whose embeddings train"),
    "PROMPT_TUNING": (("num_virtual_tokens",), "how many virtual tokens it learns"),
    "P_TUNING": (("num_virtual_tokens",), "how many virtual tokens it learns"),
    "PREFIX_TUNING": (("num_virtual_tokens",), "how many virtual tokens it learns"),
    "CARTRIDGE": (("num_virtual_tokens",), "how many virtual tokens it learns"),
    "ADAPTION_PROMPT": (("adapter_len", "adapter_layers"), "its prompt's length and how many top layers take it"),
}


def peft_config(model: nn.Module, options: dict, generate: bool = False):
    """For tunebench's Classifier: no peft task type (its forward takes the loop's batch as it is); the
    task head is trained and saved in full (modules_to_save) and never gets an adapter. For a causal LM
    (generate): peft's CAUSAL_LM type (it generates), and the LM head stays frozen ("all-linear" skips it)."""
    targets = options["target_modules"] or TARGET_MODULES.get(model.config.model_type, "all-linear")
    return make_peft_config(raw_config(options, generate, targets))


def raw_config(options: dict, generate: bool, targets: list[str] | str) -> dict:
    """The peft config as a mapping. options' peft_config holds a LoRA config's further keywords (use_rslora,
    init_lora_weights, ...) when it names no other peft_type, and with one (IA3, PREFIX_TUNING, ...) the whole
    config: peft's own defaults then apply (its target modules per architecture among them)."""
    head = {"task_type": "CAUSAL_LM"} if generate else {"task_type": None, "modules_to_save": [TASK_HEAD]}
    raw = dict(options["peft_config"] or {})
    if str(raw.get("peft_type", "LORA")).upper() == "LORA":
        raw = {
            "r": options["r"],
            "lora_alpha": options["alpha"],
            "lora_dropout": options["dropout"],
            "target_modules": targets,
            "exclude_modules": None if generate else [TASK_HEAD],  # "all-linear" would otherwise adapt the head too
            "use_dora": options["use_dora"],
            **raw,
        }
    raw = {"peft_type": "LORA", **raw, **head} if generate else {"peft_type": "LORA", **head, **raw}
    if str(raw["peft_type"]).upper() == "ADALORA":
        # its total_step is the run's, known once the loaders are (step_hook sets it): this only lets it be built
        raw.setdefault("total_step", raw.get("tinit", 0) + raw.get("tfinal", 0) + 1)
    return raw


def make_peft_config(raw: dict):
    """peft's config of raw (a peft config as a mapping); an option or value the installed peft rejects is named."""
    from peft import __version__, get_peft_config
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    kind = str(raw["peft_type"]).upper()
    if kind not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise unknown_choice(f"peft_type (peft {__version__})", raw["peft_type"], list(PEFT_TYPE_TO_CONFIG_MAPPING))
    if kind in UNSUPPORTED:
        raise UserError(f"peft {__version__}'s {kind} cannot train in tunebench: it {UNSUPPORTED[kind]}")
    keys, why = REQUIRED.get(kind, ((), ""))
    if any(not raw.get(key) for key in keys):
        raise UserError(f"{kind} needs method_options.peft_config.{' and '.join(keys)}: {why}")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    unknown = sorted(set(raw) - set(config_class.__dataclass_fields__))
    if unknown == ["modules_to_save"]:  # added for tunebench's classifier: its head trains in full
        raise UserError(f"{kind} cannot train a classifier's head in peft {__version__} (no modules_to_save)")
    if unknown:
        raise UserError(f"peft {__version__}'s {config_class.__name__} has no option {unknown[0]!r}")
    try:
        return get_peft_config(raw | {"peft_type": kind})
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"peft {__version__} rejects the {kind} options {raw}: {str(exc).splitlines()[0]}") from None


def check_options(options: dict) -> None:
    """A peft option the installed peft does not know, or a value it rejects, fails here, when the config is
    built: before any work."""
    make_peft_config(raw_config(options, True, "all-linear"))  # the options alone: the task's keys come at build


def check_settings(cfg: dict) -> None:
    """Options the run's other settings cannot use, when the config is built: prompt learning on tunebench's
    classifier (peft prepends its virtual tokens only in its task models, and the classifier is tunebench's own),
    and prefix tuning under gradient checkpointing (transformers' checkpointed layers drop the past_key_values that
    hold its prefix)."""
    from peft import PromptLearningConfig, __version__
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    kind = str((cfg["method_options"]["peft_config"] or {}).get("peft_type", "LORA")).upper()
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(kind)
    if not is_generate(cfg) and config_class and issubclass(config_class, PromptLearningConfig):
        raise UserError(
            f"{kind} cannot train a classifier in peft {__version__}: prompt learning needs one of peft's task "
            "models, and tunebench's classifier is its own; use it on a generate task"
        )
    if kind == "PREFIX_TUNING" and cfg["train"]["gradient_checkpointing"]:
        raise UserError(
            "prefix tuning cannot train with gradient checkpointing: transformers' checkpointed layers drop the "
            "past_key_values that hold its prefix; set train.gradient_checkpointing=false"
        )


def attach_adapter(model: nn.Module, options: dict, generate: bool = False) -> nn.Module:
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config(model, options, generate))
    except (ValueError, AttributeError) as exc:  # target modules not found; SHADOW finds no block stack in it
        raise UserError(f"peft could not wrap the model: {str(exc).splitlines()[0]}") from None


def build(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    return attach_adapter(load_model(model_path, num_labels, cfg), cfg["method_options"], is_generate(cfg))


def build_meta(config, num_labels: int | None, cfg: dict, precision: str) -> nn.Module:
    base = meta_base(config, num_labels, cfg, RULES[precision].frozen)
    options = cfg["method_options"]
    # BOFT fills its butterfly permutation matrices element by element, which meta tensors cannot: they are made
    # on the CPU, and peft moves the adapter to the base layer's (meta) device
    boft = str((options["peft_config"] or {}).get("peft_type", "")).upper() == "BOFT"
    with torch.device("cpu") if boft else contextlib.nullcontext():
        return _lycoris_in_eval(attach_adapter(base, options, is_generate(cfg)))


def _lycoris_in_eval(model: nn.Module) -> nn.Module:
    """LyCORIS layers (LoHa, LoKr) draw `torch.rand(1) > module_dropout` in training, a branch on a value that a
    fake-tensor trace cannot take; in eval mode they skip that draw (and rank dropout) and run the same ops
    otherwise. Their train() then keeps them in eval: the planner's step is the same as with no such dropout."""
    from peft.tuners.lycoris_utils import LycorisLayer

    for module in model.modules():
        if isinstance(module, LycorisLayer):
            module.train = lambda mode=True, layer=module: nn.Module.train(layer, False)
            module.train()
    return model


def save(model: nn.Module, folder: str, state_dict: dict | None = None) -> None:
    """state_dict: the whole model's, gathered from FSDP's shards; peft picks the adapter and head out of it."""
    model.save_pretrained(folder, state_dict=state_dict)  # adapter weights plus modules_to_save (the head)


def load(folder: str, model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(model_path, num_labels, cfg), folder)


def step_hook(model: nn.Module, total_steps: int):
    """AdaLoRA reallocates its ranks after every optimizer step (peft's update_and_allocate: after the step, before
    zero_grad) on a budget schedule over the run's steps, which it learns here; other peft types need nothing."""
    config = (getattr(model, "peft_config", None) or {}).get("default")
    if config is None or config.peft_type != "ADALORA":
        return None
    if config.tinit >= total_steps - config.tfinal:
        raise UserError(
            f"AdaLoRA's tinit ({config.tinit}) + tfinal ({config.tfinal}) leave none of the run's {total_steps} "
            "steps to reallocate ranks in: lower them or train longer"
        )
    config.total_step = total_steps
    return model.base_model.update_and_allocate
