"""What a plan is asked for: every option of `tunebench plan` and `tunebench.plan`, typed and documented.

Light on purpose (no torch): the CLI builds one from its flags before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tunebench.errors import unknown_choice


@dataclass
class PlanRequest:
    """A plan's options. The run's config is built as `tunebench train` builds it (defaults, method, task, config
    file, overrides, then the settings below); the plan traces what of it changes one training step."""

    model: str | None = None  # a preset (configs/planner/presets.yaml), an embedded model, a folder, a config.json
    method: str | None = None  # the run's method; plans this one alone unless methods is given
    task: str | None = None  # a registered task, a task YAML, a data file or a hub dataset id
    config: str | None = None  # a YAML file layered over the defaults, method and task
    # dotted config key -> value ({"train.grad_accum": 4}), or "key=value" strings with YAML values
    overrides: dict[str, Any] | list[str] = field(default_factory=dict)
    max_length: int | None = None  # tokens per example (the planned sequence length)
    batch_size: int | None = None  # examples per step (per GPU under a strategy)
    # train's other settings: none changes one training step, so the planner refuses them
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_test_samples: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    seed: int | None = None
    num_labels: int | None = None  # classes (default: the task's)
    precision: str | None = None  # a precision rule, or several comma-separated (default: the run's)
    budget: str | int | None = None  # GPU memory: "24GiB", "24GB", "80G", "512MiB" or bytes (default: the GPU's)
    gpu: str | None = None  # a GPU of configs/planner/gpus.yaml (h100-80g, a100-40g, l4, rtx4090, ...)
    peak_tflops: float | None = None  # peak dense TFLOP/s at the precision, instead of the GPU's
    methods: str | list[str] | None = None  # the methods to compare, a list or comma-separated (default: all)
    results: str | None = None  # a results folder: calibrates MFU (validate: checks its peaks)
    full_depth: bool = False  # trace every layer instead of extrapolating a deep model from 2 and 3 of them
    gpus: int | None = None  # GPUs the run spreads over (with strategy); memory is per GPU
    strategy: str | None = None  # ddp or fsdp
    validate: bool = False  # predicted against measured rows on this machine, instead of a plan

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PlanRequest:
        """A request from keyword options; an unknown one is an error that lists the others."""
        names = [f.name for f in fields(cls)]
        unknown = set(options) - set(names)
        if unknown:
            raise unknown_choice("plan option", sorted(unknown)[0], sorted(names))
        return cls(**options)
