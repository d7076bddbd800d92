"""`tunebench eval RUN_DIR`: reload what a method saved and score a split again through the task's kind, as the
run scored it (either task kind)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tunebench.data.tasks import get_task, load_capped, load_task
from tunebench.errors import UserError
from tunebench.files import CONFIG_DIR, read_yaml
from tunebench.methods import add_variants, get_method
from tunebench.metrics import load_extra
from tunebench.models.hub import load_pretrained
from tunebench.models.precision import RULES, apply_rule, recorded_rule
from tunebench.training.args import TrainArgs
from tunebench.training.kinds import evaluation_kind


def evaluate_run(run_dir: str | Path, task_name: str | None = None, split: str = "test") -> dict:
    """Metrics of the run's best weights on a split (capped as the run capped it), scored by the task's kind as the
    run scored it; on its own task, also the agreement with the predictions (or generations) the run made on test."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    if not (run_dir / "best").exists():
        raise UserError(f"{run_dir} has no saved weights (best/); was it run with train.save=none?")
    cfg = read_yaml(run_dir / "config.yaml")
    if cfg.get("variants"):  # the run's method may be a variant of the user's own file
        add_variants(cfg["variants"])
    # the rule the run trained under (a run from before train.precision: its mixed_precision's reading)
    cfg["train"]["precision"] = recorded_rule(cfg) or "fp32"
    args = TrainArgs.from_config(_with_defaults(cfg, read_yaml(CONFIG_DIR / "defaults.yaml")))
    task = load_capped(task_name or cfg["task"], cfg["data"])
    if not args.generate:
        saved = load_task(get_task(cfg["task"]), cfg["data"]).label_names
        if task.label_names != saved:
            raise UserError(
                f"task {task.name!r} has labels {task.label_names[:5]}..., the run was trained on "
                f"{saved[:5]}...: they must match"
            )
    model_path, model_config, tokenizer = load_pretrained(cfg["model"])
    out = {"run_dir": str(run_dir), "task": task.name, "split": split}
    kind = evaluation_kind(args, tokenizer)
    kind.encode(replace(task, splits={split: task.splits[split]}), model_path, model_config, out)
    AcceleratorState._reset_state()  # the run's own precision, whatever ran before in this process
    accelerator = Accelerator(mixed_precision=RULES[args.precision].accelerate)
    model = get_method(cfg["method"]).load(str(run_dir / "best"), model_path, task.num_labels, cfg, accelerator.device)
    model = kind.prepare_split(apply_rule(model, args.precision), accelerator, split)
    metrics, predictions = kind.evaluate(split, model, accelerator, load_extra(cfg["metrics"]))
    out |= metrics
    saved_predictions = run_dir / "test_predictions.json"
    if split == "test" and task_name in (None, cfg["task"]) and saved_predictions.exists():
        reference = json.loads(saved_predictions.read_text())
        out["agreement_with_training"] = float(
            np.mean([a == b for a, b in zip(reference, list(predictions), strict=True)])
        )
    return out


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """saved with the keys it lacks (a run saved before they existed) taken from defaults, at every level."""
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out
