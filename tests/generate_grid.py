"""Generations, answer metrics and choice outcomes of an untrained causal LM over awkward split sizes and batch
sizes, in however many processes torchrun starts: `torchrun --nproc_per_node N tests/generate_grid.py
MODEL_FOLDER OUT.json` (used by tests/test_shared_generation.py, which compares N=2 against N=1).

The model is prepared as the loop prepares it, then scored by the real generate_eval functions, whose batches
the processes share.
"""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator
from two_processes import write_rows

from tunebench.config import build_config
from tunebench.data import generate as generation
from tunebench.data.tasks import get_task, load_task
from tunebench.models.causal_lm import load_causal_lm
from tunebench.models.hub import load_config, load_tokenizer
from tunebench.training import generate_eval

SPLIT_SIZES = (1, 7, 21)  # 1: fewer batches than processes; 7 and 21: an odd last batch
BATCH_SIZES = (4, 16)


def main(model_path: str, out: str) -> None:
    accelerator = Accelerator()
    data = build_config("none", "rotten_tomatoes_gen", overrides={"model": model_path})["data"]
    task = load_task(get_task("rotten_tomatoes_gen"), data)
    tokenizer = load_tokenizer(model_path, load_config(model_path).model_type)
    encoded, _ = generation.tokenize({"test": task.splits["test"].select(range(max(SPLIT_SIZES)))}, tokenizer, data)
    model = load_causal_lm(model_path).eval()
    torch.manual_seed(0)  # larger random weights: a tiny random model's near-uniform logits write one text for all
    for weight in model.parameters():
        weight.data.normal_(0, 0.5)
    model = accelerator.unwrap_model(accelerator.prepare(model))
    rows = []
    for size in SPLIT_SIZES:
        split = encoded["test"].select(range(size))
        for batch_size in BATCH_SIZES:
            metrics, outputs = generate_eval.evaluate(model, split, tokenizer, batch_size, 2, accelerator.device)
            choices = generate_eval.choice_correct(
                model, split, tokenizer, task.choices.candidates, batch_size, accelerator.device
            )
            rows.append({"size": size, "batch_size": batch_size, "metrics": metrics, "outputs": outputs.tolist()})
            rows[-1]["choice_correct"] = choices
    write_rows(accelerator, out, rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
