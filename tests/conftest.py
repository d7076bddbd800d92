"""Shared fixtures. Nothing here reaches the network: the hub is switched off before anything imports it."""

from __future__ import annotations

import copy
import importlib
import os
import signal

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
BALANCED_ACCURACY = FIXTURES / "metrics" / "balanced_accuracy"

# Small enough for a 2-core CPU, large enough that training measurably learns.
TINY = {
    "data": {"max_train_samples": 32, "max_eval_samples": 32, "max_length": 32},
    "train": {"batch_size": 16, "eval_batch_size": 32, "trackers": []},
}


def deep_update(base: dict, layer: dict) -> dict:
    """base with layer merged in, recursively; neither is modified."""
    out = copy.deepcopy(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def require(module: str):
    """An optional package, imported. Missing, the test skips on a developer's machine, but fails under CI (the
    CI variable set, as CI runners and .ci/run set it): there a skip would hide a test that never ran."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI: the optional package {module!r} is missing ({exc}); `make setup` installs it")
        pytest.skip(f"the optional package {module!r} is missing; `make setup` installs it")


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """The CLI's main() installs SIGINT and SIGTERM handlers; give pytest its own back."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., dict]:
    """tiny_config(method, task, overrides) -> a full, validated config for a small, fast run."""
    from tunebench.config import build_config

    def build(method: str, task: str = "rotten_tomatoes", overrides: dict | None = None) -> dict:
        return build_config(method, task, overrides=deep_update(TINY, overrides or {}))

    return build


@pytest.fixture(scope="session")
def decoder_folder(tmp_path_factory) -> str:
    """A small random Llama (2 layers, hidden 64) with MiniLM's tokenizer and no pad token, like most decoders."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunebench.models.hub import resolve_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def smollm2_tokenizer_folder() -> str:
    from tunebench.models.hub import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory, smollm2_tokenizer_folder) -> str:
    """A 2-layer random Llama (tied embeddings, as SmolLM2) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llm")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def review_frame() -> pd.DataFrame:
    """200 real Rotten Tomatoes sentences, balanced, with their own column names and string labels."""
    from tunebench.data.tasks import get_task

    spec = get_task("rotten_tomatoes")
    df = pd.read_csv(spec.files["train"])
    df = df[df["source"] == "rotten_tomatoes"]
    parts = [df[df["label"] == label].head(100) for label in (0, 1)]
    frame = pd.concat(parts).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return pd.DataFrame(
        {
            "review": frame["text"],
            "sentiment": frame["label"].map({0: "negative", 1: "positive"}),
            "critic_id": range(len(frame)),
        }
    )


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    """Write df in the format the suffix names (csv, tsv, json, jsonl, parquet)."""
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        raise ValueError(suffix)
    return path


@pytest.fixture(scope="session")
def review_files(tmp_path_factory, review_frame: pd.DataFrame) -> dict[str, Path]:
    """The same reviews as csv, tsv, json, jsonl and parquet: suffix -> path."""
    folder = tmp_path_factory.mktemp("reviews")
    return {
        suffix: write_frame(review_frame, folder / f"reviews.{suffix}")
        for suffix in ("csv", "tsv", "json", "jsonl", "parquet")
    }
