"""What a plan starts from: the model (presets, embedded models, folders, config.json), the GPU (configs/planner's
table), the budget, and the run a `tunebench train` with the same options would launch (planned_run): each
method's config, its precision, and what in it changes one training step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from tunebench.config import SHORTCUTS, flatten, parse_set, run_config, set_dotted
from tunebench.data.tasks import get_task, load_task
from tunebench.errors import UserError, unknown_choice
from tunebench.files import CONFIG_DIR, read_yaml
from tunebench.methods import plannable
from tunebench.models.hub import DECODER_TYPES, EMBEDDED, default_pooling, load_config, resolve_model
from tunebench.models.precision import RULES, recorded_rule
from tunebench.optim import resolve_adamw
from tunebench.planner.request import PlanRequest
from tunebench.units import GiB

PLANNER_DIR = CONFIG_DIR / "planner"

BUDGET_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20}


BUDGET_UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


BUDGET_FORMAT = "a number with an optional unit: 24GiB, 24GB, 80G (= GiB), 512MiB, or plain bytes"


# -- the model and the GPU --------------------------------------------------------------------


def parse_budget(text: str) -> int:
    """Bytes from '24GiB', '24GB' (decimal), '80G' (binary, as nvidia-smi and PyTorch print), '512MiB', '1e9'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in BUDGET_UNITS:
        raise UserError(f"cannot read the budget {text!r}; use {BUDGET_FORMAT}")
    value = float(match.group(1)) * BUDGET_UNITS[match.group(2)]
    if value <= 0:
        raise UserError(f"the budget must be positive, got {text!r}")
    return int(value)


def load_presets() -> dict[str, dict]:
    return read_yaml(PLANNER_DIR / "presets.yaml")


def load_gpus() -> tuple[dict[str, dict], dict]:
    raw = read_yaml(PLANNER_DIR / "gpus.yaml")
    return raw["gpus"], raw["defaults"]


@dataclass
class ModelSpec:
    name: str
    source: str  # preset | embedded | folder | config.json
    config: object  # transformers PretrainedConfig
    pooling: str  # what every method pools by default (the checkpoint's pooling)
    path: str | None = None  # a folder real models load from (validation)


def resolve_spec(name: str) -> ModelSpec:
    """A preset, an embedded model, a local folder, or a config.json path."""
    presets = load_presets()
    if name in presets:
        values = dict(presets[name])
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        return ModelSpec(name, "preset", config, "last" if config.model_type in DECODER_TYPES else "cls")
    path = Path(name)
    if path.is_file() and path.name.endswith(".json"):
        try:
            values = json.loads(path.read_text())
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        except (ValueError, KeyError) as exc:
            raise UserError(f"{path} is not a model config.json: {exc}") from None
        return ModelSpec(name, "config.json", config, "last" if config.model_type in DECODER_TYPES else "cls")
    if name in EMBEDDED or path.is_dir():
        folder = resolve_model(name)
        config = load_config(folder)
        return ModelSpec(
            name, "embedded" if name in EMBEDDED else "folder", config, default_pooling(folder, config), folder
        )
    raise unknown_choice("model", name, [*presets, *EMBEDDED, "<local folder>", "<path/to/config.json>"])


@dataclass
class Device:
    name: str
    memory_bytes: int | None
    peak_flops: float | None  # at the planned precision
    context_bytes: int
    allocator_margin: float
    source: str

    def bytes_for(self, tensor_bytes: float) -> int:
        return int(tensor_bytes * (1 + self.allocator_margin) + self.context_bytes)

    def tensor_limit(self, budget: int) -> float:
        return (budget - self.context_bytes) / (1 + self.allocator_margin)


def resolve_device(gpu: str | None, peak_tflops: float | None, precision: str, processes: int | None = None) -> Device:
    """The device's constants; on several GPUs its context also holds NCCL's buffers (nccl_gib)."""
    gpus, defaults = load_gpus()
    if gpu is not None and gpu not in gpus:
        raise unknown_choice("GPU", gpu, list(gpus))
    entry = defaults | (gpus[gpu] if gpu else {})
    key = "fp32_tflops" if precision == "fp32" else "bf16_tflops"
    tflops = peak_tflops if peak_tflops is not None else entry.get(key)
    return Device(
        name=gpu or "unspecified GPU",
        memory_bytes=int(entry["memory_gib"] * GiB) if "memory_gib" in entry else None,
        peak_flops=tflops * 1e12 if tflops else None,
        context_bytes=int((entry["context_gib"] + (entry["nccl_gib"] if (processes or 1) > 1 else 0)) * GiB),
        allocator_margin=entry["allocator_margin"],
        source="peak_tflops (given)" if peak_tflops is not None else f"configs/planner/gpus.yaml ({gpu or 'defaults'})",
    )


@dataclass
class Shape:
    batch_size: int
    seq_len: int
    num_labels: int


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'geforce rtx 4090': case, spacing and the vendor prefix do not matter."""
    name = " ".join(name.lower().split())
    return name.removeprefix("nvidia ")


def match_gpu(gpus: dict, device_name: str) -> dict | None:
    """The gpus.yaml entry that lists this CUDA device name (torch.cuda.get_device_name), normalized; exact,
    so that an A100 80GB PCIe never takes an A10's figures, nor an L40 an L4's."""
    name = normalize_gpu_name(device_name)
    return next((e for e in gpus.values() if name in map(normalize_gpu_name, e["names"])), None)


# -- the run -----------------------------------------------------------------------------------


# The config keys one training step depends on, which the plan traces; every other key (epochs, lr, seed, what
# is saved, evaluation, sample caps, ...) changes the run but not one step of it. data's columns and encoding
# say how to read the task's data (its labels). README "Plan before you train" lists them.
HONOURED = (
    "model",
    "method",
    "variants",
    "task",
    "pooling",
    "method_options.*",
    "data.max_length",
    "data.task_type",
    "data.text_column",
    "data.text_pair_column",
    "data.label_column",
    "data.prompt_column",
    "data.answer_column",
    "data.messages_column",
    "data.encoding",
    "train.batch_size",
    "train.grad_accum",
    "train.gradient_checkpointing",
    "train.precision",
    "train.optimizer",
    "train.adamw",
    "train.max_grad_norm",
)


def honoured(key: str) -> bool:
    return key in HONOURED or key.startswith("method_options.")


@dataclass
class PlannedRun:
    """The run a `tunebench train` with the same flags would launch, as the plan traces it."""

    spec: ModelSpec
    shape: Shape
    precision: str
    task_type: str
    settings: dict[str, dict]  # method -> its config's trace_step keywords (step_settings)
    not_planned: list[str]  # keys the config file sets that do not change one training step
    methods_named: bool  # False: every plannable method, by default


def planned_run(request: PlanRequest) -> PlannedRun:
    """Each method's config through train's layering (tunebench.config.run_config), and what the plan traces of it.

    An override or setting the planner cannot honour (HONOURED) is an error; a config file's such keys are
    listed in the plan (the file describes a whole run: its epochs and learning rate are not in one step).
    """
    overrides = plan_overrides(request.overrides)
    for key in overrides:
        if not honoured(key):
            raise UserError(
                f"plan cannot honour the override {key}: it does not change one training step; {_honours()}"
            )
    shortcuts = {name: getattr(request, name) for name in SHORTCUTS}
    for name, value in shortcuts.items():
        if value is not None and not honoured(SHORTCUTS[name]):
            raise UserError(
                f"plan cannot honour {name} ({SHORTCUTS[name]}): it does not change one training step; {_honours()}"
            )
    user = read_yaml(request.config) if request.config else {}
    named = request.methods or request.method or overrides.get("method") or user.get("method")
    if len(split_methods(named) or plannable()) > 1 and any(k.startswith("method_options.") for k in overrides):
        raise UserError("method_options.* overrides are one method's: plan that method alone")
    configs = {
        m: run_config(m, request.task, config=request.config, overrides=overrides, **shortcuts)
        for m in split_methods(named) or plannable()
    }
    methods = parse_methods(named)  # after the configs: a user's variants file is read with them
    cfg = configs[methods[0]]
    spec = resolve_spec(cfg["model"])
    task_type = cfg["data"]["task_type"]
    num_labels = 2  # a generate task has no classes: its step is the causal LM's
    if task_type == "classify":
        task = get_task(cfg["task"])
        num_labels = len(task.label_names) if task.label_names else load_task(task, cfg["data"]).num_labels
    shape = Shape(cfg["train"]["batch_size"], cfg["data"]["max_length"], request.num_labels or num_labels)
    if shape.num_labels < 2:
        raise UserError(f"num_labels must be at least 2, got {shape.num_labels}")
    return PlannedRun(
        spec=spec,
        shape=shape,
        precision=request.precision or run_precision(cfg),
        task_type=task_type,
        settings={m: step_settings(c, spec) for m, c in configs.items()},
        not_planned=[k for k in flatten(user) if not honoured(k)],
        methods_named=bool(named),
    )


def plan_overrides(overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Overrides as flat dotted keys: from a mapping ({"train.lr": 1e-4} or nested) or "key=value" strings."""
    if isinstance(overrides, dict):
        nested: dict = {}
        for key, value in overrides.items():
            set_dotted(nested, key, value)
        return flatten(nested)
    return flatten(parse_set(list(overrides)))


def _honours() -> str:
    return f"the planner honours {', '.join(HONOURED)}"


def result_precision(cfg: dict) -> str:
    """The precision rule a run's config (or result) trained under; fp32 where it does not say."""
    return recorded_rule(cfg) or "fp32"


def parse_precisions(precision: str | None) -> list[str]:
    """`plan --precision`: one rule of tunebench.models.precision.RULES, or several comma-separated to compare."""
    rules = [r.strip() for r in precision.split(",")] if precision else []
    for rule in rules:
        if rule not in RULES:
            raise unknown_choice("precision rule", rule, list(RULES))
    return rules


def run_precision(cfg: dict) -> str:
    """The precision rule of the run cfg describes, on the CUDA GPU a plan is for: auto is bf16-mixed there (every
    GPU configs/planner/gpus.yaml lists has bf16), as training.run resolves it on such a GPU."""
    rule = cfg["train"]["precision"]
    return "bf16-mixed" if rule == "auto" else rule


def step_settings(cfg: dict, spec: ModelSpec) -> dict:
    """The trace_step keywords a run's config sets: what in it changes one training step."""
    train = cfg["train"]
    return {
        "options": cfg["method_options"],
        "pooling": cfg["pooling"] or spec.pooling,
        "gradient_checkpointing": train["gradient_checkpointing"],
        "grad_accum": train["grad_accum"],
        "optimizer": train["optimizer"],
        "adamw": resolve_adamw(train["adamw"], "cuda"),  # plans are for CUDA devices
        "max_grad_norm": train["max_grad_norm"],
        "task_type": cfg["data"]["task_type"],
    }


def parse_methods(named: str | list[str] | None) -> list[str]:
    """The methods a plan compares: a list or a comma-separated string of plannable methods and their variants;
    None: all the methods."""
    choices = plannable(with_variants=True)
    methods = split_methods(named) or plannable()
    for method in methods:
        if method not in choices:
            raise unknown_choice("method", method, choices)
    return methods


def split_methods(named: str | list[str] | None) -> list[str]:
    """The names in a list or a comma-separated string, stripped; [] for None."""
    names = named.split(",") if isinstance(named, str) else (named or [])
    return [m.strip() for m in names if m.strip()]
