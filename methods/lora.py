"""LoRA adapters through peft; any other peft method (IA3, DoRA via use_dora, ...) via `peft_config`.

The base weights stay frozen and bit-identical; only the adapter and the task head train and are saved.
"""

from __future__ import annotations

from torch import nn

from tunebench.data.generate import is_generate
from tunebench.errors import UserError
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


def peft_config(model: nn.Module, options: dict, generate: bool = False):
    """For tunebench's Classifier: no peft task type (its forward takes the loop's batch as it is); the
    task head is trained and saved in full (modules_to_save) and never gets an adapter. For a causal LM
    (generate): peft's CAUSAL_LM type (it generates), and the LM head stays frozen ("all-linear" skips it)."""
    from peft import LoraConfig, get_peft_config

    head = {"task_type": "CAUSAL_LM"} if generate else {"task_type": None, "modules_to_save": [TASK_HEAD]}
    if options["peft_config"]:
        raw = dict(options["peft_config"]) | {"task_type": head["task_type"]}
        if not generate:
            raw.setdefault("modules_to_save", [TASK_HEAD])
        try:
            return get_peft_config(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"method_options.peft_config is not a valid peft config: {exc}") from None
    targets = options["target_modules"] or TARGET_MODULES.get(model.config.model_type, "all-linear")
    return LoraConfig(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=targets,
        exclude_modules=None if generate else [TASK_HEAD],  # "all-linear" would otherwise adapt the head too
        use_dora=options["use_dora"],
        **head,
    )


def attach_adapter(model: nn.Module, options: dict, generate: bool = False) -> nn.Module:
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config(model, options, generate))
    except ValueError as exc:  # e.g. target modules not found in the model
        raise UserError(f"peft could not wrap the model: {str(exc).splitlines()[0]}") from None


def build(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    return attach_adapter(load_model(model_path, num_labels, cfg), cfg["method_options"], is_generate(cfg))


def build_meta(config, num_labels: int | None, cfg: dict, precision: str) -> nn.Module:
    base = meta_base(config, num_labels, cfg, RULES[precision].frozen)
    return attach_adapter(base, cfg["method_options"], is_generate(cfg))


def save(model: nn.Module, folder: str, state_dict: dict | None = None) -> None:
    """state_dict: the whole model's, gathered from FSDP's shards; peft picks the adapter and head out of it."""
    model.save_pretrained(folder, state_dict=state_dict)  # adapter weights plus modules_to_save (the head)


def load(folder: str, model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(model_path, num_labels, cfg), folder)
