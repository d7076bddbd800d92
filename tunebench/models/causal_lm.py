"""Causal LMs for generate tasks: the check that a checkpoint has an LM head, loading it, and untying its head."""

from __future__ import annotations

from torch import nn

from tunebench.errors import UserError
from tunebench.models.hub import DECODER_TYPES, hub_error, load_config


def check_causal_lm(model_path: str, config) -> None:
    """A generate task needs a decoder with a causal LM head: a one-line error otherwise, before any work."""
    if config.model_type not in DECODER_TYPES and not getattr(config, "is_decoder", False):
        raise UserError(
            f"model {model_path!r} ({config.model_type}) has no causal LM head: a generate task needs a decoder "
            f"({', '.join(sorted(DECODER_TYPES))}), e.g. --model smollm2-135m"
        )


def load_causal_lm(model_path: str, **kwargs) -> nn.Module:
    """AutoModelForCausalLM from model_path (kwargs go to from_pretrained)."""
    from transformers import AutoModelForCausalLM

    check_causal_lm(model_path, load_config(model_path))
    try:
        return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except OSError as exc:
        raise hub_error(model_path, exc) from None


def untie_lm_head(model: nn.Module) -> bool:
    """Give the LM head its own copy of the weight when the checkpoint ties it to the input embeddings, so that
    training the head leaves the embeddings as they were. True when it untied."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not embeddings.weight:
        return False
    head.weight = nn.Parameter(embeddings.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return True
