"""Predictions of every method over awkward split sizes and eval batch sizes, in however many processes
torchrun starts: `torchrun --nproc_per_node N tests/eval_grid.py MODEL_FOLDER OUT.json` (used by
tests/test_multiprocess.py, which compares N=2 against N=1).

Each method's model is built once (untrained, in eval mode: deterministic predictions) and prepared as
the loop prepares it; the real evaluate() and feature cache then run over every split size x batch size.
"""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from two_processes import write_rows

from tunebench.config import build_config
from tunebench.data import batching
from tunebench.data.tasks import get_task, load_task
from tunebench.methods import get_method
from tunebench.models.hub import load_config, load_tokenizer
from tunebench.training.classify_eval import evaluate
from tunebench.training.kinds import cached_features

SPLIT_SIZES = (1, 7, 129, 200, 853)  # 853: all of rotten_tomatoes' test split
EVAL_BATCH_SIZES = (1, 16, 128)
VARIANTS = {  # name -> (method, method_options)
    "full": ("full", {}),
    "lora": ("lora", {}),
    "qlora": ("qlora", {}),
    "head": ("head", {"cache_features": False}),
    "head-cached": ("head", {"cache_features": True}),
}


def main(model_path: str, out: str) -> None:
    accelerator = Accelerator()
    tokenizer = load_tokenizer(model_path, load_config(model_path).model_type)
    task = load_task(get_task("rotten_tomatoes"), build_config("full", "rotten_tomatoes")["data"])
    test = batching.tokenize({"test": task.splits["test"]}, tokenizer, 32)["test"]
    rows = []
    for variant, (name, options) in VARIANTS.items():
        cfg = build_config(name, "rotten_tomatoes", overrides={"model": model_path, "method_options": options})
        method = get_method(name)
        set_seed(0)  # the same random task head in every process and in every run
        model = accelerator.prepare(method.build(model_path, task.num_labels, cfg, accelerator.device))
        for size in SPLIT_SIZES:
            split = test.select(range(size))
            for batch_size in EVAL_BATCH_SIZES:
                if options.get("cache_features"):
                    features = cached_features(method, model, split, "test", tokenizer, batch_size, accelerator)
                    loader = batching.feature_loader(features, torch.tensor(split["label"]), batch_size, None)
                else:
                    loader = batching.eval_loader(split, tokenizer, batch_size)
                metrics, predictions = evaluate(model, accelerator.prepare(loader), accelerator)
                rows.append(
                    {
                        "variant": variant,
                        "size": size,
                        "batch_size": batch_size,
                        "accuracy": metrics["accuracy"],
                        "predictions": predictions.tolist(),
                    }
                )
    write_rows(accelerator, out, rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
