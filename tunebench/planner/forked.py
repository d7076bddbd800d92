"""A process pool for the planner's traces: calls spread over this machine's cores in processes forked from this
one, which share the libraries it has imported (most of a plan's start-up).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import torch


def map_forked(fn, calls: list[dict], chunksize: int = 1, unimportable: tuple[str, ...] = ()) -> list:
    """[fn(**kwargs) for kwargs in calls], spread over this machine's cores: each call runs in a process forked from
    this one, which shares the libraries it has imported (most of a plan's start-up), chunksize consecutive calls
    in the same one; in those processes the packages `unimportable` (not imported here) fail to import, as if
    not installed. Here, one call after another, where there is one core or no fork (not Linux). fn and the
    calls' values must pickle (a module's function)."""
    workers = min(len(calls), len(os.sched_getaffinity(0))) if sys.platform == "linux" else 1
    if workers < 2:
        return [fn(**kwargs) for kwargs in calls]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker, initargs=(unimportable,)) as pool:
        return list(pool.map(_call, itertools.repeat(fn), calls, chunksize=chunksize))


def _worker(unimportable: tuple[str, ...]) -> None:
    """A forked worker's torch runs on one thread: the traces are fake, and the OpenMP pool is not fork-safe."""
    torch.set_num_threads(1)
    for package in unimportable:
        sys.modules.setdefault(package, None)  # `import package` raises ImportError; find_spec finds nothing


def _call(fn, kwargs: dict):
    return fn(**kwargs)
