"""Tokenization and batching: dynamic padding, length-grouped batches."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import BatchSampler, DataLoader, Sampler
from transformers import DataCollatorWithPadding

PIN_MEMORY = torch.cuda.is_available()


def tokenize(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """input_ids/attention_mask per example, unpadded; `length` for grouping, `index` for re-ordering."""

    def encode(batch: dict) -> dict:
        pair = batch.get("text_pair")
        out = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    encoded = DatasetDict()
    for name, split in splits.items():
        split = split.add_column("index", list(range(len(split))))
        drop = [c for c in ("text", "text_pair") if c in split.column_names]
        encoded[name] = split.map(encode, batched=True, remove_columns=drop, desc=f"tokenize {name}")
    return encoded


class EpochPermutation(Sampler[int]):
    """A random order of range(n), a new one each epoch, drawn from the (seed, epoch) pair.

    numpy's SeedSequence mixes the pair, so no two pairs share an order (a plain seed + epoch would:
    seed 1 epoch 0 is seed 0 epoch 1). Accelerate calls set_epoch on a batch sampler's `sampler`,
    also through the shard wrapper it puts around a batch sampler on several processes. (Not named
    `generator`: Accelerate would treat that as a torch.Generator to synchronise.)
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def __iter__(self):
        return iter(self.rng().permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled mega-batches, each sorted by length and cut into batches: little padding, random order.

    The batch with the longest examples goes second: step one creates the optimizer state, so step
    two meets the largest activations with every persistent tensor alive. An out-of-memory shows up
    at once and the memory tracker sees the true peak early. Each epoch reshuffles (see EpochPermutation).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega: int = 50):
        self.lengths, self.batch_size, self.mega = lengths, batch_size, mega
        self.sampler = EpochPermutation(len(lengths), seed)

    def __iter__(self):
        rng = self.sampler.rng()
        order = rng.permutation(len(self.lengths)).tolist()
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            group = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
        largest = batches.pop(longest)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter([*batches[:1], largest, *batches[1:]])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def shuffled_batches(n: int, batch_size: int, seed: int) -> BatchSampler:
    return BatchSampler(EpochPermutation(n, seed), batch_size, drop_last=False)


def _collator(tokenizer):
    pad = DataCollatorWithPadding(tokenizer)  # also renames label -> labels

    def collate(examples: list[dict]) -> dict:
        return pad([{k: v for k, v in e.items() if k != "length"} for e in examples])

    return collate


def train_loader(
    split: Dataset, tokenizer, batch_size: int, seed: int, group_by_length: bool, collate_fn=None
) -> DataLoader:
    """Shuffled (or length-grouped) training batches, reshuffled each epoch; collate_fn defaults to
    dynamic padding for classification."""
    if group_by_length:
        sampler = LengthGroupedBatches(split["length"], batch_size, seed)
    else:
        sampler = shuffled_batches(len(split), batch_size, seed)
    # pinned host memory lets the copy to a GPU run without waiting for it (Accelerate's non_blocking)
    collate_fn = collate_fn or _collator(tokenizer)
    return DataLoader(split, batch_sampler=sampler, collate_fn=collate_fn, pin_memory=PIN_MEMORY)


def eval_loader(split: Dataset, tokenizer, batch_size: int) -> DataLoader:
    """Sorted by length (fast, no shuffle); examples carry `index` to restore dataset order."""
    lengths = split["length"]
    order = sorted(range(len(split)), key=lambda i: -lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(split, batch_sampler=batches, collate_fn=_collator(tokenizer))


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int | None) -> DataLoader:
    """Batches of cached features for the head method; seed None means fixed order (evaluation)."""
    data = [{"features": f, "labels": y, "index": i} for i, (f, y) in enumerate(zip(features, labels, strict=True))]
    sampler = (
        shuffled_batches(len(data), batch_size, seed)
        if seed is not None
        else [list(range(i, min(i + batch_size, len(data)))) for i in range(0, len(data), batch_size)]
    )
    return DataLoader(data, batch_sampler=sampler, collate_fn=torch.utils.data.default_collate, pin_memory=PIN_MEMORY)
