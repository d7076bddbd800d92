"""One training run, start to end: `train` makes the Accelerator, writes the result when the run starts and
again however it ends (ok, oom, failed, interrupted; with every rank's failure under several processes), and in
between sets up (setup), trains (fit), saves and tests."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, parse_flag_from_env

from tunebench.config import Config, dump
from tunebench.errors import UserError
from tunebench.files import REPO_ROOT
from tunebench.measure import end_git_state, environment, process_age_seconds
from tunebench.models.precision import RULES, resolve_rule
from tunebench.results import SCHEMA_VERSION, rank_failure_path, read_rank_failures, run_name, write_json_atomic
from tunebench.training import checkpoint, record, setup
from tunebench.training.args import TrainArgs
from tunebench.training.fit import Fitted, fit

log = logging.getLogger("tunebench")

# Set by the CLI's SIGTERM handler. Its KeyboardInterrupt can be lost (Python drops exceptions raised
# inside a __del__ during garbage collection), so the loop also checks this each step.
stop_requested = threading.Event()
# Set while train() records how the run ended; a SIGTERM then (torchrun stopping the other ranks after one
# failed) must not cut that short.
finishing = threading.Event()

OOM_HINT = "out of memory: try a smaller --batch-size or --max-length, or a lighter method (lora, qlora, head)"


def train(
    cfg: Config, run_dir: str | Path | None = None, result_path: str | Path | None = None, meta: dict | None = None
) -> dict:
    """Train one run as cfg says, write run_dir/{config.yaml,result.json,best/,last/,logs/}; run_dir None is
    default_run_dir's.

    The result is written when the run starts (status running) and again when it ends, whatever
    the end: ok, oom, failed or interrupted. meta (the harness's run_id, suite, grid) goes into the
    result as it is. Returns the result.
    """
    startup_seconds = process_age_seconds()  # imports and set-up before this run: no part of run_seconds
    stop_requested.clear()
    finishing.clear()
    # Accelerate keeps one process-wide state that refuses a second precision; each run sets its own (the
    # process group, kept in PartialState, stays).
    AcceleratorState._reset_state()
    cfg = resolve_precision(cfg)
    run_dir = Path(run_dir or default_run_dir(cfg))
    result_path = Path(result_path or run_dir / "result.json")
    accelerator = Accelerator(
        mixed_precision=RULES[cfg["train"]["precision"]].accelerate,
        log_with=cfg["train"]["trackers"] or None,
        dataloader_config=DataLoaderConfiguration(non_blocking=True),  # batches reach the GPU without a wait
        project_dir=str(run_dir / "logs"),
    )
    main = accelerator.is_main_process
    rank_failure_path(run_dir, accelerator.process_index).unlink(missing_ok=True)  # from an earlier attempt
    result = {
        "schema": SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "started_at": _now(),
        "finished_at": None,
        "config": cfg,
        "run_dir": str(run_dir),
        "environment": environment(accelerator.num_processes),
        "startup_seconds": startup_seconds,
        **(meta or {}),
    }
    log_file = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump(cfg))
        log_file = _log_to_file(run_dir / "train.log")
        write_json_atomic(result_path, result)
    try:
        _run(cfg, run_dir, accelerator, result)
        result["status"] = "ok"
    except torch.OutOfMemoryError as exc:
        result.update(status="oom", error=f"{OOM_HINT} ({str(exc).splitlines()[0]})")
        log.error(result["error"])
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted (Ctrl-C or SIGTERM) before the run finished")
        raise
    except UserError as exc:
        result.update(status="failed", error=str(exc))
        raise
    except Exception as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    finally:
        finishing.set()
        _end(accelerator, run_dir, result_path, result, log_file)
        finishing.clear()
    return result


def resolve_precision(cfg: Config) -> Config:
    """A copy of cfg whose train.precision is a concrete rule: `auto` resolved on the device this process trains
    on (the config.yaml and result then say which rule ran)."""
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    return {**cfg, "train": {**cfg["train"], "precision": resolve_rule(cfg["train"]["precision"], device)}}


def default_run_dir(cfg: Config) -> str:
    """runs/<task>-<method>-<model>-<time>, as rank 0 names it. Under several processes each rank's clock may
    read another second, so the others take rank 0's name over the process group: one folder for every rank,
    where rank 0 reads their failures. (The environment torchrun gives all ranks holds no shared unique name:
    TORCHELASTIC_RUN_ID is "none" unless --standalone or --rdzv-id set it.)"""
    names = [f"runs/{run_name(cfg)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # the process group, which the run's Accelerator then shares: on the CPU where it would be, as it would
        PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        broadcast_object_list(names, from_process=0)
    return names[0]


def _end(accelerator: Accelerator, run_dir: Path, result_path: Path, result: dict, log_file) -> None:
    """Record the end (with the other ranks' failures), write the result, close the trackers and the log file."""
    result["finished_at"] = _now()
    environment = result["environment"]
    environment["git"] = end_git_state(REPO_ROOT, environment["git"])
    if accelerator.num_processes > 1:
        _record_rank_failures(accelerator, run_dir, result)
    if accelerator.is_main_process:
        write_json_atomic(result_path, result)
    accelerator.end_training()
    if log_file is not None:
        log.removeHandler(log_file)
        log_file.close()


def _run(cfg: Config, run_dir: Path, accelerator: Accelerator, result: dict) -> None:
    run_start = time.perf_counter()
    s = setup.prepare(TrainArgs.from_config(cfg), accelerator, result)
    fitted = fit(s, stop_requested)
    model = _keep_best(s, fitted, run_dir)
    test_start = time.perf_counter()
    with s.meter.phase("eval"):
        test_metrics, predictions = s.kind.evaluate("test", s.model, accelerator, s.extra_metrics)
    test_seconds = time.perf_counter() - test_start
    if accelerator.is_main_process:
        (run_dir / "test_predictions.json").write_text(json.dumps(predictions.tolist()))
    tokens = fitted.tokens + s.kind.tokens_outside_steps
    timing = s.meter.summary()
    memory = record.memory(timing, fitted.tracker, accelerator)
    # after the memory summary, as before: the last forgetting probe stays out of the peaks
    test_fields = s.kind.test_fields(test_metrics, predictions, model)
    result.update(
        validation=fitted.curves["validation"][-1] if fitted.curves["validation"] else None,
        best_validation_accuracy=fitted.best.accuracy,
        best_step=fitted.best.step,
        test=test_metrics,
        test_accuracy=test_metrics["accuracy"],
        test_f1=test_metrics["f1_macro"],
        curves=fitted.curves,
        **record.throughput(
            fitted.steps, fitted.micro_batches, fitted.examples, tokens, s.micro_batches_per_epoch, fitted.train_seconds
        ),
        **timing,
        **record.eval_timing(fitted.validation_seconds, test_seconds),
        run_seconds=time.perf_counter() - run_start,
        memory=memory,
        **record.peak(memory),
        checkpoint_bytes=checkpoint.folder_bytes(run_dir / "best"),
        **test_fields,
    )
    accelerator.log(
        {"test/accuracy": test_metrics["accuracy"], "test/f1_macro": test_metrics["f1_macro"]}, step=fitted.steps
    )
    log.info("test %s", test_metrics)


def _keep_best(s: setup.Setup, fitted: Fitted, run_dir: Path):
    """Save the last step (when asked), restore the best validation step and save it; returns the unwrapped model."""
    accelerator, save = s.accelerator, s.args.save
    model = accelerator.unwrap_model(s.model)
    accelerator.wait_for_everyone()
    if save == "best_and_last":
        checkpoint.save(s.method, model, run_dir / "last", accelerator)
    if fitted.best.state is not None:
        checkpoint.restore(model, fitted.best.state)  # under FSDP2 each rank restores its own shards
    if save != "none":
        checkpoint.save(s.method, model, run_dir / "best", accelerator)
    return model


def _record_rank_failures(accelerator: Accelerator, run_dir: Path, result: dict) -> None:
    """Only rank 0 writes the result, and a failure elsewhere reaches rank 0 only as a torn collective or
    torchrun's SIGTERM (which reads `interrupted`). So every other rank leaves how it failed in the run
    folder, before it leaves the process group, and rank 0 records the failures it finds: the result
    names the rank and its error."""
    rank = accelerator.process_index
    if rank:
        if result["status"] in ("failed", "oom"):
            failure = {"rank": rank, "status": result["status"], "error": result["error"]}
            write_json_atomic(rank_failure_path(run_dir, rank), failure)
        return
    failures = read_rank_failures(run_dir)  # the cause: rank 0's own error is then a torn collective
    if not failures and result["status"] in ("failed", "oom"):
        failures = [{"rank": 0, "status": result["status"], "error": result["error"]}]
    if failures:
        error = "; ".join(f"rank {failure['rank']}: {failure['error']}" for failure in failures)
        result.update(status=failures[0]["status"], error=error)


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
