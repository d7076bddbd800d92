"""Guards for generate tasks that must fail when the code they guard breaks: the embedded tasks fit their own
data, padding carries no loss or answer-token metric where the pad id is a real token, generation stops at eos."""

from __future__ import annotations

import pytest
import torch
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
    small (one step of 4, one evaluation example per split, no forgetting probe) without touching data.max_length or
    data.too_long: the first 64 training examples, all tokenised, include a long one (101 tokens), which the
    task's own max_length (96) used to refuse."""
    from tunebench.cli import main

    argv = ["train", "--method", "lora", "--model", "smollm2-135m", "--task", "banking77_gen"]
    argv += ["--max-train-samples", "64", "--max-eval-samples", "1", "--max-steps", "1", "--batch-size", "4"]
    argv += ["--set", "generation.forgetting_texts=0", "--set", "train.trackers=[]", "--set", "train.save=none"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    import json

    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["too_long_dropped"] == {"train": 0, "validation": 0, "test": 0}


def _encode(tokenizer, pairs: list[tuple[str, str]], chat_template: bool = True) -> list[dict]:
    """(prompt, answer) pairs tokenised as a generate task's test split is."""
    from datasets import Dataset, DatasetDict

    rows = {"prompt": [[{"role": "user", "content": p}] for p, _ in pairs], "answer": [a for _, a in pairs]}
    data_cfg = {"max_length": 256, "chat_template": chat_template, "too_long": "error"}
    encoded, _ = generation.tokenize(DatasetDict(test=Dataset.from_dict(rows)), tokenizer, data_cfg)
    return encoded["test"]


def _tiny_llama(tokenizer, **config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    shape |= dict(num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256)
    return LlamaForCausalLM(LlamaConfig(**shape, **config)).eval()


def test_padding_carries_no_loss_and_no_answer_token_metric_where_the_pad_id_is_a_real_token(smollm2_tokenizer):
    """SmolLM2 pads with its eos, a token the answers end with: padding labelled with it would be trained and
    scored. A batch of a 2-token and a 5-token answer (answer + eos) is exactly the two examples alone."""
    from tunebench.training.generate_eval import answer_nll

    tokenizer = smollm2_tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    examples = _encode(tokenizer, [("Say yes.", "yes"), ("Say no.", "no thanks, really")])  # yes | no , thanks , really
    short, long = examples[0], examples[1]
    assert len(long["input_ids"]) - len(short["input_ids"]) == 3  # the short row gets 3 pads
    gather, model = generation.collate(tokenizer.pad_token_id), _tiny_llama(tokenizer)
    batch, alone = gather([short, long]), [gather([short]), gather([long])]
    assert batch["labels"][0, -3:].tolist() == [-100, -100, -100]
    assert batch["input_ids"][0, -3:].tolist() == [2, 2, 2]

    def loss(b: dict) -> float:
        with torch.no_grad():
            return float(model(b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss)

    # the training loss is the mean over the 2 + 5 answer tokens, whatever the padding
    assert loss(batch) == pytest.approx((2 * loss(alone[0]) + 5 * loss(alone[1])) / 7, rel=1e-5)
    with torch.no_grad():
        nll, correct, count = answer_nll(model, batch)
        parts = [answer_nll(model, b) for b in alone]
    assert count == 7 and [p[2] for p in parts] == [2, 5]
    assert correct == parts[0][1] + parts[1][1]
    assert nll == pytest.approx(parts[0][0] + parts[1][0], rel=1e-5)


def _chain_model(tokenizer, chain: dict[int, int]):
    """A Llama whose next token depends only on the current one, by chain: the blocks add nothing to the residual
    stream (zero output projections), each chained token embeds as its own unit vector, and lm_head maps that
    vector to the token that follows it. No eos in its config: only what the caller passes stops generation."""
    model = _tiny_llama(tokenizer, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for slot, (token, following) in enumerate(chain.items()):
            model.model.embed_tokens.weight[token, slot] = 1.0
            model.lm_head.weight[following, slot] = 10.0
    return model


def test_generation_stops_at_eos_and_later_steps_add_no_text(smollm2_tokenizer):
    """Two prompts in one batch: one answered `Sure!` then eos, the other `Hello world!` then eos, one step
    later. After eos the model would go on (eos -> ` X`), so only the stop at eos keeps ` X` out, and the row
    that finished first gets nothing more while the other still generates."""
    from tunebench.training import generate_eval

    tokenizer = smollm2_tokenizer
    split = _encode(tokenizer, [("Say sure.", "sure"), ("Greet the world\n", "Hello there")], chat_template=False)
    ends = [row["input_ids"][row["prompt_length"] - 1] for row in split]
    assert [tokenizer.decode([t]) for t in ends] == ["\n", "\n\n"]
    sure, hello, world, bang, x = 34355, 19556, 905, 17, 2273  # Sure, Hello, ` world`, !, ` X`
    eos = tokenizer.eos_token_id
    chain = {ends[0]: sure, ends[1]: hello, hello: world, sure: bang, world: bang, bang: eos, eos: x, x: x}
    model = _chain_model(tokenizer, chain)
    metrics, outputs = generate_eval.evaluate(model, split, tokenizer, 2, 8, torch.device("cpu"))
    assert list(outputs) == ["Sure!", "Hello world!"]
    assert metrics["max_new_tokens"] == 2 + 1 + 8  # the longest reference (Hello, ` there`), eos, the margin
    assert metrics["exact_match"] == 0.5  # `sure` matches `Sure!` (punctuation and case aside); `Hello there` does not
