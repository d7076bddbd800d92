"""Is tunebench's loop at least as fast as Hugging Face Trainer? The same run through both, alternated.

    python -m tunebench.benchmarks.vs_trainer --methods full lora --pairs 3 --train-samples 2000

For each method, `pairs` pairs of runs in one process, in the order tunebench, Trainer, Trainer,
tunebench, ... (each side sees early and late positions equally often). Both sides get the same model
(built by the method's own build()), the same training examples, tokenization, batch size, max length,
learning rate, linear warmup schedule, weight decay, gradient clipping, precision and AdamW implementation
(fused: tunebench's train.adamw=fused, Trainer's optim="adamw_torch_fused"), the same dynamic-padding
collator and length-grouped batches (each side its own sampler), no evaluation during training, no saving.
tunebench runs with memory tracking on, as users run it.

What each side's time covers:
  tunebench: the result's train_seconds (every step including data loading and collation).
  Trainer:   its own train_runtime (from just before the epoch loop to its end: data loading, steps,
             its logging), excluding model loading, dataloader and optimizer construction.
Samples and non-padding tokens are counted from the data on both sides (examples x epochs), so the
ratio is one of wall times. Writes reports/benchmarks/vs_trainer.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from accelerate.utils import parse_flag_from_env

from tunebench.config import Config, build_config
from tunebench.data import batching
from tunebench.data import generate as generate_data
from tunebench.data.generate import is_generate
from tunebench.data.tasks import get_task, load_task
from tunebench.errors import UserError
from tunebench.files import REPO_ROOT
from tunebench.measure import environment
from tunebench.methods import get_method
from tunebench.models.hub import load_config, load_tokenizer, resolve_model
from tunebench.models.precision import RULES, apply_rule, resolve_rule
from tunebench.results import write_json_atomic
from tunebench.training.run import train

# The head method trains on cached backbone features, which Trainer has no equivalent for.
COMPARABLE = ("full", "lora", "qlora")


def run_tunebench(cfg: Config, run_dir: Path) -> dict:
    result = train(cfg, run_dir)
    return {
        "seconds": result["train_seconds"],
        "samples_per_second": result["samples_per_second"],
        "tokens_per_second": result["tokens_per_second"],
        "examples": result.get("examples_seen"),
        "tokens": result.get("tokens_processed"),
        "optimizer": result["optimizer"]["implementation"],
    }


def _sft_collator(pad_id: int):
    """tunebench's generate collation for Trainer, which passes every key of a batch to the model: no `index`."""
    collate = generate_data.collate(pad_id)

    def collate_batch(rows: list[dict]) -> dict:
        batch = collate([row | {"index": 0} for row in rows])
        del batch["index"]
        return batch

    return collate_batch


def run_trainer(cfg: Config, out_dir: Path) -> dict:
    """The same configuration through transformers.Trainer: train only, timed by Trainer itself."""
    from transformers import Trainer, TrainingArguments

    train_cfg = cfg["train"]
    task = load_task(get_task(cfg["task"]), cfg["data"])
    split = task.splits["train"]
    if cfg["data"]["max_train_samples"]:
        split = split.select(range(min(cfg["data"]["max_train_samples"], len(split))))
    model_path = resolve_model(cfg["model"])
    tokenizer = load_tokenizer(model_path, load_config(model_path).model_type)
    if is_generate(cfg):  # causal-LM SFT: prompt + answer, the loss on the answer, as tunebench's Generate kind
        encoded = generate_data.tokenize({"train": split}, tokenizer, cfg["data"])[0]["train"]
        encoded = encoded.select_columns(["input_ids", "labels", "length"])
        collate = _sft_collator(tokenizer.pad_token_id)
    else:
        encoded = batching.tokenize({"train": split}, tokenizer, cfg["data"]["max_length"])["train"]
        encoded = encoded.remove_columns("index")  # tunebench's own bookkeeping; `length` feeds the sampler
        collate = batching._collator(tokenizer)
    # the CPU when Accelerate is told to use it (gpu_check --cpu on a GPU machine), as tunebench's side does
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    device = torch.device("cpu" if use_cpu else "cuda")
    model = get_method(cfg["method"]).build(model_path, task.num_labels, cfg, device)
    rule = resolve_rule(train_cfg["precision"], device)
    apply_rule(model, rule)  # as tunebench's setup does
    precision = RULES[rule].accelerate
    args = TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=train_cfg["epochs"],
        per_device_train_batch_size=train_cfg["batch_size"],
        gradient_accumulation_steps=train_cfg["grad_accum"],
        learning_rate=train_cfg["lr"],
        weight_decay=train_cfg["weight_decay"],
        warmup_steps=train_cfg["warmup_ratio"],  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=train_cfg["scheduler"],
        max_grad_norm=train_cfg["max_grad_norm"],
        optim="adamw_torch_fused",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if cfg["data"]["group_by_length"] else "random",
        length_column_name="length",
        # tunebench's Classifier takes **inputs: Trainer cannot read the columns it uses from forward's signature
        remove_unused_columns=False,
        activation_checkpointing=train_cfg["gradient_checkpointing"],
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=train_cfg["log_every"],
        seed=cfg["seed"],
        use_cpu=device.type == "cpu",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded,
        data_collator=collate,
        processing_class=tokenizer,
    )
    seconds = trainer.train().metrics["train_runtime"]
    examples = len(encoded) * train_cfg["epochs"]
    tokens = sum(encoded["length"]) * train_cfg["epochs"]
    return {
        "seconds": seconds,
        "samples_per_second": examples / seconds,
        "tokens_per_second": tokens / seconds,
        "examples": examples,
        "tokens": tokens,
        "optimizer": "fused",
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def compare(method: str, pairs: int, overrides: dict) -> dict:
    """`pairs` alternated pairs; the ratio is tunebench samples/s over Trainer samples/s, per pair."""
    if method not in COMPARABLE:
        raise UserError(f"vs_trainer cannot compare method {method!r}; valid: {', '.join(COMPARABLE)}")
    if overrides.get("train", {}).get("max_steps"):
        raise UserError("vs_trainer compares whole epochs; leave train.max_steps unset")
    cfg = build_config(method, overrides.pop("task", "rotten_tomatoes"), overrides=overrides)
    runs: dict[str, list[dict]] = {"tunebench": [], "trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        # tunebench, trainer, trainer, tunebench, ...
        order = ["tunebench" if (i + i // 2) % 2 == 0 else "trainer" for i in range(2 * pairs)]
        for i, side in enumerate(order):
            folder = Path(tmp) / f"{side}{i}"
            runs[side].append(run_tunebench(cfg, folder) if side == "tunebench" else run_trainer(cfg, folder))
    ratios = [
        tb["samples_per_second"] / hf["samples_per_second"]
        for tb, hf in zip(runs["tunebench"], runs["trainer"], strict=True)
    ]
    return {
        "method": method,
        "model": cfg["model"],
        "task": cfg["task"],
        "pairs": pairs,
        "config": {
            "batch_size": cfg["train"]["batch_size"],
            "max_length": cfg["data"]["max_length"],
            "train_samples": runs["trainer"][0]["examples"],
            "epochs": cfg["train"]["epochs"],
            "lr": cfg["train"]["lr"],
            "precision": cfg["train"]["precision"],
            "adamw": "fused",
            "track_memory": cfg["measure"]["track_memory"],
        },
        "tunebench": runs["tunebench"],
        "trainer": runs["trainer"],
        "ratio_per_pair": ratios,
        "ratio": spread(ratios),
    }


def tunebench_overrides(train_samples: int, batch_size: int, max_length: int, eval_samples: int) -> dict:
    """The shared settings: whole epochs, fused AdamW, nothing logged or saved, a small evaluation."""
    return {
        "data": {"max_train_samples": train_samples, "max_eval_samples": eval_samples, "max_length": max_length},
        "train": {"batch_size": batch_size, "adamw": "fused", "trackers": [], "save": "none"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["full", "lora"], choices=COMPARABLE)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=64, help="tunebench evaluates after training (untimed)")
    parser.add_argument("--out", default=str(REPO_ROOT / "reports" / "benchmarks" / "vs_trainer.json"))
    args = parser.parse_args(argv)
    rows = []
    for method in args.methods:
        overrides = tunebench_overrides(args.train_samples, args.batch_size, args.max_length, args.eval_samples)
        rows.append(compare(method, args.pairs, {**overrides, "model": args.model, "task": args.task}))
    report = {
        "command": (
            f"python -m tunebench.benchmarks.vs_trainer --methods {' '.join(args.methods)} --pairs {args.pairs} "
            f"--model {args.model} --task {args.task} --train-samples {args.train_samples} "
            f"--batch-size {args.batch_size} --max-length {args.max_length}"
        ),
        "methods": rows,
        "environment": environment(),
    }
    write_json_atomic(args.out, report)
    for row in rows:
        ratio = row["ratio"]
        print(
            f"{row['method']}: tunebench / Trainer samples/s = {ratio['mean']:.3f}x "
            f"(min {ratio['min']:.3f}, max {ratio['max']:.3f}, {row['pairs']} pairs)"
        )


if __name__ == "__main__":
    main()
