"""`tunebench eval RUN_DIR`: reload what a method saved and evaluate it again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from tunebench import batching, generation
from tunebench.errors import UserError
from tunebench.files import read_yaml
from tunebench.loop import evaluate
from tunebench.methods import get_method
from tunebench.metrics import load_extra
from tunebench.models import load_config, load_tokenizer, resolve_model
from tunebench.tasks import get_task, load_task


def evaluate_run(run_dir: str | Path, task_name: str | None = None, split: str = "test") -> dict:
    """Metrics of the run's best weights on a split; on its own task, also the agreement with training."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    if not (run_dir / "best").exists():
        raise UserError(f"{run_dir} has no saved weights (best/); was it run with train.save=none?")
    cfg = read_yaml(run_dir / "config.yaml")
    method = get_method(cfg["method"])
    if generation.is_generate(cfg):
        return _evaluate_generate(run_dir, cfg, method, task_name, split)
    task = load_task(get_task(task_name or cfg["task"]), cfg["data"])
    saved = load_task(get_task(cfg["task"]), cfg["data"]).label_names
    if task.label_names != saved:
        raise UserError(
            f"task {task.name!r} has labels {task.label_names[:5]}..., the run was trained on "
            f"{saved[:5]}...: they must match"
        )
    data = task.splits[split]
    if cfg["data"]["max_eval_samples"]:
        data = data.select(range(min(cfg["data"]["max_eval_samples"], len(data))))
    model_path = resolve_model(cfg["model"])
    tokenizer = load_tokenizer(model_path, load_config(model_path).model_type)
    accelerator = Accelerator(mixed_precision=cfg["train"]["mixed_precision"])
    model = method.load(str(run_dir / "best"), model_path, task, tokenizer, cfg, accelerator.device)
    encoded = batching.tokenize({split: data}, tokenizer, cfg["data"]["max_length"])[split]
    model, loader = accelerator.prepare(
        model, batching.eval_loader(encoded, tokenizer, cfg["train"]["eval_batch_size"])
    )
    metrics, predictions = evaluate(model, loader, accelerator, load_extra(cfg["metrics"]))
    out = {"run_dir": str(run_dir), "task": task.name, "split": split, **metrics}
    saved_predictions = run_dir / "test_predictions.json"
    if split == "test" and task_name in (None, cfg["task"]) and saved_predictions.exists():
        reference = np.array(json.loads(saved_predictions.read_text()))
        out["agreement_with_training"] = float((reference == predictions).mean())
    return out


def _evaluate_generate(run_dir: Path, cfg: dict, method, task_name: str | None, split: str) -> dict:
    """The generate-task counterpart: regenerate the split from the saved weights and score it."""
    task = load_task(get_task(task_name or cfg["task"]), cfg["data"])
    data = task.splits[split]
    if cfg["data"]["max_eval_samples"]:
        data = data.select(range(min(cfg["data"]["max_eval_samples"], len(data))))
    model_path = resolve_model(cfg["model"])
    tokenizer = load_tokenizer(model_path, load_config(model_path).model_type)
    accelerator = Accelerator(mixed_precision=cfg["train"]["mixed_precision"])
    model = method.load(str(run_dir / "best"), model_path, task, tokenizer, cfg, accelerator.device)
    model = accelerator.prepare(model)
    encoded, _ = generation.tokenize({split: data}, tokenizer, cfg["data"])
    gen = cfg["generation"]
    metrics, outputs = generation.evaluate(
        accelerator.unwrap_model(model), encoded[split], tokenizer, gen["batch_size"], gen["margin"], accelerator.device
    )
    out = {"run_dir": str(run_dir), "task": task.name, "split": split, **metrics}
    saved_outputs = run_dir / "test_predictions.json"
    if split == "test" and task_name in (None, cfg["task"]) and saved_outputs.exists():
        reference = json.loads(saved_outputs.read_text())
        out["agreement_with_training"] = float(np.mean([a == b for a, b in zip(reference, outputs, strict=True)]))
    return out
