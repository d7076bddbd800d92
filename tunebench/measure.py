"""All measurement lives here: tensor-memory breakdown, device memory, step times, environment.

TensorTracker counts live tensor storages by category (weights, buffers, gradients, optimizer
state, activations saved for backward, other). It works on any device, on real and on fake tensors,
which is why the planner (tunebench.planner) reuses it under FakeTensorMode. `profiled_peak_bytes`
is its independent check on the CPU: the allocator's own alloc/free events.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tunebench.files import REPO_ROOT, YAML_READ

# weights: parameter storages exactly; buffers: persistent non-parameter state (module buffers, bitsandbytes
# quantization constants, DDP gradient buckets).
CATEGORIES = ("weights", "buffers", "gradients", "optimizer_state", "activations", "other")
# What a result's measurements depend on in the checkout: a change here makes older results stale
# (tunebench.harness) and a result run over an uncommitted one dirty; results, reports and docs are not in it.
SOURCE_PATHS = ("tunebench", "methods", "benchmarks", "configs", "pyproject.toml")


class TensorTracker(TorchDispatchMode):
    """Live-storage accounting for a model and its optimizer.

    Enter it (`with tracker:`) around the steps to measure. Storages are counted once however
    many tensors view them, and leave the count when they are freed. Each storage has one category:
    parameters are weights; module buffers, bitsandbytes quantization state and DDP's gradient buckets
    (which the reducer holds out of Python's reach: recognised as what collectives reduce in place, or as
    storages made before the tracker and first seen written in place) are buffers; a parameter's `.grad`
    is a gradient from the moment backward accumulates it; optimizer `state` tensors are optimizer state;
    storages saved for backward activations; everything else (inputs, temporaries, logits) other. A storage
    counted as other and claimed later counts as what it became from its creation on, in the peak
    breakdown too. Not seen: temporaries a kernel allocates and frees inside one op (workspaces), such as
    the CPU flash-attention kernel's fp32 buffers under bf16 autocast.
    """

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, cap_bytes: int | None = None
    ):
        super().__init__()
        self.model, self.optimizer, self.cap_bytes = model, optimizer, cap_bytes
        self._live: dict[int, list] = {}  # id(storage) -> [nbytes, category, event at which it was first counted]
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.peak_bytes = 0
        self.peak_breakdown = dict(self.current)
        self.max_by_category = dict(self.current)  # each category's own maximum, whenever it happened
        self._events = 0  # changes of the count so far; _peak_event: the one the peak was at
        self._peak_event = -1
        self._stack: ExitStack | None = None
        for param in model.parameters():
            self._register(param, "weights")
            if param.requires_grad:  # a gradient mid-backward counts as one, not as other until the step ends
                param.register_post_accumulate_grad_hook(self._on_gradient)
        for tensor in [*model.buffers(), *quantization_state(model)]:
            self._register(tensor, "buffers")
        self.classify_state()

    # -- bookkeeping -------------------------------------------------------------------------
    def _register(self, tensor: torch.Tensor, category: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta" and not _is_fake(tensor):
            return
        if tensor.layout != torch.strided:
            for part in _strided_parts(tensor):
                self._register(part, category)
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None:
            # A storage is first seen as an op output ("other") and claimed later; claims never
            # move a storage out of another claim (a weight saved for backward stays a weight).
            if entry[1] == "other" and category != "other":
                self._reclassify(entry, category)
                self._update_peak()
            return
        nbytes = storage.nbytes()
        self._live[key] = [nbytes, category, self._events]
        weakref.finalize(storage, self._release, key)
        self.current[category] += nbytes
        self._update_peak()

    def _reclassify(self, entry: list, category: str) -> None:
        nbytes, old, first = entry
        self.current[old] -= nbytes
        self.current[category] += nbytes
        if first <= self._peak_event:  # it was live at the peak: the peak held it as what it is
            self.peak_breakdown[old] -= nbytes
            self.peak_breakdown[category] += nbytes
        entry[1] = category

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
            self._peak_event = self._events
        self._events += 1
        if self.cap_bytes is not None and total > self.cap_bytes:
            raise torch.OutOfMemoryError(
                f"tensor memory {total / 2**20:.1f} MiB passed the cap of {self.cap_bytes / 2**20:.1f} MiB "
                "(measure.memory_cap)"
            )

    def _on_gradient(self, param: torch.Tensor) -> None:
        if self._stack is not None:  # tracking
            self._register(param.grad, "gradients")

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
        collective = func.namespace == "c10d"
        for leaf in (part for t in tree_leaves(out) if isinstance(t, torch.Tensor) for part in _strided_parts(t)):
            # DDP's gradient buckets: what a collective reduces in place, or state made before the tracker
            # and first seen written in place (the reducer allocates its buckets, and after the first step
            # reallocates them in gradient order, out of Python's reach)
            unseen = id(leaf.untyped_storage()) not in self._live
            persistent = collective or unseen and func._schema.is_mutable
            self._register(leaf, "buffers" if persistent else "other")
        return out

    def __enter__(self) -> TensorTracker:
        self._stack = ExitStack()
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        super().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._stack.close()
        self._stack = None

    def summary(self) -> dict:
        weights = sum(p.untyped_storage().nbytes() for p in _unique_storages(self.model.parameters()))
        return {
            "peak_bytes": self.peak_bytes,
            "at_peak": dict(self.peak_breakdown),
            "weights_bytes": weights,
            "max_by_category": dict(self.max_by_category),
        }


def quantization_state(model: torch.nn.Module) -> list[torch.Tensor]:
    """bitsandbytes' constants kept beside quantized weights, outside any parameter: a 4-bit weight's absmax,
    code and offset and those of its nested (double) quantization; an 8-bit weight's row scales (SCB)."""
    out = []
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            out += [t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor)]
            state = getattr(state, "state2", None)
        if isinstance(getattr(param, "SCB", None), torch.Tensor):
            out.append(param.SCB)
    return out


class ProfiledPeak:
    """The CPU allocator's own peak over a block of code, independent of TensorTracker.

    torch.profiler (profile_memory=True) records every CPU allocation and free with its size; replayed in
    time order they give the peak of bytes allocated inside the block above what was live when it began,
    to which the bytes live at the start (the given tensors' storages, each once) are added. The profiler
    reports no free of a block allocated before it started, so the tensors live at the start must stay live
    through the block (parameters, buffers and optimizer state do).
    """

    def __init__(self, live_at_start: list[torch.Tensor]):
        self.start_bytes = sum(t.untyped_storage().nbytes() for t in _unique_storages(live_at_start))
        self.peak_bytes = self.start_bytes
        self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)

    def __enter__(self) -> ProfiledPeak:
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        events = [e for e in self._profile.profiler.kineto_results.events() if e.name() == "[memory]"]
        running = highest = 0
        for event in sorted(events, key=lambda e: e.start_ns()):  # stable: equal times keep the recorded order
            if event.device_type() == torch._C._autograd.DeviceType.CPU:
                running += event.nbytes()
                highest = max(highest, running)
        self.peak_bytes = self.start_bytes + highest


def _strided_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors holding a tensor's bytes: itself, or a sparse one's indices and values (peft's FRoD and SHiRA
    make sparse tensors, which have no storage of their own)."""
    if tensor.layout == torch.sparse_coo:
        return [tensor._indices(), tensor._values()]
    if tensor.layout == torch.sparse_csr:
        return [tensor.crow_indices(), tensor.col_indices(), tensor.values()]
    return [tensor]


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

    On CUDA the peak statistics are reset when the meter is made, before the model loads, and again at each
    boundary between phases (enter / phase): the training steps (`train`), evaluation (`eval`: validation and
    test; generation and teacher-forced logits can set the run's peak) and everything else (`other`: the model's
    load and build, cached features, checkpoints). Each phase keeps its own peak and the run's peak is the
    highest of them: everything the allocator held during the run.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.laps: list[tuple[int, float]] = []  # (optimizer steps, seconds)
        self.setup_seconds = 0.0  # training work outside the steps: the head method's feature cache over train
        self.model_loaded_bytes: int | None = None
        self._start = 0.0
        self._phase = "other"
        self.cuda_peaks: dict[str, tuple[int, int]] = {}  # phase -> (max allocated, max reserved) bytes
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def enter(self, phase: str) -> str:
        """From here on the CUDA peak counts toward phase (train, eval or other); returns the phase that ended.
        The peak since the last boundary goes to the phase that ends; the statistics restart from what is
        allocated now (the model's weights, at least, count toward every phase)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            allocated, reserved = (
                torch.cuda.max_memory_allocated(self.device),
                torch.cuda.max_memory_reserved(self.device),
            )
            held = self.cuda_peaks.get(self._phase, (0, 0))
            self.cuda_peaks[self._phase] = (max(held[0], allocated), max(held[1], reserved))
            torch.cuda.reset_peak_memory_stats(self.device)
        ended, self._phase = self._phase, phase
        return ended

    @contextmanager
    def phase(self, phase: str) -> Iterator[None]:
        """The block's CUDA peak counts toward phase; the phase before it resumes after."""
        ended = self.enter(phase)
        try:
            yield
        finally:
            self.enter(ended)

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
            self.enter(self._phase)  # closes the current phase's peak
            out["cuda"] = cuda_peak_fields(self.cuda_peaks, self.model_loaded_bytes)
        return out


def cuda_peak_fields(peaks: dict[str, tuple[int, int]], model_loaded_bytes: int) -> dict:
    """memory.cuda of a result from each phase's (max allocated, max reserved): the run's peaks (the highest
    phase's), and the training steps' and evaluation's own (None for a phase that did not happen)."""
    max_allocated = max(allocated for allocated, _ in peaks.values())
    train, evaluation = peaks.get("train", (None, None)), peaks.get("eval", (None, None))
    return {
        "max_allocated_bytes": max_allocated,
        "max_reserved_bytes": max(reserved for _, reserved in peaks.values()),
        "model_loaded_bytes": model_loaded_bytes,
        "max_allocated_above_model_bytes": max_allocated - model_loaded_bytes,
        "train_peak_bytes": train[0],
        "train_peak_reserved_bytes": train[1],
        "eval_peak_bytes": evaluation[0],
        "eval_peak_reserved_bytes": evaluation[1],
    }


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def process_age_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up, imports, ...), from the kernel's record of its
    start (Linux: /proc/self/stat, in clock ticks since boot); None elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


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
        "git": git_state(REPO_ROOT),
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


def git_state(repo: Path | None) -> dict:
    """The checkout's commit, and whether SOURCE_PATHS have uncommitted changes (None: not a checkout)."""
    if repo is None:  # installed from a wheel: no checkout to describe
        return {"commit": None, "dirty": None}
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS)
    return {"commit": commit or None, "dirty": bool(status) if status is not None else None}


def loaded_sources(repo: Path) -> list[str]:
    """The checkout's source files this process has loaded: the project's imported modules and the YAML files it
    read, as paths relative to repo. Code a run never loaded cannot have changed its numbers, so a result is
    judged stale only by these (tunebench.harness.stale_reason)."""
    loaded = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    relative = (p.relative_to(repo).as_posix() for p in loaded | YAML_READ if p.is_relative_to(repo))
    return sorted(p for p in relative if p.split("/")[0] in SOURCE_PATHS)


def end_git_state(repo: Path | None, start: dict) -> dict:
    """The git record a finished run keeps: its start commit, the sources it loaded, and dirty when any of them
    differs from that commit now (an edit, or a new commit that changed them, while the run went on)."""
    if repo is None or not start.get("commit"):
        return start
    sources = loaded_sources(repo)
    changed = _git(repo, "diff", "--name-only", start["commit"], "--", *sources)
    return {**start, "dirty": bool(changed) if changed is not None else None, "sources": sources}


def _git(repo: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


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
