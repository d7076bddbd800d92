"""QLoRA: LoRA on a bitsandbytes-quantized base (4-bit NF4 with double quantization, or 8-bit).

Only the backbone is quantized; the task head stays in full precision (for a causal LM: the embeddings and
the LM head). Runs on CUDA and, with
bitsandbytes >= 0.45, on the CPU.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from tunebench.data.generate import is_generate
from tunebench.errors import UserError
from tunebench.methods import Planning, lora
from tunebench.models.classifier import UNQUANTIZED
from tunebench.models.meta import meta_base, quantize_base
from tunebench.models.precision import RULES, resolve_rule
from tunebench.models.task_model import load_model

DEFAULTS = {
    "train": {"lr": 1.0e-3},
    "method_options": lora.DEFAULTS["method_options"] | {"bits": 4},
}
# Dequantization kernels cost time that FLOPs do not count (QLoRA runs ~30-40% slower than LoRA in public reports).
PLANNING = Planning(
    preference=2,
    mfu=0.20,
    assumption="qlora: bitsandbytes NF4 double-quant base (~0.516 byte/weight), other weights and adapters as the "
    "precision rule keeps frozen and trainable weights",
)


def check_options(options: dict) -> None:
    """Called when the config is built, before any data or model loads."""
    if options["bits"] not in (4, 8):
        raise UserError(f"method_options.bits must be 4 or 8, got {options['bits']!r}")
    lora.check_options({k: v for k, v in options.items() if k != "bits"})


def check_strategy(strategy: str, cfg: dict) -> None:
    if strategy == "fsdp" and cfg["method_options"]["bits"] == 8:
        raise UserError("qlora with method_options.bits=8 cannot run under FSDP (int8 weights do not shard); use 4")


# Modules left unquantized: the task head and pooler, a causal LM's head (embeddings are not linear layers).
UNQUANTIZED_MODULES = (*UNQUANTIZED, "lm_head")
# transformers matches a skip pattern from the start of a module's path, or as its suffix: a bare "pooler"
# misses "bert.pooler.dense". Match the name at any depth instead.
SKIP_PATTERNS = [rf"(.*\.)?{name}" for name in UNQUANTIZED_MODULES]


def under_fsdp() -> bool:
    """Launched by `accelerate launch` with an FSDP config (it sets this variable for every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def quantization_config(bits: int, compute: torch.dtype):
    """compute: the precision rule's compute dtype (set at load time: bitsandbytes keeps it per layer)."""
    from transformers import BitsAndBytesConfig

    fsdp = under_fsdp()
    if bits == 8:  # under FSDP check_strategy refuses it first
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_PATTERNS)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        # Under FSDP the packed 4-bit weights are stored in a float dtype, so that FSDP shards them (Accelerate
        # leaves uint8 ones unsharded on every GPU), and in the dtype FSDP casts parameters to before its
        # all-gather (the rule's: bf16 under bf16-mixed), which then leaves their bytes alone; stored as fp32 under
        # a bf16 policy they were cast and garbled. Same 0.5 byte per weight. bitsandbytes' own uint8 otherwise.
        bnb_4bit_quant_storage=compute if fsdp else torch.uint8,
        llm_int8_skip_modules=SKIP_PATTERNS,
    )


def _quantized_base(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    from peft import prepare_model_for_kbit_training

    generate = is_generate(cfg)
    rule = RULES[resolve_rule(cfg["train"]["precision"], torch.device(device))]
    model = load_model(
        model_path,
        num_labels,
        cfg,
        quantization_config=quantization_config(cfg["method_options"]["bits"], rule.compute),
        device_map={"": device},  # bitsandbytes quantizes as the weights land on the device
    )
    if not generate:
        model.classifier.to(device, torch.float32)  # trained in full precision, as peft leaves unquantized parameters
    # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place on its first forward in eval mode,
    # for an inference-only kernel; every later training step (after the first validation) then runs that kernel,
    # which has no autograd support: a RuntimeError or silently wrong gradients. Keep the trainable layout.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    # peft's preparation: frozen backbone, its unquantized parameters in fp32 (the loop's precision.apply_rule
    # then casts them to the rule's frozen dtype), checkpointing as configured
    prepare_model_for_kbit_training(
        model if generate else model.backbone, use_gradient_checkpointing=cfg["train"]["gradient_checkpointing"]
    )
    return model


def build(model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    base = _quantized_base(model_path, num_labels, cfg, device)
    return lora.attach_adapter(base, cfg["method_options"], is_generate(cfg))


def build_meta(config, num_labels: int | None, cfg: dict, precision: str) -> nn.Module:
    """build's model with bitsandbytes' layers replaced by tunebench.models.meta.QuantizedLinear stand-ins computing
    in the rule's compute dtype, the base quantized after the adapter is attached (peft wraps a quantized layer in
    place: the same modules either way). The planner applies the rule's other dtypes, as the loop does."""
    generate = is_generate(cfg)
    model = meta_base(config, num_labels, cfg, RULES[precision].frozen)
    if cfg["train"]["gradient_checkpointing"]:  # what prepare_model_for_kbit_training adds for checkpointing
        (model if generate else model.backbone).enable_input_require_grads()
    model = lora.attach_adapter(model, cfg["method_options"], generate)
    quantize_base(model, cfg["method_options"]["bits"], RULES[precision].compute, UNQUANTIZED_MODULES)
    return model


save = lora.save


def load(folder: str, model_path: str, num_labels: int | None, cfg: dict, device) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(_quantized_base(model_path, num_labels, cfg, device), folder)


step_hook = lora.step_hook  # AdaLoRA on a quantized base
check_settings = lora.check_settings
