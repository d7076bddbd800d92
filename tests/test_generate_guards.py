"""Guards for generate tasks that must fail when the code they guard breaks: the embedded tasks fit their own
data, padding carries no loss or answer-token metric where the pad id is a real token, generation stops at eos."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunebench.config import build_config
from tunebench.data import generate as generation
from tunebench.data.tasks import get_task, load_task, registered_tasks
from tunebench.models.hub import resolve_model

EMBEDDED_GENERATE = [t for t in registered_tasks() if build_config("lora", t)["data"]["task_type"] == "generate"]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


def test_the_embedded_generate_tasks_are_found():
    assert EMBEDDED_GENERATE == ["banking77_gen", "rotten_tomatoes_gen"]


@pytest.mark.parametrize("name", EMBEDDED_GENERATE)
def test_an_embedded_generate_task_fits_every_example_of_every_split(smollm2_tokenizer, name):
    """With its own defaults, as the embedded decoder tokenises it (chat template, answer, eos): every example
    fits data.max_length, or the task drops the longer ones and counts each of them."""
    data_cfg = build_config("lora", name, overrides={"model": "smollm2-135m"})["data"]
    splits = load_task(get_task(name), data_cfg).splits
    unbounded, none_dropped = generation.tokenize(splits, smollm2_tokenizer, data_cfg | {"max_length": 10**9})
    assert set(none_dropped.values()) == {0}
    longer = {s: sum(n > data_cfg["max_length"] for n in split["length"]) for s, split in unbounded.items()}
    if data_cfg["too_long"] == "error":
        assert longer == dict.fromkeys(splits, 0), f"{name}: examples longer than {data_cfg['max_length']}: {longer}"
    else:
        _, dropped = generation.tokenize(splits, smollm2_tokenizer, data_cfg)
        assert dropped == longer


def test_the_readme_banking77_gen_command_runs_with_the_task_defaults(tmp_path):
    """`tunebench train --method lora --model smollm2-135m --task banking77_gen --max-train-samples 64`, made
    small (one step, four evaluation examples) without touching data.max_length or data.too_long: the first
    64 training examples include a long one (101 tokens), which the task's own max_length used to refuse."""
    from tunebench.cli import main

    argv = ["train", "--method", "lora", "--model", "smollm2-135m", "--task", "banking77_gen"]
    argv += ["--max-train-samples", "64", "--max-eval-samples", "4", "--max-steps", "1"]
    argv += ["--set", "generation.forgetting_texts=1", "--set", "train.trackers=[]", "--set", "train.save=none"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    import json

    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["too_long_dropped"] == {"train": 0, "validation": 0, "test": 0}
