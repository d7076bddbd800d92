"""Child processes side by side: how many at once, each with its share of the CPU threads and its own devices.

The harness runs a suite's trainings through run_in_slots; this module knows nothing of training. A job that
takes k devices waits until k are free and holds them together; its process sees only those
(CUDA_VISIBLE_DEVICES, renumbered from 0 inside it).
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TypeVar

from tunebench.errors import UserError

Job = TypeVar("Job")


@dataclass(frozen=True)
class Slots:
    """How many jobs run at once, the CPU threads each of their processes gets (None: what the environment
    says, as for a lone run) and the devices they share (None: no device assignment)."""

    at_once: int
    threads: int | None
    devices: tuple[str, ...] | None
    devices_per_job: int

    def env(self, devices: Sequence[str]) -> dict[str, str]:
        """The environment variables a job's process gets on top of its parent's."""
        env = {}
        if self.threads is not None:  # torch's intra-op threads follow OMP_NUM_THREADS
            env |= {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        return env


def parse_devices(devices: str | Sequence[int | str]) -> tuple[str, ...]:
    """'0,1,2,3' (or [0, 1, 2, 3]) -> ('0', '1', '2', '3'); anything else is a one-line error."""
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    listed = tuple(str(item).strip() for item in items)
    if not listed or not all(d.isdigit() for d in listed) or len(set(listed)) != len(listed):
        raise UserError(f"devices takes distinct device numbers separated by commas, e.g. 0,1,2,3; got {devices!r}")
    return listed


def plan_slots(jobs: int | None, devices: str | Sequence[int | str] | None, processes: int = 1) -> Slots:
    """jobs at once (default 1; with devices, as many as the devices hold), each job `processes` processes
    on as many devices; when several run at once, the CPU cores are split evenly between their processes."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise UserError(f"jobs is how many runs go at once: a whole number, 1 or more; got {jobs!r}")
    listed = parse_devices(devices) if devices is not None else None
    if listed is None:
        at_once = jobs or 1
    elif processes > len(listed):
        raise UserError(f"each run takes {processes} devices (processes: {processes}); devices names {len(listed)}")
    else:
        at_once = min(jobs or len(listed), len(listed) // processes)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // (at_once * processes)) if at_once > 1 else None
    return Slots(at_once, threads, listed, processes)


class _Children:
    """The live child processes, so that a stopped scheduler can end them; none starts after stop()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self._stopped = False

    def start(self, begin: Callable[[], subprocess.Popen]) -> subprocess.Popen | None:
        with self._lock:
            if self._stopped:
                return None
            process = begin()
            self._live.add(process)
            return process

    def forget(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.discard(process)

    def stop(self) -> None:
        """SIGTERM every live child (a run records itself as interrupted) and start no other."""
        with self._lock:
            self._stopped = True
            for process in self._live:
                process.terminate()


def run_in_slots(
    jobs: Sequence[Job],
    slots: Slots,
    start: Callable[[Job, dict[str, str]], subprocess.Popen],
    finished: Callable[[Job, int], None],
) -> None:
    """Run every job's process (start(job, extra_env) starts it) in slots, in order, and call finished(job,
    returncode) in this thread as each ends. An exception here (Ctrl-C, or one that finished raises) ends the
    processes in flight and starts no more, then propagates.

    Each process is started from a pool thread that lives until every job is done: a child that asks to die
    with its parent (PR_SET_PDEATHSIG) is tied to the thread that started it. A slot takes its next job only
    once finished() has handled its last one, so that a start never sees the previous end uncounted.
    """
    free: queue.SimpleQueue[str] = queue.SimpleQueue()
    for device in slots.devices or ():
        free.put(device)
    children = _Children()
    handled = threading.Semaphore(slots.at_once)  # a slot's permit: back once its job's end is handled

    def run_one(job: Job) -> tuple[Job, int | None]:
        handled.acquire()
        # at most at_once jobs hold devices, each devices_per_job of them: every get below is served
        taken = [free.get() for _ in range(slots.devices_per_job)] if slots.devices else []
        try:
            process = children.start(lambda: start(job, slots.env(taken)))
            if process is None:
                return job, None
            code = process.wait()
            children.forget(process)
            return job, code
        finally:
            for device in taken:
                free.put(device)

    with ThreadPoolExecutor(max_workers=slots.at_once, thread_name_prefix="run") as pool:
        futures = [pool.submit(run_one, job) for job in jobs]
        try:
            for future in as_completed(futures):
                job, code = future.result()
                if code is not None:
                    finished(job, code)
                handled.release()
        except BaseException:
            for future in futures:
                future.cancel()
            children.stop()
            for _ in futures:  # the slots waiting for a permit go on, and start nothing (stopped)
                handled.release()
            raise
