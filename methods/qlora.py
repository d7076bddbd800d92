"""QLoRA: LoRA on a bitsandbytes-quantized base (4-bit NF4 with double quantization, or 8-bit).

Only the backbone is quantized; the task head stays in full precision (for a causal LM: the embeddings and
the LM head). Runs on CUDA and, with
bitsandbytes >= 0.45, on the CPU.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from tunebench.classifier import UNQUANTIZED
from tunebench.errors import UserError
from tunebench.generation import is_generate, load_model
from tunebench.methods import lora

DEFAULTS = {
    "train": {"lr": 1.0e-3},
    "method_options": lora.DEFAULTS["method_options"] | {"bits": 4},
}


def check_options(options: dict) -> None:
    """Called when the config is built, before any data or model loads."""
    if options["bits"] not in (4, 8):
        raise UserError(f"method_options.bits must be 4 or 8, got {options['bits']!r}")


# transformers matches a skip pattern from the start of a module's path, or as its suffix: a bare "pooler"
# misses "bert.pooler.dense". Match the name at any depth instead.
SKIP_PATTERNS = [rf"(.*\.)?{name}" for name in (*UNQUANTIZED, "lm_head")]


def under_fsdp() -> bool:
    """Launched by `accelerate launch` with an FSDP config (it sets this variable for every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def quantization_config(bits: int, device: torch.device):
    from transformers import BitsAndBytesConfig

    fsdp = under_fsdp()
    if bits == 8:
        if fsdp:
            raise UserError("qlora with method_options.bits=8 cannot run under FSDP (int8 weights do not shard); use 4")
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_PATTERNS)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        # FSDP all-gathers a block's parameters as one flat tensor of one dtype: the packed 4-bit weights are
        # stored in the dtype of the block's other parameters, fp32 after peft's prepare_model_for_kbit_training
        # (same bytes: 0.5 per weight); bitsandbytes' own uint8 otherwise.
        bnb_4bit_quant_storage=torch.float32 if fsdp else torch.uint8,
        llm_int8_skip_modules=SKIP_PATTERNS,
    )


def _quantized_base(model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    from peft import prepare_model_for_kbit_training

    generate = is_generate(cfg)
    model = load_model(
        model_path,
        task,
        cfg,
        quantization_config=quantization_config(cfg["method_options"]["bits"], device),
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
    # peft's preparation: frozen backbone, its unquantized parameters in fp32, checkpointing as configured
    prepare_model_for_kbit_training(
        model if generate else model.backbone, use_gradient_checkpointing=cfg["train"]["gradient_checkpointing"]
    )
    return model


def build(model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    base = _quantized_base(model_path, task, tokenizer, cfg, device)
    return lora.attach_adapter(base, cfg["method_options"], is_generate(cfg))


save = lora.save


def load(folder: str, model_path: str, task, tokenizer, cfg: dict, device) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(_quantized_base(model_path, task, tokenizer, cfg, device), folder)
