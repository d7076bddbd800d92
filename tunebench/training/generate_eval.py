"""Scoring a generate task: what the model writes (greedy, batched with left padding, KV cache) against the
reference by exact match after normalisation, and the answer under teacher forcing (token accuracy, perplexity)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tunebench.data.generate import IGNORE, collate, pad_rows

if TYPE_CHECKING:  # datasets loads in a second: `plan` and `report` never need it
    from datasets import Dataset

TRAILING_PUNCTUATION = ".!?,;:"
SAMPLES = 5  # sample generations kept in the result per split, for the report


def normalise(text: str) -> str:
    """Exact match ignores surrounding space, case and trailing punctuation."""
    return text.strip().lower().rstrip(TRAILING_PUNCTUATION).strip()


def answer_nll(model: nn.Module, batch: dict) -> tuple[float, int, int]:
    """Teacher forcing: (summed negative log-likelihood, correct argmax tokens, count) over labelled tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    picked, targets = logits[mask].float(), labels[mask]
    nll = nn.functional.cross_entropy(picked, targets, reduction="sum")
    return float(nll), int((picked.argmax(-1) == targets).sum()), int(mask.sum())


def _batches(split: Dataset, batch_size: int) -> list[list[int]]:
    lengths = split["length"]
    order = sorted(range(len(split)), key=lambda i: -lengths[i])  # little padding
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Dataset, tokenizer, batch_size: int, margin: int, device
) -> tuple[dict, np.ndarray]:
    """Generation metrics over a split, and the generated answers in dataset order.

    accuracy is the exact match (the headline every report and plan reads); f1_macro is over the reference
    answers as classes. Every process evaluates the whole split (generation is not sharded)."""
    from sklearn.metrics import f1_score  # lazy: sklearn takes a second to import, and only scoring needs it

    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # the longest reference answer (with its eos) plus a margin: an answer cannot run on forever
    bound = max(n - p for n, p in zip(split["length"], split["prompt_length"], strict=True)) + margin
    nll = correct = count = 0
    outputs = [""] * len(split)
    gather = collate(pad)
    for rows in _batches(split, batch_size):
        examples = [split[i] for i in rows]
        batch = {k: v.to(device) for k, v in gather(examples).items() if k != "index"}
        n, c, t = answer_nll(model, batch)
        nll, correct, count = nll + n, correct + c, count + t
        prompts = [e["input_ids"][: e["prompt_length"]] for e in examples]
        ids = pad_rows(prompts, pad, left=True).to(device)
        mask = pad_rows([[1] * len(p) for p in prompts], 0, left=True).to(device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=bound,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for i, tokens in zip(rows, generated[:, ids.shape[1] :].tolist(), strict=True):
            outputs[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    references = [normalise(a) for a in split["answer"]]
    predicted = [normalise(o) for o in outputs]
    exact = float(np.mean(exact_matches(split, outputs)))
    metrics = {
        "accuracy": exact,
        "exact_match": exact,
        "f1_macro": float(
            f1_score(references, predicted, labels=sorted(set(references)), average="macro", zero_division=0)
        ),
        "answer_token_accuracy": correct / count,
        "answer_perplexity": math.exp(nll / count),
        "answer_loss": nll / count,
        "max_new_tokens": bound,
    }
    return metrics, np.array(outputs, dtype=object)


def exact_matches(split: Dataset, outputs) -> list[int]:
    """1 where the generated output matches the reference answer after normalisation, else 0; dataset order."""
    return [int(normalise(o) == normalise(a)) for o, a in zip(outputs, split["answer"], strict=True)]


def samples(split: Dataset, outputs: np.ndarray, count: int = SAMPLES) -> list[dict]:
    """The first examples' prompt, reference and generated output, for the report."""
    return [
        {"prompt": split[i]["prompt_text"], "reference": split[i]["answer"], "output": str(outputs[i])}
        for i in range(min(count, len(split)))
    ]


def result_fields(test_metrics: dict) -> dict:
    """Top-level result fields of a generate run (test_accuracy, set by the loop, is the exact match too)."""
    return {
        "test_exact_match": test_metrics["exact_match"],
        "test_answer_token_accuracy": test_metrics["answer_token_accuracy"],
        "test_answer_perplexity": test_metrics["answer_perplexity"],
    }
