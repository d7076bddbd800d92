"""Choice accuracy: the cached prefix-tree scores against an independent full forward pass of each prompt and
candidate, on the real SmolLM2; a hand-checked choice; the closed-set rule."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunebench.data.generate import CHOICES_MAX, closed_set, render_prompt
from tunebench.models.hub import resolve_model
from tunebench.training import generate_eval

# shared prefixes (top_up_*, card_*) exercise the tree; different prompt lengths exercise the left padding
CANDIDATES = ["positive", "negative", "top_up_failed", "top_up_reverted", "card_arrival", "card_linking", "yes"]
QUESTION = "Is this movie review positive or negative? Answer with one word.\n\nReview: "
REVIEWS = {
    "A wonderful, moving masterpiece; I loved every minute of it.": "positive",
    "Dull, clumsy and far too long. A waste of time.": "negative",
}


@pytest.fixture(scope="module")
def smollm2():
    path = resolve_model("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _prompt_ids(tokenizer, text: str) -> list[int]:
    rendered = render_prompt([{"role": "user", "content": text}], tokenizer, chat_template=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _full_forward_score(model, prompt: list[int], answer: str, tokenizer) -> float:
    """Independently: prompt + answer + eos in one plain forward pass, the answer tokens' log-probabilities summed."""
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + answer_ids])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(float(log_probs[len(prompt) - 1 + k, token]) for k, token in enumerate(answer_ids))


def test_cached_tree_scores_equal_a_full_forward_pass_of_each_candidate(smollm2):
    model, tokenizer = smollm2
    prompts = [_prompt_ids(tokenizer, QUESTION + review) for review in REVIEWS] + [_prompt_ids(tokenizer, "Hi")]
    assert len({len(p) for p in prompts}) == 3
    tree = generate_eval.PrefixTree.build(generate_eval.candidate_tokens(CANDIDATES, tokenizer))
    assert len(tree.tokens) < sum(int(v.sum()) - 1 for v in tree.valid)  # the shared prefixes run once
    fast = generate_eval.choice_scores(model, prompts, tree, tokenizer.pad_token_id, torch.device("cpu"))
    slow = torch.tensor([[_full_forward_score(model, p, c, tokenizer) for c in CANDIDATES] for p in prompts])
    assert fast.shape == (3, len(CANDIDATES))
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-5)  # float32 sums of ~40 nats


def test_the_likeliest_answer_to_an_obvious_review_is_its_sentiment(smollm2):
    model, tokenizer = smollm2
    rows = [
        {"input_ids": _prompt_ids(tokenizer, QUESTION + review), "answer": answer} for review, answer in REVIEWS.items()
    ]
    split = Dataset.from_list([r | {"prompt_length": len(r["input_ids"]), "length": len(r["input_ids"])} for r in rows])
    assert generate_eval.choice_correct(model, split, tokenizer, ["negative", "positive"], 2, "cpu") == [1, 1]
    # the same reviews against swapped references: both wrong
    swapped = split.map(lambda r: {"answer": {"positive": "negative", "negative": "positive"}[r["answer"]]})
    assert generate_eval.choice_correct(model, swapped, tokenizer, ["negative", "positive"], 2, "cpu") == [0, 0]


def _splits(answers: list[str]) -> DatasetDict:
    return DatasetDict(
        {"train": Dataset.from_dict({"answer": answers[1:]}), "test": Dataset.from_dict({"answer": answers[:1]})}
    )


def test_closed_set_is_label_names_else_few_distinct_answers():
    labelled = closed_set(["negative", "positive"], _splits(["positive", "x", "y"]))
    assert (labelled.candidates, labelled.summary()) == (
        ["negative", "positive"],
        {"candidates": 2, "source": "label_names"},
    )
    # the test split's own answers count: "c" appears only there
    distinct = closed_set(None, _splits(["c", "b", "a", "b"]))
    assert distinct.candidates == ["a", "b", "c"] and distinct.source == "distinct answers"
    assert closed_set(None, _splits([str(i) for i in range(CHOICES_MAX)])).summary()["candidates"] == 100
    assert closed_set(None, _splits([str(i) for i in range(CHOICES_MAX + 1)])) is None  # open answers
