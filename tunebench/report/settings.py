"""What each group of runs was set up with: its training budget, how its learning rate was chosen, its pooling,
its environment, and the config keys that differ between groups beyond the method."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tunebench.config import flatten
from tunebench.methods import get_method, method_names, variants
from tunebench.models.precision import recorded_rule
from tunebench.report.groups import Group, Sweep
from tunebench.units import format_bytes

# Config keys that do not change what is measured, or that name the run rather than configure it.
BOOKKEEPING_KEYS = {
    "method",
    "task",
    "seed",
    "out",
    "metrics",
    "train.trackers",
    "train.log_every",
    "train.save",
    "train.eval_batch_size",
}
# Settings a like-for-like comparison must share; each gets its own plain sentence (like_for_like).
BUDGET_KEYS = ("train.epochs", "train.max_steps")
PRECISION_KEYS = ("train.precision", "train.mixed_precision")  # the latter: results from before train.precision


def precision_of(result: dict) -> str:
    """The precision rule a run trained under: recorded, else read from its config (mixed_precision no: fp32,
    bf16: bf16-mixed)."""
    return recorded_rule(result) or "precision not recorded"


def precision_note(groups: Sequence[Group]) -> str:
    """The table's precision rule in one sentence, with the dtypes the first run recorded."""
    rules = dict.fromkeys(precision_of(r.result) for g in groups for r in g.runs)
    if len(rules) > 1:
        return f"Precision rules differ between the runs: {', '.join(rules)} (see Flags)."
    (rule,) = rules
    recorded = next((r.result["precision"] for g in groups for r in g.runs if r.result.get("precision")), None)
    dtypes = (
        f" (trainable weights {recorded['trainable_dtype']}, frozen {recorded['frozen_dtype'] or '-'}, "
        f"autocast {recorded['autocast_dtype'] or 'none'})"
        if recorded
        else ""
    )
    return f"Precision rule: {rule}{dtypes}, the same for every method."


def lr_rule(g: Group, sweeps: Sequence[Sweep]) -> str:
    """How the group's learning rate was chosen: tuned on validation, the method's default, or set."""
    if not g.mean("trainable_params"):
        return "unused: nothing trains"
    if any(s.label == g.method and g.runs[0] in s.by_lr[s.selected] for s in sweeps):
        return "tuned on validation"
    lrs = {r.result["config"]["train"]["lr"] for r in g.runs}
    return "the method's default" if lrs == {default_lr(g)} else "set by the suite"


def default_lr(g: Group) -> float | None:
    """The method's default learning rate for the group's task type (GENERATE_DEFAULTS for a generate task), or a
    variant's own."""
    if g.method not in method_names():
        return None
    method = get_method(g.method)
    layers = [method.DEFAULTS]
    if g.runs[0].result["config"].get("data", {}).get("task_type") == "generate":  # older results have no task_type
        layers.append(getattr(method, "GENERATE_DEFAULTS", {}))
    layers.append(variants()[g.method].config if g.method in variants() else {})
    return next((layer["train"]["lr"] for layer in reversed(layers) if "lr" in layer.get("train", {})), None)


def epochs_of(g: Group) -> str:
    cfgs = [r.result["config"]["train"] for r in g.runs]
    epochs = "/".join(str(e) for e in dict.fromkeys(c["epochs"] for c in cfgs))
    steps = {c.get("max_steps") for c in cfgs} - {None}
    return epochs + (f" (max {'/'.join(map(str, sorted(steps)))} steps)" if steps else "")


def differing_settings(groups: list[Group]) -> dict[str, dict[str, list[str]]]:
    """Config keys, beyond what defines a method, whose values differ between the completed runs:
    key -> {value as JSON: [method labels]}."""
    completed = [r for g in groups for r in g.runs]
    method_keys = _method_scoped_keys({r.grid["method"] for r in completed})
    configs = {id(r): flatten(r.result["config"]) for r in completed}
    own_sentence = {*BUDGET_KEYS, "pooling", *PRECISION_KEYS}  # like_for_like says these plainly
    keys = sorted({k for c in configs.values() for k in c} - BOOKKEEPING_KEYS - method_keys - own_sentence)
    out = {}
    for key in (k for k in keys if not k.startswith("method_options.")):
        by_value: dict[str, list[str]] = {}
        for g in groups:
            for r in g.runs:
                labels = by_value.setdefault(json.dumps(configs[id(r)].get(key)), [])
                if g.label not in labels:
                    labels.append(g.label)
        if len(by_value) > 1:
            out[key] = by_value
    return out


def pooling_of(result: dict) -> str:
    """The pooling a run used: as recorded, else as configured. Results from before `pooling` was one shared
    key: head had its own method option; full, lora and qlora used the model's sequence-classification head
    (BERT: the pooler on CLS)."""
    resolved = (result.get("model") or {}).get("pooling")  # what ran, recorded since issue 19
    if resolved:
        return resolved
    cfg = result["config"]
    if "pooling" in cfg:
        chosen = cfg["pooling"]
    elif cfg.get("method") == "head":
        chosen = (cfg.get("method_options") or {}).get("pooling")
    else:
        return "the model's own classification head (BERT: pooler on CLS)"
    return chosen or "the checkpoint's (null)"


def _method_scoped_keys(methods: set[str]) -> set[str]:
    """Keys each method's DEFAULTS set (its learning rate, say): they differ between methods by design."""
    keys: set[str] = set()
    for name in methods & set(method_names()):
        keys |= set(flatten(get_method(name).DEFAULTS))
    return keys


def environment_summary(env: dict) -> dict[str, str]:
    gpu = env.get("gpu")
    versions = env.get("versions") or {}
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)" if git.get("dirty") else "")
    return {
        "Machine": f"{env.get('platform', '?')}; {env.get('cpu', '?')}, {env.get('cpu_count', '?')} CPUs, "
        f"{env.get('torch_threads', '?')} torch threads",
        "GPU": (
            f"{gpu.get('count', 1)}× {gpu.get('name')} ({format_bytes(gpu.get('memory_bytes'))}), "
            f"CUDA {gpu.get('cuda')}, "
            f"driver {gpu.get('driver')}"
            if gpu
            else "none (CPU run)"
        ),
        "Processes": str(env.get("world_size", 1)),
        "Python": str(env.get("python", "?")),
        "Versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        "Commit": commit,
    }
