"""Decoder models for sequence classification: pad token, last-token pooling, save and reload.

A small randomly initialised Llama in a local folder (conftest's decoder_folder) stands in for SmolLM2
(an optional download): the code path is the same, from a model folder whose tokenizer has no pad token.
"""

from __future__ import annotations

import pytest

from tunebench.config import build_config
from tunebench.models.hub import default_pooling, load_config, load_tokenizer
from tunebench.training.evaluation import evaluate_run
from tunebench.training.run import train


def test_decoder_tokenizer_gets_a_pad_token_and_last_token_pooling(decoder_folder):
    config = load_config(decoder_folder)
    tokenizer = load_tokenizer(decoder_folder, config.model_type)
    assert tokenizer.pad_token == tokenizer.eos_token == "[SEP]"
    assert tokenizer.padding_side == "right"  # last-token pooling reads the last real token
    assert default_pooling(decoder_folder, config) == "last"


@pytest.mark.parametrize("method", ["lora", "head"])
def test_decoder_trains_and_reloads(decoder_folder, tmp_path, method):
    cfg = build_config(method, "rotten_tomatoes", overrides={
        "model": decoder_folder,
        "data": {"max_train_samples": 48, "max_eval_samples": 24, "max_length": 32},
        "train": {"max_steps": 3, "batch_size": 16, "trackers": [], "save": "best"},
    })  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert result["model"]["model_type"] == "llama"
    # lora: r=16 on all seven projections of both layers (q,o 64->64; k,v 64->32; gate,up 64->128; down 128->64)
    # plus the task head, a 64x2 linear layer with bias, the same in every method
    per_layer = 16 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    expected = {"lora": 2 * per_layer + 130, "head": 64 * 2 + 2}[method]
    assert result["trainable_params"] == expected
    again = evaluate_run(tmp_path / "run")
    assert again["agreement_with_training"] == 1.0
    assert again["accuracy"] == result["test_accuracy"]
