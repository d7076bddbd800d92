"""Scoring a generate task: what the model writes (greedy, batched with left padding, KV cache) against the
reference by exact match after normalisation, and the answer under teacher forcing (token accuracy, perplexity).

With several processes each scores its share of the batches (shared_batches) and every process gets them all
back in batch order, so the metrics are those of one process, to the last digit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch import nn

from tunebench.data.generate import IGNORE, collate, pad_rows

if TYPE_CHECKING:  # datasets loads in a second: `plan` and `report` never need it
    from datasets import Dataset

TRAILING_PUNCTUATION = ".!?,;:"
SAMPLES = 5  # sample generations kept in the result per split, for the report
CHOICE_TOKENS = 2048  # candidate-tree tokens per choice-scoring batch (examples x tree nodes)
Score = TypeVar("Score")


def normalise(text: str) -> str:
    """Exact match ignores surrounding space, case and trailing punctuation."""
    return text.strip().lower().rstrip(TRAILING_PUNCTUATION).strip()


def answer_nll(model: nn.Module, batch: dict) -> tuple[float, int, int]:
    """Teacher forcing: (summed negative log-likelihood, correct argmax tokens, count) over labelled tokens."""
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    picked, targets = _scored_logits(model, batch, mask).float(), labels[mask]
    nll = nn.functional.cross_entropy(picked, targets, reduction="sum")
    return float(nll), int((picked.argmax(-1) == targets).sum()), int(mask.sum())


def _scored_logits(model: nn.Module, batch: dict, mask: torch.Tensor) -> torch.Tensor:
    """The logits of the positions whose next token is scored (mask: over labels shifted by one), one row each.

    Position t predicts label t + 1, so the LM head runs only there (logits_to_keep as a mask): the
    vocabulary-wide logits of the prompt and padding positions were never read. A prompt-learning adapter
    lengthens the sequence with virtual tokens that such a mask cannot name: it computes every position's
    logits and keeps the input's own."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if prompt_learning(model):
        return own_logits(model(**inputs), batch)[:, :-1][mask]
    keep = nn.functional.pad(mask, (0, 1))  # the last position predicts nothing
    return model(**inputs, logits_to_keep=keep).logits


def own_logits(output, batch: dict) -> torch.Tensor:
    """The logits of the input's own positions: prompt tuning and P-tuning (peft) put their virtual tokens in front."""
    return output.logits[:, -batch["input_ids"].shape[1] :]


def prompt_learning(model: nn.Module) -> bool:
    """A peft prompt-learning adapter (prompt, prefix, P-tuning): virtual tokens or a prefix before the input."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def _batches(split: Dataset, batch_size: int) -> list[list[int]]:
    lengths = split["length"]
    order = sorted(range(len(split)), key=lambda i: -lengths[i])  # little padding
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shared_batches(batches: list[list[int]], score: Callable[[list[int]], Score]) -> list[Score]:
    """score(batch) for every batch, in batch order, on every process; each process scores every world-th batch.
    A process short of a full turn scores the last batch again and drops it: every process then runs as many
    forward passes, which FSDP needs (it gathers each layer's weights from all processes in lockstep;
    transformers' generate keeps the decoding steps in step itself, synced_gpus, on an FSDP-managed model)."""
    state = PartialState()
    rank, world = state.process_index, state.num_processes
    if world == 1:
        return [score(batch) for batch in batches]
    mine = {}
    for first in range(0, len(batches), world):
        index = first + rank
        scored = score(batches[min(index, len(batches) - 1)])
        if index < len(batches):
            mine[index] = scored
    every = {index: scored for share in gather_object([mine]) for index, scored in share.items()}
    return [every[index] for index in range(len(batches))]


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Dataset, tokenizer, batch_size: int, margin: int, device
) -> tuple[dict, np.ndarray]:
    """Generation metrics over a split, and the generated answers in dataset order.

    accuracy is the exact match (the headline every report and plan reads); f1_macro is over the reference
    answers as classes. Several processes share the batches (shared_batches)."""
    from sklearn.metrics import f1_score  # lazy: sklearn takes a second to import, and only scoring needs it

    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # the longest reference answer (with its eos) plus a margin: an answer cannot run on forever
    bound = max(n - p for n, p in zip(split["length"], split["prompt_length"], strict=True)) + margin
    gather = collate(pad)

    def score(rows: list[int]) -> tuple[float, int, int, list[str]]:
        examples = [split[i] for i in rows]
        batch = {k: v.to(device) for k, v in gather(examples).items() if k != "index"}
        n, c, t = answer_nll(model, batch)
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
        answers = generated[:, ids.shape[1] :].tolist()
        return n, c, t, [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in answers]

    nll = correct = count = 0
    outputs = [""] * len(split)
    batches = _batches(split, batch_size)
    for rows, (n, c, t, texts) in zip(batches, shared_batches(batches, score), strict=True):
        nll, correct, count = nll + n, correct + c, count + t
        for i, text in zip(rows, texts, strict=True):
            outputs[i] = text
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


def candidate_tokens(candidates: list[str], tokenizer) -> list[list[int]]:
    """Each candidate answer as training tokenizes an answer: its tokens (no special tokens) and the eos."""
    return [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in candidates]


@dataclass
class PrefixTree:
    """The candidates' shared prefixes, each fed to the model once. Node i holds one token, its parent node
    (-1: the prompt) and its depth (1: the answer's first token). A candidate's log-likelihood sums, over its
    tokens, the log-probability the model gives each token after the one before it (after the prompt's last
    token for the first): gather[c] indexes those positions (0 = prompt, i + 1 = node i), targets[c] the tokens."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    gather: torch.Tensor  # [candidates, longest]
    targets: torch.Tensor  # [candidates, longest]
    valid: torch.Tensor  # [candidates, longest] bool: the candidate's own tokens, not padding
    ancestry: torch.Tensor  # [nodes, nodes] bool: node i sees node j when j is i or one of its ancestors

    @classmethod
    def build(cls, sequences: list[list[int]]) -> PrefixTree:
        node_of: dict[tuple, int] = {}
        tokens, parents, depths, gather = [], [], [], []
        for sequence in sequences:
            positions, parent = [0], -1
            for depth in range(1, len(sequence)):  # the last token (eos) is only predicted, never fed
                key = tuple(sequence[:depth])
                if key not in node_of:
                    node_of[key] = len(tokens)
                    tokens.append(sequence[depth - 1])
                    parents.append(parent)
                    depths.append(depth)
                parent = node_of[key]
                positions.append(parent + 1)
            gather.append(positions)
        valid = pad_rows([[1] * len(s) for s in sequences], 0, left=False).bool()
        targets = pad_rows(sequences, 0, left=False)
        return cls(tokens, parents, depths, pad_rows(gather, 0, left=False), targets, valid, _ancestry(parents))

    def to(self, device) -> PrefixTree:
        """The tree with its tensors on device (once per evaluation, not per batch)."""
        tensors = (self.gather, self.targets, self.valid, self.ancestry)
        return PrefixTree(self.tokens, self.parents, self.depths, *(t.to(device) for t in tensors))


def _ancestry(parents: list[int]) -> torch.Tensor:
    """[nodes, nodes] bool: node i sees node j when j is i or one of its ancestors."""
    sees = torch.eye(len(parents), dtype=torch.bool)
    for i, parent in enumerate(parents):
        if parent >= 0:
            sees[i] |= sees[parent]  # a parent comes before its children
    return sees


@torch.no_grad()
def choice_scores(model: nn.Module, prompts: list[list[int]], tree: PrefixTree, pad_id: int, device) -> torch.Tensor:
    """[prompts, candidates]: each candidate's summed log-likelihood (its answer tokens and eos) after each prompt.

    The prompts run once (left-padded, positions counted from each one's first real token); then every node of
    the candidates' prefix tree runs side by side against the prompts' KV cache, under a 4D mask where a node
    sees its prompt and its own ancestors, at the position its depth gives."""
    prompt_ids = pad_rows(prompts, pad_id, left=True).to(device)
    prompt_mask = pad_rows([[1] * len(p) for p in prompts], 0, left=True).to(device)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    # only the last position's logits are needed: the vocabulary-wide projection of the others is skipped
    out = model(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    rows, nodes = len(prompts), len(tree.tokens)
    sees = torch.cat(
        [prompt_mask.bool()[:, None, :].expand(rows, nodes, -1), tree.ancestry.to(device).expand(rows, -1, -1)],
        dim=-1,
    )
    node_logits = model(
        input_ids=torch.tensor([tree.tokens] * rows, device=device),
        attention_mask=_attention_mask(model, sees[:, None]),
        position_ids=prompt_mask.sum(-1, keepdim=True) + torch.tensor(tree.depths, device=device) - 1,
        past_key_values=out.past_key_values,
    ).logits
    # left padding: every prompt ends in the last column, whose logits predict the answer's first token
    logits = torch.cat([out.logits[:, -1:], node_logits], dim=1).float()  # [rows, 1 + nodes, vocab]
    gather, targets, valid = (t.to(device) for t in (tree.gather, tree.targets, tree.valid))
    picked = logits[:, gather, targets] - logits.logsumexp(-1)[:, gather]  # [rows, candidates, longest]
    return (picked * valid).sum(-1).cpu()


@torch.no_grad()
def whole_choice_scores(model: nn.Module, prompts: list[list[int]], candidates: list[list[int]], pad_id: int):
    """choice_scores by one whole forward of every prompt + candidate (candidates: their tokens), candidate by
    candidate: slower, but any model's forward will do (a prompt-learning adapter's)."""
    device = next(model.parameters()).device
    scores = torch.zeros(len(prompts), len(candidates))
    for c, answer in enumerate(candidates):
        rows = [p + answer for p in prompts]
        batch = {"input_ids": pad_rows(rows, pad_id, left=False).to(device)}
        mask = pad_rows([[1] * len(r) for r in rows], 0, left=False).to(device)
        logits = own_logits(model(input_ids=batch["input_ids"], attention_mask=mask), batch).float().log_softmax(-1)
        for i, prompt in enumerate(prompts):
            at = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(answer), device=device)  # predicts the answer
            scores[i, c] = logits[i, at, torch.tensor(answer, device=device)].sum().cpu()
    return scores


def _attention_mask(model: nn.Module, sees: torch.Tensor) -> torch.Tensor:
    """A custom 4D mask goes to attention as it is: boolean for SDPA and the like, additive for eager."""
    if model.config._attn_implementation != "eager":
        return sees
    dtype = model.get_input_embeddings().weight.dtype
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)


def choice_correct(model: nn.Module, split: Dataset, tokenizer, candidates: list[str], batch_size: int, device):
    """1 where the likeliest candidate is the reference answer (after normalisation), else 0; dataset order."""
    model.eval()
    candidate_ids = candidate_tokens(candidates, tokenizer)
    tree = PrefixTree.build(candidate_ids).to(device)
    # a batch runs batch x nodes tokens at once, each with vocabulary-wide logits: bound it
    rows = max(1, min(batch_size, CHOICE_TOKENS // max(1, len(tree.tokens))))

    def best(batch: list[int]) -> list[int]:
        prompts = [split[i]["input_ids"][: split[i]["prompt_length"]] for i in batch]
        if prompt_learning(model):  # its virtual tokens or prefix cannot share the prefix tree's KV cache
            scores = whole_choice_scores(model, prompts, candidate_ids, tokenizer.pad_token_id)
        else:
            scores = choice_scores(model, prompts, tree, tokenizer.pad_token_id, device)
        return scores.argmax(-1).tolist()

    chosen = [""] * len(split)
    batches = _batches(split, rows)
    for batch, picks in zip(batches, shared_batches(batches, best), strict=True):
        for i, c in zip(batch, picks, strict=True):
            chosen[i] = candidates[c]
    return [int(normalise(c) == normalise(a)) for c, a in zip(chosen, split["answer"], strict=True)]
