"""Method variants (configs/variants.yaml and a user's own file): a name works wherever a method's does, a result
records what ran, the report shows one row per variant with its family, and bad variant input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import QUIET, one_line_error, run_cli

from tunebench import api
from tunebench.config import build_config
from tunebench.files import read_yaml
from tunebench.methods import FAMILIES, method_names, variants
from tunebench.report import write_report

PAIRS = [("Say yes.", "yes"), ("Say no.", "no")] * 8
GENERATE = {
    "data": {"task_type": "generate", "max_length": 64},
    "train": {"batch_size": 8, "max_steps": 2, "trackers": []},
    "generation": {"forgetting_texts": 0, "batch_size": 8},
}


@pytest.fixture()
def pairs(tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PAIRS))
    return str(path)


def test_shipped_variants_cover_the_peft_methods_and_say_where_their_defaults_come_from() -> None:
    shipped = variants()
    assert len(shipped) >= 20
    assert all(v.source for v in shipped.values())
    types = {(v.options.get("peft_config") or {}).get("peft_type") for v in shipped.values()}
    assert {"ADALORA", "IA3", "LOHA", "LOKR", "VERA", "FOURIERFT", "OFT", "BOFT", "HRA", "LN_TUNING", "MISS"} <= types
    assert {"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"} <= types
    assert set(method_names()) == {"full", "lora", "qlora", "head", "none", *shipped}


def test_a_variant_layers_its_options_over_its_base_and_later_layers_win() -> None:
    cfg = build_config("lora-r64", "rotten_tomatoes")
    assert cfg["method"] == "lora-r64"
    assert (cfg["method_options"]["r"], cfg["method_options"]["alpha"]) == (64, 128)
    assert cfg["train"]["lr"] == build_config("lora", "rotten_tomatoes")["train"]["lr"]  # the base's default
    cfg = build_config("lora-r64", "rotten_tomatoes", overrides={"method_options": {"r": 4}})
    assert (cfg["method_options"]["r"], cfg["method_options"]["alpha"]) == (4, 128)


def test_a_variant_trains_records_what_ran_and_reloads(tiny_llm, pairs, tmp_path: Path) -> None:
    result = api.train("ia3", pairs, overrides=GENERATE | {"model": tiny_llm}, out=tmp_path / "ia3")
    assert result["status"] == "ok"
    assert result["config"]["method"] == "ia3"
    method = result["method"]
    assert (method["name"], method["base"], method["family"]) == ("ia3", "lora", "other adapters")
    assert method["peft_config"]["peft_type"] == "IA3" and method["peft_config"]["target_modules"]  # peft's defaults
    assert result["trainable_params"] > 0 and result["checkpoint_bytes"] > 0
    assert api.evaluate(tmp_path / "ia3")["agreement_with_training"] == 1.0


def test_adalora_reallocates_ranks_over_the_runs_steps(tiny_llm, pairs, tmp_path: Path) -> None:
    options = {"peft_config": {"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1}}
    overrides = GENERATE | {"model": tiny_llm, "method_options": options}
    overrides["train"] = GENERATE["train"] | {"epochs": 2, "max_steps": 4, "save": "best"}  # 2 steps an epoch
    result = api.train("adalora", pairs, overrides=overrides, out=tmp_path / "adalora")
    assert result["status"] == "ok", result["error"]
    assert result["method"]["peft_config"]["total_step"] == 4  # the run's, given by the loop
    # update_and_allocate ran: its final step masked each layer's 6 ranks down to 2 on average, in what is saved
    pattern = json.loads((tmp_path / "adalora" / "best" / "adapter_config.json").read_text())["rank_pattern"]
    assert pattern and sum(sum(kept) for kept in pattern.values()) == 2 * len(pattern)


def test_the_report_has_one_row_per_variant_with_its_family(tiny_llm, pairs, tmp_path: Path) -> None:
    for name in ("lora", "dora", "prompt-tuning"):
        overrides = GENERATE | {"model": tiny_llm, "generation": GENERATE["generation"] | {"choice_accuracy": False}}
        api.train(name, pairs, overrides=overrides, out=tmp_path / "runs" / name)
    write_report([str(tmp_path / "runs")], str(tmp_path / "report"))
    markdown = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| **")]
    summary = {line.split("|")[1].strip(" *"): line.split("|")[2].strip() for line in rows[:3]}
    assert summary == {"lora": "LoRA family", "dora": "LoRA family", "prompt-tuning": "prompt learning"}
    assert all(f in FAMILIES for f in summary.values())


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_a_users_variants_file_adds_variants(tmp_path: Path) -> None:
    path = write(tmp_path, "loha-r4:\n  base: lora\n  options: {peft_config: {peft_type: LOHA, r: 4}}\n  source: me\n")
    cfg = build_config("loha-r4", "rotten_tomatoes", overrides={"variants": path})
    assert cfg["method_options"]["peft_config"] == {"peft_type": "LOHA", "r": 4}
    assert read_yaml(path)["loha-r4"]["source"] == "me" and cfg["variants"] == str(Path(path).resolve())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("x1:\n  base: lora\n  opts: {r: 4}\n", "unknown key 'opts' in variant 'x1'"),
        ("x2:\n  base: lorra\n", "unknown base method 'lorra'"),
        ("x3:\n  base: lora\nx3:\n  base: full\n", "two variants named 'x3'"),
        ("x4:\n  base: lora\ndora:\n  base: lora\n", "two variants named 'dora'"),
        ("x5:\n  base: lora\n  options: {peft_config: {peft_type: IA3, rr: 3}}\n", "has no option 'rr'"),
        ("x6:\n  base: lora\n  options: {peft_config: {peft_type: POLY}}\n", "POLY cannot train in tunebench"),
    ],
)
def test_bad_variants_are_one_line_before_any_work(capsys, tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path, text)
    name = text.split(":")[0]  # each case its own name: a process keeps the variants it has read
    code, _, err = run_cli(capsys, "train", "--method", name, "--set", f"variants={path}", *QUIET)
    assert code == 2
    assert error in one_line_error(err)


def test_an_unknown_variant_lists_the_valid_ones(capsys) -> None:
    code, _, err = run_cli(capsys, "train", "--method", "doraa", *QUIET)
    assert code == 2
    line = one_line_error(err)
    assert "unknown method 'doraa'" in line and "dora" in line and "prompt-tuning" in line
    code, _, err = run_cli(capsys, "plan", "--methods", "full,doraa", "--gpu", "l4", "--model", "qwen2.5-0.5b")
    assert code == 2 and "unknown method 'doraa'" in one_line_error(err)


def test_plan_takes_variants_by_name(capsys) -> None:
    code, out, err = run_cli(capsys, "plan", "--model", "qwen2.5-0.5b", "--methods", "full,lora,dora", "--gpu", "l4")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["full"], ["lora"], ["dora"])][:3] == [
        "full",
        "lora",
        "dora",
    ]


@pytest.mark.parametrize("name", ["prompt-tuning", "p-tuning", "prefix-tuning"])
def test_prompt_learning_metrics_line_up_with_its_virtual_tokens(tiny_llm, pairs, name) -> None:
    """Teacher forcing reads the input's own positions: its answer loss is the loss peft computes itself (which
    masks the virtual tokens), and whole-sequence choice scores give each candidate that same likelihood."""
    import torch
    from transformers import AutoTokenizer

    from tunebench.data import generate as generation
    from tunebench.data.tasks import get_task, load_task
    from tunebench.methods import get_method
    from tunebench.training.generate_eval import answer_nll, candidate_tokens, whole_choice_scores

    cfg = build_config(name, pairs, overrides=GENERATE | {"model": tiny_llm})
    torch.manual_seed(0)
    model = get_method(name).build(tiny_llm, None, cfg, torch.device("cpu")).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    encoded, _ = generation.tokenize(load_task(get_task(pairs), cfg["data"]).splits, tokenizer, cfg["data"])
    examples = [encoded["train"][i] for i in range(4)]
    batch = {k: v for k, v in generation.collate(tokenizer.pad_token_id)(examples).items() if k != "index"}
    with torch.no_grad():
        nll, _, count = answer_nll(model, batch)
        assert nll / count == pytest.approx(model(**batch).loss.item(), rel=1e-5)
        prompts = [e["input_ids"][: e["prompt_length"]] for e in examples]
        answers = candidate_tokens(["yes", "no"], tokenizer)
        scores = whole_choice_scores(model, prompts, answers, tokenizer.pad_token_id)
        for row, example in enumerate(examples):  # each example's own answer: its summed log-likelihood
            own = answers.index(example["input_ids"][example["prompt_length"] :])
            alone = {k: v[row : row + 1, : len(example["input_ids"])] for k, v in batch.items()}
            nll_alone, _, _ = answer_nll(model, alone)
            assert scores[row, own].item() == pytest.approx(-nll_alone, rel=1e-4)


def test_whole_sequence_choice_scores_agree_with_the_prefix_tree(tiny_llm) -> None:
    """The two ways of scoring candidates (the prefix tree over a KV cache; one forward per candidate, which prompt
    learning needs) give the same log-likelihoods on a model both can run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.training.generate_eval import PrefixTree, candidate_tokens, choice_scores, whole_choice_scores

    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    prompts = [tokenizer("Say yes or no.")["input_ids"], tokenizer("Answer in one word, please:")["input_ids"]]
    answers = candidate_tokens(["yes", "no", "not sure"], tokenizer)
    tree = choice_scores(model, prompts, PrefixTree.build(answers), tokenizer.pad_token_id, torch.device("cpu"))
    whole = whole_choice_scores(model, prompts, answers, tokenizer.pad_token_id)
    assert torch.allclose(tree, whole, atol=1e-4)
