"""The Python API: what the `tunebench` commands do, as functions for scripts and notebooks.

    import tunebench

    result = tunebench.train(method="lora", task="rotten_tomatoes", max_train_samples=500, epochs=1)
    result["test_accuracy"]
    plan = tunebench.plan(model="llama-3.1-8b", budget="24GiB", gpu="rtx4090")

Each function takes its command's options as keyword arguments (`--max-train-samples` is max_train_samples,
`--set train.lr=1e-4` is overrides={"train.lr": 1e-4}) and returns what the command reports. The CLI
(tunebench/cli.py) parses arguments and calls these.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tunebench.errors import UserError, unknown_choice
from tunebench.files import CONFIG_DIR
from tunebench.planner.request import PlanRequest
from tunebench.quiet import VERBOSE_ENV, quiet

SUITE_DIR = CONFIG_DIR / "suites"


def train(
    method: str | None = None,
    task: str | None = None,
    *,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    result_path: str | Path | None = None,
    verbose: bool = False,
    **shortcuts: Any,
) -> dict:
    """Train one run and return its result (status, test_accuracy, test_f1, timings, memory, ...).

    The run folder is out, else runs/<task>-<method>-<model>-<time>; the result is also written to
    result_path (default RUN_DIR/result.json).
    """
    # lazy: the config, the loop and the results import torch, which `import tunebench` does not
    from tunebench.config import run_config

    with quiet(verbose):  # building the config imports the methods, and with them peft and bitsandbytes
        cfg = run_config(method, task, config=config, overrides=overrides, out=out, **shortcuts)
    if int(os.environ.get("RANK", "0")) == 0 and cfg["data"]["task_type"] == "classify":
        print(
            f"{cfg['model']}: pretrained backbone; new classification head for {Path(cfg['task']).stem} "
            f"(it starts from random weights and trains with every method)",
            file=sys.stderr,
        )
    with quiet(verbose):
        from tunebench.training.run import train as train_loop

        return train_loop(cfg, cfg["out"], result_path)


def evaluate(run_dir: str | Path, task: str | None = None, split: str = "test", verbose: bool = False) -> dict:
    """Reload a run's best weights and evaluate them on a split (of another task with the same labels)."""
    with quiet(verbose):
        from tunebench.training.evaluation import evaluate_run

        return evaluate_run(run_dir, task, split)


def registered_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def resolve_suite(suite: str | Path) -> Path:
    """A suite YAML file, or the name of one that ships with tunebench (quick, standard, ...)."""
    path = Path(suite)
    if path.is_file():
        return path
    if (SUITE_DIR / f"{suite}.yaml").is_file():
        return SUITE_DIR / f"{suite}.yaml"
    if path.suffix in (".yaml", ".yml"):
        raise UserError(f"suite file not found: {path}")
    raise unknown_choice("suite", str(suite), [*registered_suites(), "<suite.yaml>"])


def bench(
    suite: str | Path,
    *,
    out: str | Path | None = None,
    shard: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    track_memory: bool = True,
    rerun_stale: bool = False,
    jobs: int | None = None,
    devices: str | list[int] | None = None,
    executor: str = "local",
    address: str | None = None,
    verbose: bool = False,
) -> dict:
    """Run a suite (a file or a shipped name), skipping finished runs; each run is its own process.

    jobs: runs at once, the CPU cores split between them; devices ("0,1,2,3" or [0, 1, 2, 3]): as many at once
    as the devices hold, each run's processes seeing only their own (a suite's `processes: k` takes k each).
    executor "ray": each run a task on the Ray cluster at address (default: RAY_ADDRESS, else a new cluster of
    this machine for this suite), asking for a GPU and a CPU per process.

    Returns {"exit_status": 0 unless a run failed, "results_dir": the folder, "results": the suite's result dicts}.
    """
    from tunebench.files import read_yaml
    from tunebench.harness import default_out, run_suite
    from tunebench.results import read_result, suite_result_files

    suite_file = resolve_suite(suite)
    out_dir = Path(out) if out else default_out(read_yaml(suite_file), suite_file)
    before = os.environ.get(VERBOSE_ENV)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # each run is a child process: it reads the setting from the environment
    try:
        with quiet(verbose, tokenizing=False):  # the suite's configs import the methods, peft and bitsandbytes
            status = run_suite(
                str(suite_file),
                out=str(out_dir),
                shard=shard,
                dry_run=dry_run,
                force=force,
                track_memory=track_memory,
                rerun_stale=rerun_stale,
                jobs=jobs,
                devices=devices,
                executor=executor,
                address=address,
            )
    finally:
        if before is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = before
    results = [read_result(path) for path in suite_result_files(out_dir)[0]]  # not other suites' files there
    return {"exit_status": status, "results_dir": str(out_dir), "results": [r for r in results if r]}


def write_report(results: str | Path | list[str | Path], out: str | Path) -> Path:
    """Write the comparison report of one or more results folders into out; returns out/report.md."""
    from tunebench.report import write_report as write

    folders = [str(results)] if isinstance(results, (str, Path)) else [str(r) for r in results]
    write(folders, str(out))
    return Path(out) / "report.md"


def plan(request: PlanRequest | None = None, *, verbose: bool = False, **options: Any) -> dict | list[dict]:
    """`tunebench plan`: the plan dict (per method: peak memory, fits, max batch, speed; the recommendation).

    A PlanRequest, or its fields as keywords: model, method, task, config, overrides (as train's, or "key=value"
    strings), max_length, batch_size, num_labels, precision, budget, gpu, peak_tflops, methods, results,
    full_depth, gpus, strategy. validate=True returns predicted against measured rows instead.
    """
    if request is None:
        request = PlanRequest.from_options(options)
    elif options:
        raise UserError("plan takes a PlanRequest or keyword options, not both")
    with quiet(verbose, tokenizing=request.validate):
        # lazy: the planner imports torch and transformers; validation also the loop and datasets
        if request.validate:
            from tunebench.planner.validate import validation_rows

            return validation_rows(request)
        from tunebench.planner.predict import predict_plan

        return predict_plan(request)
