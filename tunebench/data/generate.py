"""Generate-task data: prompt -> answer examples from a file's rows, tokenized with the loss on the answer only.

A `generate` task (data.task_type) trains a causal LM on prompt + answer with the prompt and the padding labelled
-100, so the loss is the answer's alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from tunebench.data.template import template_columns
from tunebench.errors import UserError

if TYPE_CHECKING:  # pandas and datasets load in a second: `plan` and `report` never need them
    import pandas as pd
    from datasets import DatasetDict


IGNORE = -100  # label of the tokens that carry no loss: prompt and padding
CHOICES_MAX = 100  # a task without label_names is closed-set when its splits hold at most this many distinct answers


@dataclass(frozen=True)
class Choices:
    """The closed set a generate task answers from: choice accuracy ranks these candidates by likelihood."""

    candidates: list[str]
    source: str  # "label_names" or "distinct answers"

    def summary(self) -> dict:
        return {"candidates": len(self.candidates), "source": self.source}


def closed_set(label_names: list | None, splits: DatasetDict) -> Choices | None:
    """The task YAML's label_names; else the distinct reference answers of all its splits (train, validation,
    test, before any cap), when there are at most CHOICES_MAX; else None (an open answer: no choice accuracy)."""
    if label_names:
        return Choices([str(name) for name in label_names], "label_names")
    answers = sorted({a for split in splits.values() for a in split["answer"]})
    return Choices(answers, "distinct answers") if len(answers) <= CHOICES_MAX else None


def is_generate(cfg: dict) -> bool:
    return cfg["data"]["task_type"] == "generate"


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
    absent = [c for c in template_columns(template) if c not in df.columns] if template else []
    if absent:
        raise UserError(
            f"data.prompt_template names column(s) {absent} that task {name!r} {split} split lacks; "
            f"it has {list(df.columns)}"
        )
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


def pad_rows(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def collate(pad_id: int):
    """Right-padded training batches; padding carries label -100 and attention 0."""

    def collate_batch(examples: list[dict]) -> dict:
        ids = [e["input_ids"] for e in examples]
        return {
            "input_ids": pad_rows(ids, pad_id, left=False),
            "attention_mask": pad_rows([[1] * len(r) for r in ids], 0, left=False),
            "labels": pad_rows([e["labels"] for e in examples], IGNORE, left=False),
            "index": torch.tensor([e["index"] for e in examples]),
        }

    return collate_batch
