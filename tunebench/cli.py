"""The `tunebench` command: argument parsing and printing over the Python API (tunebench.api).

Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from tunebench import api
from tunebench.errors import UserError, unknown_choice
from tunebench.planner.request import PlanRequest
from tunebench.training.worker import interrupt_on_signals
from tunebench.units import format_seconds


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # before or after the command; SUPPRESS: the command's parser does not reset a -v given before it
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show every library message, warning and progress bar",
        )

    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise UserError(f"{self.prog}: {message}")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that build a run's config (tunebench.config.run_config): `train` and `plan` share them."""
    from tunebench.methods import registry, variants

    p.add_argument(
        "--method",
        help=f"{' | '.join(registry())}, a variant ({', '.join(variants())}; configs/variants.yaml), or a method "
        "module's path (default: lora)",
    )
    p.add_argument("--task", help="a registered task, a task YAML, a data file, or a hub dataset id")
    p.add_argument(
        "--model",
        help="an embedded model (minilm, smollm2-135m, mpnet-base), a folder, or a hub id; plan: also a preset",
    )
    p.add_argument("--config", help="YAML file layered over the defaults, method and task")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=1e-4 (repeatable)",
    )
    for flag in (
        "max_train_samples",
        "max_eval_samples",
        "max_test_samples",
        "max_length",
        "epochs",
        "max_steps",
        "batch_size",
    ):
        p.add_argument(f"--{flag.replace('_', '-')}", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", help="run folder (default runs/<task>-<method>-<model>-<time>)")
    p.add_argument("--result", help="where to write the result JSON (default RUN_DIR/result.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunebench", description="Measure which fine-tuning method fits your model, task and GPU.")
    parser.set_defaults(verbose=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_train_args(sub.add_parser("train", help="train one run"))

    p = sub.add_parser("eval", help="reload a run's saved weights and evaluate")
    p.add_argument("run_dir")
    p.add_argument("--task", help="evaluate on another task with the same labels")
    p.add_argument("--split", default="test", choices=("validation", "test"))

    sub.add_parser("tasks", help="list registered tasks and whether their data is installed")
    p = sub.add_parser("models", help="list embedded models and whether they are installed")
    p.add_argument("--prepare", metavar="NAME", help="convert an embedded model once into the cache")

    p = sub.add_parser("bench", help="run a method-comparison suite")
    p.add_argument("suite", help=f"a suite YAML file, or a shipped suite: {', '.join(api.registered_suites())}")
    p.add_argument("--out", help="results folder (default results/<suite name>)")
    p.add_argument("--shard", help="i/n: run only the i-th of n shards (1-based)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    p.add_argument("--force", action="store_true", help="rerun finished runs too")
    p.add_argument("--rerun-stale", action="store_true", help="rerun finished runs whose source changed since")
    p.add_argument("--no-tracking", action="store_true", help="turn off the tensor-memory tracker in every run")
    p.add_argument("--jobs", type=int, help="runs at once (default 1), the CPU cores split evenly between them")
    p.add_argument(
        "--devices",
        help="comma-separated GPUs, e.g. 0,1,2,3: as many runs at once as they hold, each seeing only its own",
    )
    p.add_argument("--executor", default="local", help="local (default) or ray: each run a task on a Ray cluster")
    p.add_argument(
        "--address", help="with --executor ray: the cluster's HOST:PORT (default: RAY_ADDRESS, else a new one here)"
    )

    p = sub.add_parser("report", help="write a comparison report from result folders")
    p.add_argument("results", nargs="+")
    p.add_argument("-o", "--out", required=True)

    _add_plan_args(sub.add_parser("plan", help="predict memory and speed per method for a GPU budget"))
    return parser


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    """`tunebench plan`'s flags: their destinations are tunebench.planner.request.PlanRequest's fields."""
    from tunebench.methods import plannable

    add_config_arguments(p)  # the same run's config as `train` builds, from the same flags
    p.add_argument("--seq-len", dest="max_length", type=int, help="tokens per example: --max-length's alias")
    p.add_argument("--budget", help="GPU memory to plan for, e.g. 24GiB, 24GB, 80G, 512MiB (default: the GPU's)")
    p.add_argument("--num-labels", type=int, help="classes (default: the task's)")
    p.add_argument(
        "--precision",
        help="precision rule: fp32, bf16-mixed, bf16-true or fp16-mixed; several comma-separated to compare them "
        "(e.g. bf16-mixed,bf16-true); default: the run's train.precision (auto: bf16-mixed on the GPU)",
    )
    p.add_argument("--gpu", help="a GPU from configs/planner/gpus.yaml (h100-80g, a100-40g, l4, rtx4090, ...)")
    p.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s at the precision, instead of the GPU's")
    p.add_argument(
        "--methods",
        help=f"comma-separated methods or variants to compare, e.g. {','.join(plannable())},dora (default: --method's, "
        "else all methods)",
    )
    p.add_argument("--results", help="a results folder: calibrates MFU (and, with --validate, checks peaks)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--validate", action="store_true", help="compare predictions with real steps on this machine")
    p.add_argument(
        "--full-depth",
        action="store_true",
        help="trace every layer instead of extrapolating a deep model from 2 and 3 of its layers (slower, same result)",
    )
    p.add_argument("--gpus", type=int, help="GPUs the run spreads over (with --strategy); memory is per GPU")
    p.add_argument(
        "--strategy", help="ddp (replicated model, gradient buckets) or fsdp (FSDP2 full sharding, block by block)"
    )


def train_options(args: argparse.Namespace) -> dict:
    """The train flags as tunebench.api.train's keyword arguments."""
    return {**config_options(args), "out": args.out}


def config_options(args: argparse.Namespace) -> dict:
    """The config flags (add_config_arguments) as tunebench.config.run_config's keyword arguments, less method/task."""
    # lazy: tunebench.config imports torch, which the CLI's start-up (help, listing tasks) does without
    from tunebench.config import SHORTCUTS, flatten, parse_set

    return {
        "config": args.config,
        "overrides": flatten(parse_set(args.set)),
        **{name: getattr(args, name) for name in SHORTCUTS},
    }


def plan_request(args: argparse.Namespace) -> PlanRequest:
    """The plan flags (_add_plan_args) as a PlanRequest: each flag's destination is a field; --set is overrides."""
    options = {f.name: getattr(args, f.name) for f in fields(PlanRequest) if f.name != "overrides"}
    return PlanRequest(**options, overrides=args.set)


def cmd_train(args: argparse.Namespace) -> int:
    result = api.train(args.method, args.task, result_path=args.result, verbose=args.verbose, **train_options(args))
    if result["status"] != "ok":
        print(f"tunebench: run {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        headline = "exact match" if "test_exact_match" in result else "accuracy"  # a generate task's accuracy
        trained = (
            f"train {format_seconds(result['train_seconds'])} ({result['samples_per_second']:.1f} samples/s)"
            if result["samples_per_second"] is not None
            else "no training (the untuned model)"
        )
        print(
            f"{result['config']['method']} on {result['task']['name']}: test {headline} {result['test_accuracy']:.4f}, "
            f"macro-F1 {result['test_f1']:.4f}, {result['trainable_params']:,} trainable params, {trained}; "
            f"run folder {result['run_dir']}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    report = api.evaluate(args.run_dir, args.task, args.split, verbose=args.verbose)
    print(json.dumps(report, indent=2))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from tunebench.data.tasks import get_task, registered_tasks

    for name in registered_tasks():
        spec = get_task(name)
        state = "installed" if spec.installed() else f"missing (needs {spec.package})"
        print(f"{name:18} {state:12} {spec.description}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from tunebench.models.hub import EMBEDDED, describe_models, embedded_path

    if args.prepare:
        if args.prepare not in EMBEDDED:
            raise unknown_choice("model", args.prepare, list(EMBEDDED))
        print(embedded_path(args.prepare))
        return 0
    for row in describe_models():
        state = (
            ("ready" if row["prepared"] else "installed, needs --prepare")
            if row["installed"]
            else f"missing ({row['install']})"
        )
        print(f"{row['name']:14} {state:28} {row['description']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    outcome = api.bench(
        args.suite,
        out=args.out,
        shard=args.shard,
        dry_run=args.dry_run,
        force=args.force,
        track_memory=not args.no_tracking,
        verbose=args.verbose,
        rerun_stale=args.rerun_stale,
        jobs=args.jobs,
        devices=args.devices,
        executor=args.executor,
        address=args.address,
    )
    return outcome["exit_status"]


def cmd_report(args: argparse.Namespace) -> int:
    api.write_report(args.results, args.out)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    # here, not at the top: a training run (`tunebench train`, each suite run) then never loads the planner's
    # rendering, which is no part of its numbers (harness.stale_reason judges a result by what its run loaded)
    from tunebench.planner.render import format_plan, format_validation

    request = plan_request(args)
    result = api.plan(request, verbose=args.verbose)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_validation(result) if request.validate else format_plan(result))
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "tasks": cmd_tasks,
    "models": cmd_models,
    "bench": cmd_bench,
    "report": cmd_report,
    "plan": cmd_plan,
}


def main(argv: list[str] | None = None) -> int:
    interrupt_on_signals()
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"tunebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
