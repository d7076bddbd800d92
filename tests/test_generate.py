"""Decoder LLMs, generate tasks: a tiny random Llama with SmolLM2's tokenizer (its chat template and eos), real
data files, every method through the real loop; one short test on the real SmolLM2."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoTokenizer

from tunebench import api
from tunebench.config import build_config
from tunebench.data import generate as generation
from tunebench.errors import UserError
from tunebench.models.hub import resolve_model
from tunebench.results import fixed_seconds
from tunebench.training import generate_eval
from tunebench.training.evaluation import evaluate_run

# Two prompts, two answers: learnable in a few steps by a tiny model.
PAIRS = [("Say yes.", "yes"), ("Say no.", "no")] * 8
SMALL = {
    "data": {"max_length": 64},
    "train": {"batch_size": 8, "epochs": 4, "trackers": []},
    "generation": {"forgetting_texts": 4, "batch_size": 8},
}
LR = {"full": 1e-3, "lora": 1e-2, "qlora": 1e-2, "head": 1e-2}


def _write_pairs(path) -> str:
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PAIRS))
    return str(path)


@pytest.fixture()
def pairs_file(tmp_path) -> str:
    return _write_pairs(tmp_path / "pairs.jsonl")


def _overrides(model: str, **more) -> dict:
    return SMALL | {"model": model, "data": SMALL["data"] | {"task_type": "generate"}} | more


@pytest.fixture(scope="module")
def untuned(tiny_llm, tmp_path_factory) -> dict:
    """The untuned baseline (`none`) on the pairs, run once: every method's run is compared with it."""
    folder = tmp_path_factory.mktemp("untuned")
    return api.train("none", _write_pairs(folder / "pairs.jsonl"), overrides=_overrides(tiny_llm), out=folder / "none")


def test_labels_mask_the_prompt_token_by_token(tiny_llm, pairs_file):
    cfg = build_config("full", pairs_file, overrides=_overrides(tiny_llm))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    from tunebench.data.tasks import get_task, load_task

    splits = load_task(get_task(pairs_file), cfg["data"]).splits
    encoded, dropped = generation.tokenize(splits, tokenizer, cfg["data"])
    assert dropped == {"train": 0, "validation": 0, "test": 0}
    example = encoded["train"][0]
    # independent: the chat template's own rendering, tokenized, is the prompt; the answer follows with eos
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": splits["train"][0]["prompt"][0]["content"]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    answer = tokenizer(splits["train"][0]["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == list(prompt) + answer
    assert example["labels"] == [-100] * len(prompt) + answer
    batch = generation.collate(tokenizer.pad_token_id)([encoded["train"][0], encoded["train"][1]])
    for row, ex in enumerate([encoded["train"][0], encoded["train"][1]]):
        padding = batch["labels"].shape[1] - len(ex["labels"])
        assert batch["labels"][row].tolist() == ex["labels"] + [-100] * padding
        assert batch["attention_mask"][row].tolist() == [1] * len(ex["labels"]) + [0] * padding


def test_chat_template_switch_and_messages_format(tiny_llm, tmp_path):
    path = tmp_path / "chat.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rows = [{"messages": chat + [{"role": "assistant", "content": f"hello {i}"}]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    from tunebench.data.tasks import get_task, load_task

    for templated in (True, False):
        cfg = build_config(
            "full",
            str(path),
            overrides=_overrides(tiny_llm, data={"task_type": "generate", "chat_template": templated}),
        )
        splits = load_task(get_task(str(path)), cfg["data"]).splits
        assert splits["train"][0]["prompt"] == chat  # the last assistant turn is the answer, the rest the prompt
        text = generation.render_prompt(chat, tokenizer, templated)
        assert ("<|im_start|>" in text) is templated


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "head"])
def test_every_method_lowers_the_answer_loss_and_reloads_the_same_generations(
    tiny_llm, pairs_file, untuned, tmp_path, method
):
    result = api.train(
        method,
        pairs_file,
        overrides=_overrides(tiny_llm, train=SMALL["train"] | {"lr": LR[method]}),
        out=tmp_path / method,
    )
    assert result["status"] == "ok"
    assert result["test"]["answer_loss"] < untuned["test"]["answer_loss"]
    assert result["test_exact_match"] == result["test_accuracy"]
    assert result["forgetting"]["texts"] == 4
    _check_forgetting_starts_from_the_checkpoint(result["forgetting"], untuned["forgetting"], method)
    assert result["lm_head_untied"] is (method == "head")
    # the forgetting probes (the checkpoint loaded and measured, then the built and trained models) are fixed cost
    assert 0 < result["forgetting_seconds"] < fixed_seconds(result)
    again = evaluate_run(tmp_path / method)
    assert again["agreement_with_training"] == 1.0
    assert again["exact_match"] == result["test_exact_match"]
    assert again["choice_accuracy"] == result["test_choice_accuracy"]
    assert again["choice"] == {"candidates": 2, "source": "distinct answers"}


def _check_forgetting_starts_from_the_checkpoint(forgetting: dict, untuned: dict, method: str) -> None:
    """Every method's loss before is the unmodified checkpoint's (the untuned model's); only qlora's build (its
    4-bit quantization) changes the loss before training, and the total change is build plus training."""
    assert forgetting["loss_before"] == pytest.approx(untuned["loss_before"], rel=1e-6, abs=0)
    if method == "qlora":
        assert abs(forgetting["build_change"]) > 1e-4
    else:  # full, head (an untied copy of the same weights), lora (its B matrices start at zero): the checkpoint
        assert forgetting["build_change"] == 0.0
    assert forgetting["build_change"] == forgetting["loss_built"] - forgetting["loss_before"]
    assert forgetting["training_change"] == forgetting["loss_after"] - forgetting["loss_built"]
    assert forgetting["change"] == forgetting["loss_after"] - forgetting["loss_before"]
    assert forgetting["change"] == pytest.approx(forgetting["build_change"] + forgetting["training_change"])


def test_zero_shot_baseline_takes_no_step_and_forgets_nothing(untuned):
    result = untuned
    assert result["curves"]["train_loss"] == []
    assert result["trainable_params"] == 0
    assert result["validation"] is not None  # the untuned model is still scored
    # choice accuracy: yes / no, the distinct answers, ranked on test (validation selects on exact match alone)
    assert result["choice"] == {"candidates": 2, "source": "distinct answers"}
    assert "choice_accuracy" not in result["validation"]
    correct = result["test_choice_correct"]
    assert len(correct) == result["test_size"] == len(result["test_correct"]) and set(correct) <= {0, 1}
    assert result["test_choice_accuracy"] == result["test"]["choice_accuracy"] == sum(correct) / len(correct)
    assert result["best_validation_accuracy"] == result["validation"]["exact_match"]  # exact match still selects
    # `tunebench eval` on validation: the kind scores it as the loop did, and ranks the candidates there too
    again = evaluate_run(result["run_dir"], split="validation")
    assert again["exact_match"] == result["validation"]["exact_match"]
    assert again["answer_loss"] == result["validation"]["answer_loss"]
    assert 0 <= again["choice_accuracy"] <= 1 and again["choice"] == result["choice"]
    # the checkpoint, built and after on the same tokens, with the same weights: exactly no change
    assert result["forgetting"]["build_change"] == 0.0
    assert result["forgetting"]["change"] == 0.0
    assert result["forgetting"]["tokens"] > 0
    # one exact-match outcome per test example: their mean is the headline accuracy
    assert len(result["test_correct"]) == result["test_size"] > 0
    assert sum(result["test_correct"]) / result["test_size"] == pytest.approx(result["test_exact_match"], abs=1e-12)


def test_open_answers_record_no_choice_accuracy(tiny_llm, tmp_path):
    """More distinct answers than CHOICES_MAX: no closed set, so no choice fields at all (not zeros)."""
    path = tmp_path / "open.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Count {i}.", "answer": f"n{i}"}) + "\n" for i in range(120)))
    result = api.train("none", str(path), overrides=_overrides(tiny_llm), out=tmp_path / "none")
    assert not {"choice", "test_choice_accuracy", "test_choice_correct"} & set(result)
    assert "choice_accuracy" not in result["test"] and "choice_accuracy" not in result["validation"]


def test_choice_accuracy_off_records_none(tiny_llm, pairs_file, tmp_path):
    overrides = _overrides(tiny_llm, generation=SMALL["generation"] | {"choice_accuracy": False})
    result = api.train("none", pairs_file, overrides=overrides, out=tmp_path / "none")
    assert not {"choice", "test_choice_accuracy", "test_choice_correct"} & set(result)
    assert "choice_accuracy" not in result["test"]


def test_generation_stops_at_the_bound_and_normalise_drops_case_space_and_punctuation(tiny_llm, pairs_file):
    from transformers import AutoModelForCausalLM

    from tunebench.data.tasks import get_task, load_task

    cfg = build_config("full", pairs_file, overrides=_overrides(tiny_llm))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    encoded, _ = generation.tokenize(load_task(get_task(pairs_file), cfg["data"]).splits, tokenizer, cfg["data"])
    model = AutoModelForCausalLM.from_pretrained(tiny_llm)
    metrics, outputs = generate_eval.evaluate(model, encoded["test"], tokenizer, 4, 3, torch.device("cpu"))
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in encoded["test"]["answer"])
    assert metrics["max_new_tokens"] == longest + 3
    for text in outputs:  # a random model rarely says eos: each output is at most the bound
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= metrics["max_new_tokens"] + 1
    # exact match against hand-written outputs: tests/test_generate_guards.py (a model made to say them)
    assert generate_eval.normalise("  Positive.\n") == "positive"
    assert generate_eval.normalise("Card arrival?!") == "card arrival"


def test_real_smollm2_zero_shot_answers_in_words(tmp_path):
    """The real checkpoint, untuned, on a few Rotten Tomatoes reviews: it generates text that decodes."""
    result = api.train(
        "none",
        "rotten_tomatoes_gen",
        overrides={
            "model": "smollm2-135m",
            "data": {"max_eval_samples": 4, "max_train_samples": 8},
            "train": {"trackers": []},
            "generation": {"forgetting_texts": 2},
        },
        out=tmp_path / "run",
    )
    assert result["status"] == "ok"
    assert all(s["output"].strip() for s in result["sample_generations"])
    assert result["forgetting"]["change"] == 0.0


@pytest.mark.parametrize(
    "rows, error",
    [
        ([{"question": "q", "answer": "a"}] * 20, "lacks field(s) ['prompt']"),
        ([{"prompt": "q", "answer": " "}] * 20, "empty answer"),
        ([{"messages": [{"role": "user", "content": "q"}]}] * 20, "no assistant turn"),
        ([{"prompt": "word " * 100, "answer": "a"}] * 20, "longer than data.max_length=64"),
    ],
)
def test_bad_input_is_one_line_before_training(tiny_llm, tmp_path, rows, error):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=re.escape(error)):
        api.train("full", str(path), overrides=_overrides(tiny_llm), out=tmp_path / "run")


def test_too_long_examples_can_be_dropped_and_are_counted(tiny_llm, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "word " * (100 if i % 4 == 0 else 1), "answer": "a"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = _overrides(tiny_llm, data={"task_type": "generate", "max_length": 64, "too_long": "drop"})
    overrides["train"] = SMALL["train"] | {"epochs": 1}
    result = api.train("full", str(path), overrides=overrides, out=tmp_path / "run")
    assert sum(result["too_long_dropped"].values()) == 10


def test_a_model_without_a_causal_lm_head_is_refused(pairs_file, tmp_path):
    with pytest.raises(UserError, match="has no causal LM head"):
        api.train("full", pairs_file, overrides=_overrides("minilm"), out=tmp_path / "run")


def test_report_shows_generation_columns_the_untuned_row_and_samples(tiny_llm, pairs_file, tmp_path):
    from tunebench.report import write_report

    # head with a large step: its forgetting shows at the digits the report prints
    results = {
        method: api.train(
            method,
            pairs_file,
            overrides=_overrides(tiny_llm, train=SMALL["train"] | {"lr": 0.1}),
            out=tmp_path / "runs" / method,
        )
        for method in ("none", "head")
    }
    write_report([str(tmp_path / "runs")], str(tmp_path / "report"))
    text = (tmp_path / "report" / "report.md").read_text()
    generation_rows = text.split("### Generation")[1].split("*Exact match")[0]
    none_row = next(line for line in generation_rows.splitlines() if line.startswith("| **none**"))
    assert none_row.split("|")[3].strip() == "+0.0"  # the untuned model's gain over itself
    # choice accuracy beside exact match, and its gain over the untuned model (itself: +0.0)
    assert none_row.split("|")[4].strip() == f"{100 * results['none']['test_choice_accuracy']:.1f}"
    assert none_row.split("|")[5].strip() == "+0.0"
    head_row = next(line for line in generation_rows.splitlines() if line.startswith("| **head**"))
    assert "yes" in head_row
    # forgetting in total, then the build's and the training's share of it
    forgetting = results["head"]["forgetting"]
    shown = [cell.strip() for cell in head_row.split("|")[8:11]]
    assert abs(forgetting["training_change"]) >= 5e-4  # the three columns differ at the digits shown
    assert shown == [f"{forgetting[key]:+.3f}" for key in ("change", "build_change", "training_change")]
    assert "| none | Say " in text  # sample generations: prompt, reference, output


def test_qlora_quantizes_the_blocks_but_not_the_embeddings_or_the_lm_head(tiny_llm, pairs_file):
    import bitsandbytes as bnb

    from tunebench.methods import get_method

    cfg = build_config("qlora", pairs_file, overrides=_overrides(tiny_llm))
    model = get_method("qlora").build(tiny_llm, None, cfg, torch.device("cpu"))
    kinds = {name: type(module) for name, module in model.named_modules()}
    assert any(issubclass(k, bnb.nn.Linear4bit) for n, k in kinds.items() if n.endswith("q_proj.base_layer"))
    assert not any(issubclass(k, bnb.nn.Linear4bit) for n, k in kinds.items() if n.endswith("lm_head"))
    assert model.get_input_embeddings().weight.dtype == torch.float32


def test_the_untuned_baseline_is_refused_for_a_classification_task(tmp_path):
    from tunebench.methods import get_method

    cfg = build_config("none", "rotten_tomatoes")
    with pytest.raises(UserError, match="needs a generate task"):
        get_method("none").build(resolve_model("minilm"), 2, cfg, torch.device("cpu"))


def test_embedded_generate_tasks_answer_in_words():
    from tunebench.data.tasks import get_task, load_task

    sizes = {"rotten_tomatoes_gen": (6824, 853, 853), "banking77_gen": (9003, 1000, 3080)}
    for name, expected in sizes.items():
        cfg = build_config("full", name)
        splits = load_task(get_task(name), cfg["data"]).splits
        assert tuple(len(splits[s]) for s in ("train", "validation", "test")) == expected
        answers = set(splits["train"]["answer"])
        assert answers == {"negative", "positive"} if name == "rotten_tomatoes_gen" else len(answers) == 77
        assert splits["test"][0]["prompt"][0]["role"] == "user"


def test_cli_bad_generate_input_exits_2_with_one_line(tiny_llm, tmp_path, capsys):
    from tunebench.cli import main

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    argv = ["train", "--task", str(path), "--model", tiny_llm, "--set", "data.task_type=generate"]
    code = main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("tunebench: error: ") and "no assistant turn" in err[-1]


def test_the_checkpoint_loss_is_measured_once_per_rule_and_reused(tiny_llm, pairs_file, tmp_path, monkeypatch):
    from contextlib import nullcontext

    from tunebench.training import forgetting
    from tunebench.training.args import TrainArgs

    monkeypatch.setattr(forgetting, "CACHE_DIR", tmp_path)  # a cache of this test's own
    args = TrainArgs.from_config(build_config("none", pairs_file, overrides=_overrides(tiny_llm)))
    tokenizer, cpu = AutoTokenizer.from_pretrained(tiny_llm), torch.device("cpu")
    first, second, other_rule = (forgetting.ForgettingProbe(tokenizer, args.generation, cpu) for _ in range(3))
    first.measure_original(tiny_llm, "fp32", nullcontext())
    second.measure_original(tiny_llm, "fp32", nullcontext())
    other_rule.measure_original(tiny_llm, "bf16-true", nullcontext())
    assert (first.original_cached, second.original_cached, other_rule.original_cached) == (False, True, False)
    assert second.original == first.original and second.seconds == 0 < first.seconds
    assert other_rule.original != first.original  # bf16 weights: another number, measured, not read
