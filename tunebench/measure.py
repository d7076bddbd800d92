"""All measurement lives here: tensor-memory breakdown, device memory, step times, environment.

TensorTracker counts live tensor storages by category (weights, gradients, optimizer state,
activations saved for backward, other). It works on any device, on real and on fake tensors,
which is why the planner (tunebench.planner) reuses it under FakeTensorMode.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import weakref
from contextlib import ExitStack

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "other")


class TensorTracker(TorchDispatchMode):
    """Live-storage accounting for a model and its optimizer.

    Enter it (`with tracker:`) around the steps to measure. Storages are counted once however
    many tensors view them, and leave the count when they are freed. Each storage has one category:
    parameters are weights, `.grad` storages gradients, optimizer `state` tensors optimizer state,
    storages saved for backward activations, and everything else (inputs, temporaries, logits) other.
    """

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, cap_bytes: int | None = None
    ):
        super().__init__()
        self.model, self.optimizer, self.cap_bytes = model, optimizer, cap_bytes
        self._live: dict[int, list] = {}  # id(storage) -> [nbytes, category]
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.peak_bytes = 0
        self.peak_breakdown = dict(self.current)
        self.max_by_category = dict(self.current)  # each category's own maximum, whenever it happened
        self._stack: ExitStack | None = None
        for param in model.parameters():
            self._register(param, "weights")
        for buffer in model.buffers():
            self._register(buffer, "other")
        self.classify_state()

    # -- bookkeeping -------------------------------------------------------------------------
    def _register(self, tensor: torch.Tensor, category: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta" and not _is_fake(tensor):
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None:
            # A storage is first seen as an op output ("other") and claimed later; claims never
            # move a storage out of another claim (a weight saved for backward stays a weight).
            if entry[1] == "other" and category != "other":
                self.current[entry[1]] -= entry[0]
                self.current[category] += entry[0]
                entry[1] = category
                self._update_peak()
            return
        nbytes = storage.nbytes()
        self._live[key] = [nbytes, category]
        weakref.finalize(storage, self._release, key)
        self.current[category] += nbytes
        self._update_peak()

    def _release(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current[entry[1]] -= entry[0]

    def _update_peak(self) -> None:
        total = sum(self.current.values())
        for category, nbytes in self.current.items():
            if nbytes > self.max_by_category[category]:
                self.max_by_category[category] = nbytes
        if total >= self.peak_bytes:  # >=: a later step with the same peak has every state classified
            self.peak_bytes = total
            self.peak_breakdown = dict(self.current)
        if self.cap_bytes is not None and total > self.cap_bytes:
            raise torch.OutOfMemoryError(
                f"tensor memory {total / 2**20:.1f} MiB passed the cap of {self.cap_bytes / 2**20:.1f} MiB "
                "(measure.memory_cap)"
            )

    def classify_state(self) -> None:
        """Call after backward and after the optimizer step: claims .grad and optimizer state."""
        for param in self.model.parameters():
            if param.grad is not None:
                self._register(param.grad, "gradients")
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.dim() > 0:
                        self._register(value, "optimizer_state")

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._register(tensor, "activations")
        return tensor

    # -- modes -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._register(leaf, "other")
        return out

    def __enter__(self) -> TensorTracker:
        self._stack = ExitStack()
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        super().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._stack.close()

    def summary(self) -> dict:
        weights = sum(p.untyped_storage().nbytes() for p in _unique_storages(self.model.parameters()))
        return {
            "peak_bytes": self.peak_bytes,
            "at_peak": dict(self.peak_breakdown),
            "weights_bytes": weights,
            "max_by_category": dict(self.max_by_category),
        }


def _is_fake(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def _unique_storages(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        key = id(t.untyped_storage())
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


class StepMeter:
    """Training time and device memory, measured without making any step wait for the device.

    Time runs in laps, each closed by lap(n) after n optimizer steps: it waits for the device once, so
    the n steps are timed together (on CUDA one step's wall time is only the time to queue it). The loop
    laps where it reads values back anyway (when it logs) and keeps the clock stopped between lap() and
    resume() (logging, evaluation). Data loading and collation fall inside the laps.

    On CUDA the peak statistics are reset when the meter is made, before the model loads: the maxima
    are absolute, everything the allocator held during the run.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.laps: list[tuple[int, float]] = []  # (optimizer steps, seconds)
        self.setup_seconds = 0.0  # training work outside the steps: the head method's feature cache over train
        self.model_loaded_bytes: int | None = None
        self._start = 0.0
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def model_loaded(self) -> None:
        """Call once the model sits on its device."""
        if self.cuda:
            self.model_loaded_bytes = torch.cuda.memory_allocated(self.device)

    def resume(self) -> None:
        self._start = time.perf_counter()

    def lap(self, steps: int) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.laps.append((steps, time.perf_counter() - self._start))

    @property
    def train_seconds(self) -> float:
        return sum(seconds for _, seconds in self.laps) + self.setup_seconds

    def summary(self) -> dict:
        """Times, the spread of the step time over laps (each lap's mean step time), peak memory."""
        per_step = sorted(seconds / steps for steps, seconds in self.laps if steps)
        out = {
            "train_seconds": self.train_seconds,
            "setup_seconds": self.setup_seconds,
            "step_seconds_median": statistics.median(per_step) if per_step else None,
            "step_seconds_p10": _quantile(per_step, 0.10),
            "step_seconds_p90": _quantile(per_step, 0.90),
            "peak_rss_bytes": peak_rss_bytes(),
            "cuda": None,
        }
        if self.cuda:
            max_allocated = torch.cuda.max_memory_allocated(self.device)
            out["cuda"] = {
                "max_allocated_bytes": max_allocated,
                "max_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                "model_loaded_bytes": self.model_loaded_bytes,
                "max_allocated_above_model_bytes": max_allocated - self.model_loaded_bytes,
            }
        return out


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def environment(world_size: int = 1) -> dict:
    """What a result needs to be compared fairly: versions, commit, CPU, GPU."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "tunebench"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "git": _git_state(),
        "world_size": world_size,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "memory_bytes": props.total_memory,
            "cuda": torch.version.cuda,
            "driver": _nvidia_driver(),
            "count": torch.cuda.device_count(),
        }
    return env


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_state() -> dict:
    from tunebench import REPO_ROOT

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or None, "dirty": bool(status) if status is not None else None}


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
