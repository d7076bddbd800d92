"""Jobs on a Ray cluster (`--executor ray`): each job a Ray task that runs the job's work on some node.

The harness hands over the work (run on a worker: starts the run's process, returns what it left) and what to do
with each outcome (in the driver, as each ends); this module knows nothing of training. A task asks for the GPUs
and CPUs of the job's processes; Ray picks the node, and gives the task's processes only their own GPUs
(CUDA_VISIBLE_DEVICES) and as many threads as CPUs (OMP_NUM_THREADS). A task whose worker dies is not retried:
the driver hears why, and the harness records it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tunebench.errors import UserError

Job = TypeVar("Job")
INSTALL = "pip install 'tunebench[ray]'"


def import_ray() -> Any:
    """The ray module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _in_driver_folder(work: Callable[[Job], Any], job: Job, folder: str) -> Any:
    """On a worker: work(job) in the driver's working directory, so that a relative path means the same folder
    there (on one node or a shared filesystem, the same folder; elsewhere the same path on the worker's node)."""
    os.makedirs(folder, exist_ok=True)
    os.chdir(folder)  # a worker serves one driver's tasks only, one at a time: they all want this folder
    return work(job)


def _connect(ray: Any, address: str | None) -> None:
    """Join the cluster at address (default: RAY_ADDRESS, else a new cluster of this machine, for this suite
    only: Ray's own default would also take the last cluster `ray start` began here, even one long gone)."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except ConnectionError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def _why(ray: Any, exc: Exception) -> str:
    """One line for a task that did not return: its worker or node died, or work raised there."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(exc).strip().splitlines()[0]


def _task_resources(ray: Any, processes: int) -> dict[str, int]:
    """What each job's task asks for: a GPU and a CPU per process, or CPUs only on a cluster without GPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and gpus < processes:
        raise UserError(f"each run takes {processes} GPUs (processes: {processes}); the Ray cluster has {gpus}")
    return {"num_cpus": processes, "num_gpus": processes if gpus else 0}


def run_on_ray(
    jobs: Sequence[Job],
    work: Callable[[Job], Any],
    submitted: Callable[[Job], None],
    finished: Callable[[Job, Any, str | None], None],
    processes: int,
    address: str | None,
) -> None:
    """Run work(job) for every job as a Ray task (processes GPUs and CPUs each) and call finished(job, outcome,
    None) in this thread as each ends, or finished(job, None, why) when its worker or node died or work raised.
    submitted(job) is called as each is handed to the cluster. An exception here (Ctrl-C, or one that finished
    raises) cancels the tasks in flight, then propagates. A cluster this started (no address) stops with it."""
    ray = import_ray()
    _connect(ray, address)
    try:
        resources = _task_resources(ray, processes)
        remote = ray.remote(_in_driver_folder).options(max_retries=0, **resources)
        pending = {}
        for job in jobs:
            pending[remote.remote(work, job, os.getcwd())] = job
            submitted(job)
        try:
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready)
                try:
                    outcome, why = ray.get(ready), None
                except ray.exceptions.RayError as exc:
                    outcome, why = None, _why(ray, exc)
                finished(job, outcome, why)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        ray.shutdown()
