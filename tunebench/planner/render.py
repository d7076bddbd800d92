"""A plan and a validation as text: the tables `tunebench plan` prints without --json."""

from __future__ import annotations

from tunebench.units import GiB, MiB, format_gib


def format_plan(plan: dict) -> str:
    device, shape = plan["device"], plan["shape"]
    budget = plan["budget_bytes"]
    lines = [
        f"{plan['model']['name']} ({plan['model']['source']}, {plan['model']['model_type']}): "
        f"batch {shape['batch_size']} x {shape['seq_len']} tokens, "
        + (f"{shape['num_labels']} labels" if plan["task_type"] == "classify" else "causal-LM SFT")
        + f", {plan['precision']} ({_describe_dtypes(plan)})"
        + f"; budget {format_gib(budget) if budget else 'none'} on {device['name']}"
        + (f" ({device['peak_flops'] / 1e12:.0f} TFLOP/s peak)" if device["peak_flops"] else "")
        + (
            f"; {plan['sharding']['gpus']} GPUs, {plan['sharding']['strategy']}: memory and batch per GPU"
            if plan["sharding"]["strategy"]
            else ""
        ),
        *(f"{method}: {_describe_settings(s)}" for method, s in plan["settings"].items()),
        "",
        f"{'method':7} {'trainable':>10} {'peak':>9} {'weights':>8} {'buffers':>8} {'grads':>8} {'optim':>8}"
        f" {'activ':>8} {'other':>8}"
        f" {'device':>9} {'fits':>4} {'max bs':>6} {'max seq':>7} {'bs1 seq':>7}"
        f" {'TFLOP':>8} {'s/step':>7} {'tok/s':>8} {'MFU':>5}",
    ]
    for p in plan["methods"]:
        at = p["at_peak"]
        seconds = f"{p['step_seconds']:.3f}" if p["step_seconds"] else "-"
        tokens = f"{p['tokens_per_second']:.0f}" if p["tokens_per_second"] else "-"
        fits = "-" if p["fits"] is None else ("yes" if p["fits"] else "no")
        lines.append(
            f"{p['method']:7} {p['trainable_params'] / 1e6:9.1f}M {_g(p['tensor_peak_bytes']):>9}"
            f" {_g(at['weights']):>8} {_g(at['buffers']):>8} {_g(at['gradients']):>8} {_g(at['optimizer_state']):>8}"
            f" {_g(at['activations']):>8} {_g(at['other']):>8}"
            f" {_g(p['device_bytes']):>9} {fits:>4} {_n(p['max_batch']):>6} {_n(p['max_seq_len']):>7}"
            f" {_n(p['max_seq_len_batch1']):>7}"
            f" {p['flops_per_step'] / 1e12:8.2f} {seconds:>7} {tokens:>8} {p['mfu']:5.2f}"
        )
    lines += [
        "",
        "GiB; weights..other: tensors live at the peak (buffers: module buffers and quantization constants;"
        " other: inputs, logits/loss, temporaries). max bs: the largest batch at this sequence length;"
        " max seq / bs1 seq: the longest sequence at this batch / at batch 1 (up to max_position_embeddings).",
    ]
    lines += [f"MFU {p['method']}: {p['mfu']:.2f}, {p['mfu_source']}" for p in plan["methods"]]
    lines += [f"assumes {a}" for a in plan["assumptions"]]
    if plan["not_planned"]:
        lines.append(f"not planned (the config's keys that do not change one step): {', '.join(plan['not_planned'])}")
    lines += [f"device constants from {device['source']}; planned in {plan.get('seconds_to_plan', '?')} s", ""]
    lines.append(f"recommendation: {plan['recommendation']}")
    lines += [f"  next step: {s}" for s in plan.get("next_steps", [])]
    lines += _precision_comparison(plan)
    return "\n".join(lines)


def _precision_comparison(plan: dict) -> list[str]:
    """With several precision rules: each method's device peak under each, then the other rules' whole plans."""
    others = plan.get("other_precisions", [])
    if not others:
        return []
    lines = ["", "precision rules compared (device peak per method, GiB; fits the budget):"]
    plans = [plan, *others]
    for i, method in enumerate(plan["methods"]):
        cells = [f"{p['precision']} {_g(p['methods'][i]['device_bytes'])}{_fits(p['methods'][i])}" for p in plans]
        lines.append(f"  {method['method']:7} " + ", ".join(cells))
    for other in others:
        lines += ["", f"under {other['precision']}:", format_plan(other)]
    return lines


def _fits(method: dict) -> str:
    return "" if method["fits"] is None else (" fits" if method["fits"] else " does not fit")


def _describe_dtypes(plan: dict) -> str:
    dtypes = plan.get("precision_dtypes") or {}
    return f"trainable {dtypes.get('trainable')}, frozen {dtypes.get('frozen')}, autocast {dtypes.get('autocast')}"


def _describe_settings(settings: dict) -> str:
    """One line of what the run's config sets that the step depends on."""
    options = ", ".join(f"{k}={v}" for k, v in settings["options"].items() if v is not None) or "no options"
    clip = f"clip {settings['max_grad_norm']}" if settings["max_grad_norm"] else "no clipping"
    return (
        f"{options}; {settings['optimizer']}, {clip}, gradient accumulation {settings['grad_accum']}, "
        f"checkpointing {'on' if settings['gradient_checkpointing'] else 'off'}, {settings['pooling']} pooling"
    )


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _g(value: float) -> str:
    return f"{value / GiB:.2f}"


def format_validation(rows: list[dict]) -> str:
    """Predicted against measured peaks (planner.validate.validation_rows), one row per model, method and path."""
    width = max([6, *(len(row["method"]) for row in rows)])  # a variant's name
    lines = [
        f"{'model':26} {'method':{width}} {'task':8} {'prec':4} {'ckpt':4} {'measured on':11} {'predicted':>10} "
        f"{'tracker':>10} {'independent':>11} {'error':>8}  measured by"
    ]
    for row in rows:
        independent = row["independent_bytes"]
        independent = f"{independent / MiB:11.2f}" if independent is not None else "-".rjust(11)
        checkpointing = {True: "yes", False: "no"}.get(row.get("gradient_checkpointing"), "-")
        lines.append(
            f"{row['model'][:26]:26} {row['method']:{width}} {row.get('task_type', 'classify'):8} {row['precision']:4} "
            f"{checkpointing:4} {row['measured_on'][:11]:11} "
            f"{row['predicted_bytes'] / MiB:10.2f} {row['tracker_bytes'] / MiB:10.2f} {independent} "
            f"{row['error_percent']:+7.2f}%  {row['measured_by']}"
        )
    lines.append(
        "MiB. 2 steps: two real steps on a padded batch of 8 x 64 tokens (task generate: the causal-LM SFT step, "
        "labels -100 on prompt and padding; ckpt: gradient checkpointing); the error is against the independent "
        "figure over the same two steps. loop.train: a tiny run of rotten_tomatoes (16 examples, batch 8, 2 epochs, "
        "padded), predicted at its longest batch; the error is against the run's own peak."
    )
    return "\n".join(lines)
