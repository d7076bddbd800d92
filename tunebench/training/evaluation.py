"""Classification evaluation: metrics over a loader gathered across processes; and `tunebench eval RUN_DIR`
(reload what a method saved and evaluate it again, either task kind). The loop evaluates with the same functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tunebench.data import batching
from tunebench.data import generate as generate_data
from tunebench.data.tasks import get_task, load_capped, load_task
from tunebench.errors import UserError
from tunebench.files import read_yaml
from tunebench.methods import add_variants, get_method
from tunebench.metrics import classification_metrics, load_extra
from tunebench.models.hub import load_pretrained
from tunebench.models.precision import RULES, apply_rule, recorded_rule
from tunebench.training import generate_eval


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, extra_metrics: list = ()) -> tuple[dict, np.ndarray]:
    """Metrics and predictions over a loader, in dataset order, gathered across processes."""
    model.eval()
    predictions, labels, indices = [], [], []
    for batch in loader:
        indices.append(batch.pop("index"))
        labels.append(batch.pop("labels"))
        predictions.append(model(**batch).logits.argmax(-1))
    predictions, labels = in_dataset_order(accelerator, torch.cat(indices), torch.cat(predictions), torch.cat(labels))
    predictions, labels = predictions.numpy(), labels.numpy()
    return classification_metrics(predictions, labels, extra_metrics), predictions


def in_dataset_order(accelerator: Accelerator, index: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """values (rows matching index, this process's examples) from every process: one row per example,
    in dataset order, on the CPU.

    Processes hold different numbers of rows (the last batches differ in size), so each pads to the
    longest before the gather, marking its padding with index -1. Sharding also repeats examples so
    that every process gets as many batches: keep each example's first copy.
    """
    device = accelerator.device
    index = accelerator.gather(accelerator.pad_across_processes(index.to(device), pad_index=-1)).cpu()
    values = [accelerator.gather(accelerator.pad_across_processes(v.to(device))).cpu() for v in values]
    examples, first = np.unique(index.numpy(), return_index=True)
    first = torch.from_numpy(first[examples >= 0])
    return [v[first] for v in values]


def evaluate_run(run_dir: str | Path, task_name: str | None = None, split: str = "test") -> dict:
    """Metrics of the run's best weights on a split (capped as the run capped it); on its own task, also the
    agreement with the predictions (or generations) the run made on test."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    if not (run_dir / "best").exists():
        raise UserError(f"{run_dir} has no saved weights (best/); was it run with train.save=none?")
    cfg = read_yaml(run_dir / "config.yaml")
    if cfg.get("variants"):  # the run's method may be a variant of the user's own file
        add_variants(cfg["variants"])
    method = get_method(cfg["method"])
    generate = generate_data.is_generate(cfg)
    task = load_capped(task_name or cfg["task"], cfg["data"])
    if not generate:
        saved = load_task(get_task(cfg["task"]), cfg["data"]).label_names
        if task.label_names != saved:
            raise UserError(
                f"task {task.name!r} has labels {task.label_names[:5]}..., the run was trained on "
                f"{saved[:5]}...: they must match"
            )
    model_path, _, tokenizer = load_pretrained(cfg["model"])
    AcceleratorState._reset_state()  # the run's own precision, whatever ran before in this process
    # the rule the run trained under (a run from before train.precision: its mixed_precision's reading)
    rule = cfg["train"]["precision"] = recorded_rule(cfg) or "fp32"
    accelerator = Accelerator(mixed_precision=RULES[rule].accelerate)
    model = apply_rule(method.load(str(run_dir / "best"), model_path, task.num_labels, cfg, accelerator.device), rule)
    if generate:
        model = accelerator.prepare(model)
        encoded, _ = generate_data.tokenize({split: task.splits[split]}, tokenizer, cfg["data"])
        gen = cfg["generation"]
        metrics, predictions = generate_eval.evaluate(
            accelerator.unwrap_model(model),
            encoded[split],
            tokenizer,
            gen["batch_size"],
            gen["margin"],
            accelerator.device,
        )
        # as the run scored it: the same candidates, from the task (.get: a run saved before the key existed)
        if task.choices and cfg["generation"].get("choice_accuracy", True):
            correct = generate_eval.choice_correct(
                accelerator.unwrap_model(model),
                encoded[split],
                tokenizer,
                task.choices.candidates,
                gen["batch_size"],
                accelerator.device,
            )
            metrics |= {"choice_accuracy": float(np.mean(correct)), "choice": task.choices.summary()}
    else:
        encoded = batching.tokenize({split: task.splits[split]}, tokenizer, cfg["data"]["max_length"])[split]
        model, loader = accelerator.prepare(
            model, batching.eval_loader(encoded, tokenizer, cfg["train"]["eval_batch_size"])
        )
        metrics, predictions = evaluate(model, loader, accelerator, load_extra(cfg["metrics"]))
    out = {"run_dir": str(run_dir), "task": task.name, "split": split, **metrics}
    saved_predictions = run_dir / "test_predictions.json"
    if split == "test" and task_name in (None, cfg["task"]) and saved_predictions.exists():
        reference = json.loads(saved_predictions.read_text())
        out["agreement_with_training"] = float(
            np.mean([a == b for a, b in zip(reference, list(predictions), strict=True)])
        )
    return out
