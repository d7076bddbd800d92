"""GPU evidence in one prepared command: the measurements only a GPU can give, provable on the CPU.

    bash benchmarks/gpu_check.sh OUTDIR          # on the GPU machine, after `make gpu-bundle` here
    bash benchmarks/gpu_check.sh --cpu OUTDIR    # the same steps with tiny shapes on the CPU
    python -m tunebench.benchmarks.gpu_check bundle   # what `make gpu-bundle` runs

Steps (each writes JSON under OUTDIR; a failing step is recorded and the next one runs):
  planner     every method through the real loop on a MiniLM and a Llama-1B-shaped model (random init),
              on full-length batches; the planner's prediction at the same shape against the measured
              peak (CUDA: max_memory_allocated, memory_reserved, mem_get_info; CPU: the tensor tracker).
  throughput  tokens/s, MFU and the Trainer ratio per method on the Llama shape (vs_trainer, alternated).
  suite       the gpu suite's settings on MiniLM x {rotten_tomatoes, banking77} x every method.
  fsdp        FSDP2 through configs/accelerate/fsdp2.yaml (full, lora) and fsdp2-qlora.yaml (qlora), one process:
              train, save, reload.
  sft         causal-LM SFT (rotten_tomatoes_gen's prompt, every example as long as the sequence) for every method
              and the shipped variants, on the Llama shape stored in bf16 and on SmolLM2 where it is installed:
              the planner's prediction against the measured training peak, tokens/s, and the Trainer ratio for
              full, lora and qlora (vs_trainer, alternated).
  multigpu    2 processes: DDP (ddp.yaml) and FSDP2 (fsdp2.yaml: full, lora; fsdp2-qlora.yaml: qlora) SFT on the
              Llama shape, each rank's peak against `plan --gpus 2 --strategy ddp|fsdp`, and device used minus
              reserved (CUDA context + NCCL) per rank; with one GPU, a record that says so.
OUTDIR/summary.json lists every step's status, time, error and files.

The GPU machine has torch, transformers, peft and accelerate and lacks the rest; at most 64 MiB travels
per call. `bundle` prepares .gpu-bundle/call-N/ folders, each under the limit: wheels (cp312 manylinux),
the MiniLM weights in bf16 (restored to fp32 on arrival) and the task data exported as CSV. Each call
carries one folder; gpu_check.sh installs what it carries into /tmp, and the last call runs the check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunebench.errors import UserError
from tunebench.files import CONFIG_DIR, REPO_ROOT
from tunebench.methods import plannable
from tunebench.results import write_json_atomic
from tunebench.units import GiB, MiB

CARRY_LIMIT = 64 * MiB
BUNDLE_DIR = REPO_ROOT / ".gpu-bundle"
WHEEL_MANIFEST = REPO_ROOT / "benchmarks" / "gpu_wheels.json"  # written by `bundle`, read by the test
# What tunebench's training path imports. The image has the rest of it: these are the packages of the 'cuda'
# image's list (/work/.library/device/KINDS.md, read 2026-11-17) that tunebench needs, directly or not.
RUNTIME = ("datasets", "pandas", "scikit-learn", "bitsandbytes", "matplotlib", "scipy")
IMAGE = ("torch", "transformers", "peft", "accelerate", "pandas", "pyarrow", "scikit-learn", "scipy", "matplotlib")
IMAGE += ("joblib", "threadpoolctl", "narwhals", "cloudpickle", "python-dateutil", "xxhash", "fsspec", "pyyaml")
# Dependency markers are read for the machine there: Python 3.12.
TARGET_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64")
TASKS = ("rotten_tomatoes", "banking77")
# Llama 3.2 1B's shape (hidden 2048, 16 layers, GQA 32/8 heads, MLP 8192); the vocabulary is the tokenizer's.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32}
LLAMA_1B |= {"num_key_value_heads": 8, "tie_word_embeddings": True}
LLAMA_TINY = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8}
LLAMA_TINY |= {"num_key_value_heads": 4, "tie_word_embeddings": True}
SFT_TASK = "rotten_tomatoes_gen"  # its prompt template and answer column, over the review data the bundle carries
CPU_VARIANTS = ("dora", "ia3", "prompt-tuning")  # --cpu: one LoRA-family, one scaling and one prompt variant
TRAINER_METHODS = ("full", "lora", "qlora")  # vs_trainer.COMPARABLE


# -- the bundle ----------------------------------------------------------------------------------
def missing_distributions() -> list[str]:
    """RUNTIME and its dependencies, less IMAGE and its dependencies: from the installed packages' metadata."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def closure(names) -> set[str]:
        seen, todo = set(), list(names)
        while todo:
            name = canonicalize_name(todo.pop())
            if name in seen:
                continue
            seen.add(name)
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:
                continue
            for text in requires:
                req = Requirement(text)
                if not req.marker or req.marker.evaluate(TARGET_MARKERS):
                    todo.append(req.name)
        return seen

    return sorted(closure(RUNTIME) - closure(IMAGE))


def download_wheels(folder: Path) -> list[dict]:
    """The pinned versions (constraints.txt) of missing_distributions(), for CPython 3.12 on x86-64 Linux."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in missing_distributions():
        pin = pins.get(name) or version(name)
        before = set(folder.iterdir())
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
             "3.12", "--implementation", "cp", *platforms, "-d", str(folder), f"{name}=={pin}"],
            check=True,
        )  # fmt: skip
        new = sorted(set(folder.iterdir()) - before) or sorted(folder.glob(f"{name.replace('-', '_')}-{pin}-*.whl"))
        rows += [{"name": name, "version": pin, "file": w.name, "bytes": w.stat().st_size} for w in new]
    return rows


def export_minilm(folder: Path) -> None:
    """MiniLM in bf16 (half the fp32 bytes) with its tokenizer and sentence-transformers pooling files."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tunebench.models.hub import resolve_model

    source = Path(resolve_model("minilm"))
    AutoModel.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    for extra in ("modules.json", "1_Pooling"):
        if (source / extra).is_dir():
            shutil.copytree(source / extra, folder / extra)
        elif (source / extra).exists():
            shutil.copy(source / extra, folder / extra)


def restore_fp32(bf16_folder: Path, folder: Path) -> Path:
    """The bundled bf16 weights as an fp32 folder: the loop trains fp32 master weights, as on the CPU."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if not (folder / "config.json").exists():
        AutoModel.from_pretrained(bf16_folder, dtype=torch.float32).save_pretrained(folder)
        AutoTokenizer.from_pretrained(bf16_folder).save_pretrained(folder)
        for extra in ("modules.json", "1_Pooling"):
            source = bf16_folder / extra
            if source.exists():
                (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / extra)
    return folder


def export_task(name: str, folder: Path) -> Path:
    """The task's train/validation/test splits as CSV files plus a task YAML: no data package needed there."""
    import yaml

    from tunebench.config import build_config
    from tunebench.data.tasks import get_task, load_task

    task = load_task(get_task(name), build_config("full", name)["data"])
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in task.splits.items():
        data.to_pandas().to_csv(folder / f"{split}.csv", index=False)
    spec = {
        "description": f"{name}, exported by gpu_check bundle",
        "source": {"files": {s: f"{s}.csv" for s in task.splits}},
        "label_names": task.label_names,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree_bytes() -> int:
    """The working tree that travels with every call (tracked and untracked, not ignored): part of each 64 MiB."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum((REPO_ROOT / name).stat().st_size for name in listed.split("\0") if (REPO_ROOT / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def pack_calls(items: list[tuple[str, int]], limit: int = CARRY_LIMIT) -> list[list[str]]:
    """First-fit decreasing: the fewest calls, each carrying at most `limit` bytes."""
    calls: list[tuple[int, list[str]]] = []
    for name, size in sorted(items, key=lambda item: -item[1]):
        if size > limit:
            raise ValueError(f"{name} is {size / MiB:.1f} MiB, over the {limit / MiB:.0f} MiB a call carries")
        for i, (used, names) in enumerate(calls):
            if used + size <= limit:
                calls[i] = (used + size, [*names, name])
                break
        else:
            calls.append((size, [name]))
    return [names for _, names in calls]


def build_bundle(out: Path, wheels: bool = True) -> dict:
    """out/call-N/{wheels,minilm-bf16,data}: each call's folder plus the working tree under CARRY_LIMIT."""
    shutil.rmtree(out, ignore_errors=True)
    staging = out / "staging"
    export_minilm(staging / "minilm-bf16")
    for task in TASKS:
        export_task(task, staging / "data" / task)
    items = {"minilm-bf16": folder_bytes(staging / "minilm-bf16"), "data": folder_bytes(staging / "data")}
    if wheels:
        rows = download_wheels(staging / "wheels")
        write_json_atomic(WHEEL_MANIFEST, {"python": "cp312", "platforms": list(WHEEL_PLATFORMS), "wheels": rows})
    else:  # the sizes the last download recorded; the folders get no wheels
        rows = json.loads(WHEEL_MANIFEST.read_text())["wheels"]
    items |= {f"wheels/{row['file']}": row["bytes"] for row in rows}
    plan = []
    limit = CARRY_LIMIT - tree_bytes()
    # The call that carries the model and data runs the check, so it goes last: should the machine go cold
    # after an earlier call, only what that call installed (e.g. bitsandbytes: qlora) is missing, and recorded.
    calls = sorted(pack_calls(list(items.items()), limit), key=lambda names: "minilm-bf16" in names)
    for n, names in enumerate(calls, 1):
        for name in names:
            if (staging / name).exists():
                (out / f"call-{n}" / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).replace(out / f"call-{n}" / name)
        plan.append(
            {"call": n, "carry": f".gpu-bundle/call-{n}", "bytes": sum(items[i] for i in names), "items": names}
        )
    shutil.rmtree(staging)
    summary = {"limit_bytes": limit, "working_tree_bytes": CARRY_LIMIT - limit, "calls": plan}
    summary["total_bytes"] = sum(c["bytes"] for c in plan)
    write_json_atomic(out / "plan.json", summary)
    return summary


# -- the steps -----------------------------------------------------------------------------------
class Setting:
    """What differs between the GPU and the --cpu run: shapes, precision, where models and data come from."""

    def __init__(self, cpu: bool, out: Path, bundle: Path, methods: list[str], variants: list[str] | None = None):
        import torch

        self.cpu, self.out, self.bundle = cpu, out, bundle
        self.cuda = not cpu and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.precision = "bf16-mixed" if self.cuda else "fp32"
        self.batch, self.seq, self.steps = (8, 512, 4) if self.cuda else (4, 32, 2)
        self.methods = methods
        self.variants = variants  # the SFT step's; None: every shipped one (--cpu: CPU_VARIANTS)
        self.pairs = 3 if self.cuda else 1
        self.train_examples = self.batch * self.steps * (4 if self.cuda else 1)  # per throughput run
        self.sft_seq = 512 if self.cuda else 64
        self.work = out / "work"

    def carried(self, name: str) -> Path | None:
        """bundle/call-N/name, from whichever call carried it; None without a bundle (the --cpu run here)."""
        return next(iter(sorted(self.bundle.glob(f"call-*/{name}"))), None)

    def task(self, name: str) -> str:
        exported = self.carried(f"data/{name}/{name}.yaml")
        return str(exported) if exported else name

    def minilm(self) -> str:
        from tunebench.models.hub import resolve_model

        bf16 = self.carried("minilm-bf16")
        return str(restore_fp32(bf16, self.work / "minilm")) if bf16 else resolve_model("minilm")

    def llama(self) -> str:
        """A random-init Llama of the 1B shape (GPU) or a tiny one (CPU), with MiniLM's tokenizer."""
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        folder = self.work / ("llama-1b-shape" if self.cuda else "llama-tiny")
        if not (folder / "config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(self.minilm())
            shape = LLAMA_1B if self.cuda else LLAMA_TINY
            config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
            with torch.device(self.device):  # initialising 1.2B parameters on the CPU takes minutes
                model = LlamaForCausalLM(config)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            del model
        return str(folder)

    def llama_bf16(self) -> str:
        """The Llama shape's weights stored in bf16, as bf16 checkpoints are (the rule's fp32 masters upcast them)."""
        import torch
        from transformers import AutoTokenizer, LlamaForCausalLM

        folder = self.work / "llama-bf16"
        if not (folder / "config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(self.llama())
            tokenizer.eos_token = tokenizer.eos_token or tokenizer.sep_token  # MiniLM's ends a text with [SEP]
            model = LlamaForCausalLM.from_pretrained(self.llama(), dtype=torch.bfloat16)
            model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return str(folder)

    def sft_task(self, model: str) -> str:
        """Reviews under rotten_tomatoes_gen's prompt, each cut by the model's tokenizer so that prompt + answer + eos
        fill the sequence (sft_seq), as the planner traces it: a task YAML over a CSV of the cut texts."""
        import pandas as pd
        import yaml

        from tunebench.config import build_config
        from tunebench.data.generate import render_prompt
        from tunebench.data.tasks import get_task, load_task
        from tunebench.files import read_yaml
        from tunebench.models.hub import load_config, load_tokenizer

        tokenizer = load_tokenizer(model, load_config(model).model_type)
        folder = self.work / f"sft-{Path(model).name}"
        spec = read_yaml(CONFIG_DIR / "tasks" / f"{SFT_TASK}.yaml")
        template = spec["config"]["data"]["prompt_template"]
        source = load_task(get_task(self.task("rotten_tomatoes")), build_config("full")["data"]).splits["train"]
        names, texts, labels = spec["label_names"], source["text"], source["label"]
        rows, per_text = self.train_examples + 40, math.ceil(self.sft_seq / 8)

        def rendered(text: str) -> int:  # tokens of the prompt as the loop renders it (chat template when it has one)
            prompt = render_prompt([{"role": "user", "content": template.format(text=text)}], tokenizer, True)
            return len(tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"])

        out = []
        for i in range(rows):
            joined = " ".join(texts[(i * per_text + k) % len(texts)] for k in range(per_text))
            answer = names[labels[i * per_text % len(texts)]]
            room = self.sft_seq - rendered("") - len(tokenizer(answer, add_special_tokens=False)["input_ids"]) - 1
            ids = tokenizer(joined, add_special_tokens=False)["input_ids"][:room]
            out.append({"text": tokenizer.decode(ids), "label": labels[i * per_text % len(texts)]})
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(out).to_csv(folder / "train.csv", index=False)
        task = {
            "description": f"{SFT_TASK}'s prompt over reviews cut to {self.sft_seq} tokens (gpu_check sft)",
            "source": {"files": {"train": "train.csv"}},
            "label_names": names,
            "make_splits": {"validation": 0.05, "test": 0.05, "seed": 0},
            # the cut texts re-tokenize to within a token or two of the sequence: drop the few that overflow
            "config": {"data": spec["config"]["data"] | {"max_length": self.sft_seq, "too_long": "drop"}},
        }
        (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        return str(folder / "task.yaml")

    def long_text_task(self) -> str:
        """Real reviews joined until each text fills the sequence: every batch is full-length, as the planner traces."""
        import pandas as pd

        from tunebench.config import build_config
        from tunebench.data.tasks import get_task, load_task

        path = self.work / f"long-{self.seq}.csv"
        if not path.exists():
            source = load_task(get_task(self.task("rotten_tomatoes")), build_config("full")["data"]).splits["train"]
            per_text = math.ceil(self.seq / 8)  # a review is > 8 tokens; truncation cuts the rest
            rows = math.ceil(self.train_examples / 0.8) + 10  # the file's 10% validation and test splits
            texts, labels = source["text"], source["label"]
            # past the end of the reviews, start again: the texts only have to be real and long enough
            joined = [" ".join(texts[(i * per_text + k) % len(texts)] for k in range(per_text)) for i in range(rows)]
            first = [labels[i * per_text % len(texts)] for i in range(rows)]
            self.work.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"text": joined, "label": first}).to_csv(path, index=False)
        return str(path)

    def overrides(self, **train) -> dict:
        return {
            "data": {"max_length": self.seq, "max_eval_samples": 2 * self.batch, "group_by_length": True},
            "train": {"batch_size": self.batch, "eval_batch_size": 2 * self.batch, "trackers": [], "save": "none",
                      "precision": self.precision, "adamw": "fused", **train},
        }  # fmt: skip


def cuda_state() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {
        "mem_get_info_free_bytes": free,
        "mem_get_info_total_bytes": total,
        "device_used_bytes": total - free,
        "memory_reserved_bytes": torch.cuda.memory_reserved(),
        "memory_allocated_bytes": torch.cuda.memory_allocated(),
        "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
        "max_memory_reserved_bytes": torch.cuda.max_memory_reserved(),
        "device_name": torch.cuda.get_device_name(),
    }


PHASE_PEAKS = ("train_peak_bytes", "train_peak_reserved_bytes", "eval_peak_bytes", "eval_peak_reserved_bytes")


def step_planner(s: Setting) -> dict:
    """Planner prediction against each method's measured peak on full-length batches through the loop."""
    import torch

    from tunebench.config import build_config
    from tunebench.planner.inputs import load_gpus
    from tunebench.planner.validate import validate_results
    from tunebench.training.run import train

    _, device_defaults = load_gpus()
    folder = s.out / "planner"
    rows = []
    for label, model in (("minilm", s.minilm()), ("llama-1b-shape" if s.cuda else "llama-tiny", s.llama())):
        for method in s.methods:
            run_dir = folder / f"{label}-{method}"
            overrides = s.overrides(max_steps=s.steps) | {"model": model}
            cfg = build_config(method, s.long_text_task(), overrides=overrides)
            if s.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                result = train(cfg, run_dir)
            except Exception as exc:  # one method's failure (e.g. qlora without bitsandbytes) is recorded
                rows.append({"model": label, "method": method, "status": "failed", "error": f"{exc!r}"[:2000]})
                continue
            after = cuda_state() if s.cuda else None
            row = {"model": label, "method": method, "status": result["status"], "result": str(run_dir)}
            predicted = validate_results(str(run_dir))
            if predicted:
                # validate_results compares with the result's own peak (on a GPU: CUDA max allocated in the
                # training steps, memory.cuda.train_peak_bytes)
                row |= {k: predicted[0][k] for k in ("predicted_bytes", "error_percent", "measured_by")}
                row["measured_bytes"] = predicted[0]["tracker_bytes"]
            if after:
                cuda = (result["memory"] or {}).get("cuda") or {}
                allocated, reserved = cuda.get("max_allocated_bytes"), cuda.get("max_reserved_bytes")
                # the whole run's peaks, then the training steps' and evaluation's own (cuda_state's max_* cover
                # only the run's last phase: the meter resets the peak statistics between phases)
                row["cuda"] = after | {"result_max_allocated_bytes": allocated, "result_max_reserved_bytes": reserved}
                row["cuda"] |= {f"result_{k}": cuda.get(k) for k in PHASE_PEAKS}
                row["eval_peak_over_train_peak"] = (
                    cuda["eval_peak_bytes"] / cuda["train_peak_bytes"]
                    if cuda.get("train_peak_bytes") and cuda.get("eval_peak_bytes")
                    else None
                )
                # the two constants gpus.yaml assumes, as this run measured them
                row["allocator_margin"] = reserved / allocated - 1 if allocated and reserved else None
                row["context_bytes"] = after["device_used_bytes"] - after["memory_reserved_bytes"]
                if "predicted_bytes" in row:
                    row["predicted_device_bytes"] = (
                        row["predicted_bytes"] * (1 + device_defaults["allocator_margin"])
                        + device_defaults["context_gib"] * GiB
                    )
                    row["measured_device_bytes"] = row["context_bytes"] + (reserved or 0)
            rows.append(row)
    out = {
        "shape": {"batch_size": s.batch, "seq_len": s.seq, "precision": s.precision, "steps": s.steps},
        "measured_by": "torch.cuda.max_memory_allocated" if s.cuda else "TensorTracker (CPU: no CUDA figures)",
        "gpus_yaml_defaults": device_defaults,
        "rows": rows,
    }
    write_json_atomic(folder / "planner.json", out)
    return out


def step_throughput(s: Setting) -> dict:
    """The loop's tokens/s and MFU per method on the Llama shape, and the Trainer ratio, alternated."""
    from tunebench.benchmarks.vs_trainer import COMPARABLE, compare
    from tunebench.methods import default_options
    from tunebench.planner.inputs import load_gpus, match_gpu, resolve_spec
    from tunebench.planner.tracing import trace_step

    model = s.llama()
    spec = resolve_spec(model)
    gpus, _ = load_gpus()
    entry = match_gpu(gpus, cuda_state()["device_name"]) if s.cuda else None
    peak = entry["bf16_tflops"] * 1e12 if entry else None
    rows = []
    for method in [m for m in s.methods if m in COMPARABLE and (s.cuda or m != "qlora")]:
        step = trace_step(
            spec.config,
            method,
            batch_size=s.batch,
            seq_len=s.seq,
            num_labels=2,
            precision=s.precision,
            options=default_options(method),
            pooling=spec.pooling,
            count_flops=True,
        )
        flops_per_token = step.flops / (s.batch * s.seq)
        overrides = s.overrides() | {"model": model, "task": s.long_text_task()}
        overrides["data"]["max_train_samples"] = s.train_examples
        try:
            row = compare(method, s.pairs, overrides)
        except Exception as exc:  # one method's failure (e.g. qlora without bitsandbytes) is recorded, not fatal
            rows.append({"method": method, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            continue
        for side in ("tunebench", "trainer"):
            row[f"{side}_mfu"] = [r["tokens_per_second"] * flops_per_token / peak for r in row[side]] if peak else None
        row |= {"status": "ok", "flops_per_token": flops_per_token, "peak_flops": peak, "gpu_entry": entry}
        rows.append(row)
    out = {"model": "llama-1b-shape" if s.cuda else "llama-tiny", "rows": rows}
    write_json_atomic(s.out / "throughput.json", out)
    return out


def step_suite(s: Setting) -> dict:
    """The gpu suite's settings (bf16, batch 64, length 128) on MiniLM and both tasks, every method, each at its
    default learning rate (one rule for all; the sweep is the full gpu suite's)."""
    import yaml

    from tunebench.harness import run_suite

    suite = yaml.safe_load((CONFIG_DIR / "suites" / "gpu.yaml").read_text())
    suite["name"] = "gpu-minilm"
    suite["description"] = "the gpu suite's settings on MiniLM (what one carried call allows), default learning rates"
    suite.pop("methods", None)  # the learning-rate sweep triples the runs: the full gpu suite keeps it
    suite["grid"] |= {"model": [s.minilm()], "task": [s.task(t) for t in TASKS], "method": s.methods}
    if not s.cuda:  # tiny, CPU-sized and one task: the same code path, not the same figures
        suite["grid"]["task"] = [s.task(TASKS[0])]
        suite["config"]["train"] |= {"batch_size": 8, "eval_batch_size": 32, "precision": "fp32", "max_steps": 2}
        suite["config"]["data"] = {"max_length": 32, "max_train_samples": 32, "max_eval_samples": 32}
    path = s.work / "suite.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    suite_dir = s.out / "suite"
    code = run_suite(str(path), str(suite_dir))
    out = {"suite": str(path), "exit_code": code, "results": str(suite_dir)}
    # the report alone, and side by side with the committed CPU results of the same model (results/quick)
    reports = {"suite-report": [suite_dir], "suite-vs-cpu-report": [REPO_ROOT / "results" / "quick", suite_dir]}
    try:
        import matplotlib  # noqa: F401 -- the GPU image lacks it: the reports are made here, after fetching
    except ImportError:
        out["reports"] = {
            name: f"skipped: no matplotlib; run `tunebench report {' '.join(map(str, folders))} -o {name}` here"
            for name, folders in reports.items()
        }
    else:
        out["reports"] = {}
        for name, folders in reports.items():
            command = [sys.executable, "-m", "tunebench.cli", "report", *map(str, folders), "-o", str(s.out / name)]
            made = subprocess.run(command, capture_output=True, text=True)
            out["reports"][name] = {"exit_code": made.returncode, "stderr_tail": made.stderr[-1000:]}
    write_json_atomic(s.out / "suite.json", out)
    if code:
        raise RuntimeError(f"the suite exited {code}; see {s.out / 'suite'}")
    return out


def step_fsdp(s: Setting) -> dict:
    """FSDP2 through the shipped Accelerate configs, one process: train, save, reload (tunebench eval); full and
    lora through fsdp2.yaml, qlora through fsdp2-qlora.yaml (its 4-bit weights stored in fp32 to shard)."""
    if not s.cuda:
        return {"status": "skipped", "why": "skipped: needs CUDA (Accelerate's FSDP plugin does not engage on the CPU)"}
    rows = []
    for method, config in (("full", "fsdp2.yaml"), ("lora", "fsdp2.yaml"), ("qlora", "fsdp2-qlora.yaml")):
        run_dir = s.out / "fsdp" / method
        train_cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(CONFIG_DIR / "accelerate" / config), "--num_processes", "1",
            "-m", "tunebench.cli", "train", "--method", method, "--model", s.minilm(),
            "--task", s.task("rotten_tomatoes"), "--max-train-samples", "256", "--max-eval-samples", "128",
            "--set", "train.trackers=[]", "--set", "train.save=best", "--out", str(run_dir),
        ]  # fmt: skip
        trained = subprocess.run(train_cmd, capture_output=True, text=True)
        evaluated = subprocess.run(
            [sys.executable, "-m", "tunebench.cli", "eval", str(run_dir)], capture_output=True, text=True
        )
        result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
        rows.append(
            {
                "method": method,
                "train_exit_code": trained.returncode,
                "train_stderr_tail": trained.stderr[-2000:],
                "status": result.get("status"),
                "test_accuracy": result.get("test_accuracy"),
                "eval_exit_code": evaluated.returncode,
                "reloaded": evaluated.stdout[-2000:],
            }
        )
    write_json_atomic(s.out / "fsdp.json", {"rows": rows})
    if any(r["train_exit_code"] or r["eval_exit_code"] for r in rows):
        raise RuntimeError("an FSDP run or its reload failed; see fsdp.json")
    return {"rows": rows}


def sft_models(s: Setting) -> list[tuple[str, str]]:
    """(label, folder) of the SFT models: the Llama shape in bf16, and on a GPU SmolLM2 where it is installed (the
    bundle cannot carry it: 270 MB in bf16; on the CPU the llm suite measures its SFT, the tiny Llama the code path)."""
    from tunebench.models.hub import resolve_model

    models = [("llama-1b-shape-bf16" if s.cuda else "llama-tiny-bf16", s.llama_bf16())]
    if s.cuda:
        try:
            models.append(("smollm2-135m", resolve_model("smollm2-135m")))
        except UserError:  # not installed
            pass
    return models


def sft_row(s: Setting, label: str, model: str, method: str, task: str) -> dict:
    """One SFT run through the loop: its measured training peak against the planner's step at the same shape."""
    import torch

    from tunebench.config import build_config
    from tunebench.methods import default_options
    from tunebench.models.precision import dtype_name
    from tunebench.planner.inputs import resolve_spec
    from tunebench.planner.tracing import trace_step
    from tunebench.training.run import train

    overrides = s.overrides(max_steps=s.steps) | {"model": model}
    overrides["data"] |= {"max_length": s.sft_seq}
    cfg = build_config(method, task, overrides=overrides)
    if s.cuda:
        torch.cuda.empty_cache()
    row = {"model": label, "method": method}
    try:
        result = train(cfg, s.out / "sft" / f"{label}-{method}")
        spec = resolve_spec(model)
        step = trace_step(
            spec.config, method, batch_size=s.batch, seq_len=s.sft_seq, num_labels=None, precision=s.precision,
            options=default_options(method), pooling=spec.pooling, adamw="fused", task_type="generate",
        )  # fmt: skip
    except Exception as exc:  # one method's failure (e.g. qlora without bitsandbytes) is recorded
        return row | {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    measured = result["peak_memory_bytes"]
    return row | {
        "status": result["status"],
        "checkpoint_dtype": dtype_name(getattr(spec.config, "dtype", None)),
        "precision": result.get("precision"),
        "predicted_bytes": step.peak_bytes,
        "measured_bytes": measured,
        "measured_by": result["peak_memory_source"],
        "error_percent": 100 * (step.peak_bytes - measured) / measured if measured else None,
        "tokens_per_second": result.get("tokens_per_second"),
        "too_long_dropped": result.get("too_long_dropped"),
    }


def step_sft(s: Setting) -> dict:
    """Causal-LM SFT: every method and shipped variant (--cpu: CPU_VARIANTS) on each SFT model, prediction against
    the measured training peak; then tokens/s against Trainer for full, lora and qlora on the Llama shape."""
    from tunebench.benchmarks.vs_trainer import compare
    from tunebench.methods import variants

    names = s.variants if s.variants is not None else list(variants()) if s.cuda else list(CPU_VARIANTS)
    rows = []
    for label, model in sft_models(s):
        task = s.sft_task(model)
        rows += [sft_row(s, label, model, method, task) for method in [*s.methods, *names]]
    label, model = sft_models(s)[0]
    trainer = []
    for method in [m for m in s.methods if m in TRAINER_METHODS and (s.cuda or m != "qlora")]:
        overrides = s.overrides() | {"model": model, "task": s.sft_task(model)}
        overrides["data"] |= {"max_length": s.sft_seq, "max_train_samples": s.train_examples}
        try:
            trainer.append({"model": label, **compare(method, s.pairs, overrides)})
        except Exception as exc:  # recorded, not fatal
            trainer.append({"model": label, "method": method, "status": "failed", "error": f"{exc!r}"[:2000]})
    out = {"shape": {"batch_size": s.batch, "seq_len": s.sft_seq, "precision": s.precision, "steps": s.steps}}
    out |= {"rows": rows, "vs_trainer": trainer}
    write_json_atomic(s.out / "sft.json", out)
    if any(r["status"] != "ok" for r in rows):
        raise RuntimeError("an SFT run failed; see sft.json")
    return out


def step_multigpu(s: Setting) -> dict:
    """Two processes on two GPUs: DDP and FSDP2 SFT on the Llama shape through the shipped Accelerate configs, each
    rank's peak against the plan for 2 GPUs; with fewer GPUs (or --cpu), a record saying so."""
    import torch

    gpus = torch.cuda.device_count() if s.cuda else 0
    if gpus < 2:
        why = "needs CUDA" if not s.cuda else f"needs 2 GPUs; this machine has {gpus}"
        return {"status": "skipped", "why": f"skipped: {why} (DDP and FSDP2 over NCCL, 2 processes)", "gpus": gpus}
    model, task = s.llama_bf16(), s.sft_task(s.llama_bf16())
    rows = []
    runs = [("ddp", "ddp.yaml", m) for m in ("full", "lora", "qlora")]
    runs += [("fsdp", "fsdp2-qlora.yaml" if m == "qlora" else "fsdp2.yaml", m) for m in ("full", "lora", "qlora")]
    for strategy, config, method in runs:
        rows.append(multigpu_row(s, strategy, config, method, model, task))
    # NCCL's own buffers, outside PyTorch's allocator: device used minus reserved, before and after a collective
    nccl = s.out / "multigpu" / "nccl"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    done = subprocess.run(
        [*launch, "tunebench.benchmarks.gpu_check", "nccl", str(nccl)], capture_output=True, text=True
    )
    context = [json.loads(p.read_text()) for p in sorted(nccl.glob("rank-*.json"))]
    out = {"gpus": gpus, "rows": rows, "nccl": context, "nccl_exit_code": done.returncode}
    write_json_atomic(s.out / "multigpu.json", out)
    if any(r.get("status") != "ok" for r in rows):
        raise RuntimeError("a 2-GPU run failed; see multigpu.json")
    return {"rows": rows}


def multigpu_row(s: Setting, strategy: str, config: str, method: str, model: str, task: str) -> dict:
    """One 2-process run under `accelerate launch` and the plan of the same run on 2 GPUs."""
    run_dir = s.out / "multigpu" / f"{strategy}-{method}"
    common = ["--method", method, "--model", model, "--task", task, "--batch-size", str(s.batch)]
    common += ["--max-length", str(s.sft_seq), "--set", f"train.precision={s.precision}"]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / "accelerate" / config),
        "--num_processes", "2", "-m", "tunebench.cli", "train", *common, "--max-train-samples", str(4 * s.batch),
        "--max-eval-samples", str(2 * s.batch), "--set", "train.trackers=[]", "--set", "train.save=none",
        "--set", f"train.max_steps={s.steps}", "--out", str(run_dir),
    ]  # fmt: skip
    trained = subprocess.run(launch, capture_output=True, text=True)
    plan = [sys.executable, "-m", "tunebench.cli", "plan", *common, "--gpus", "2", "--strategy", strategy, "--json"]
    planned = subprocess.run(plan, capture_output=True, text=True)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    row = {"strategy": strategy, "method": method, "config": config, "status": result.get("status")}
    row |= {"train_exit_code": trained.returncode, "train_stderr_tail": trained.stderr[-2000:]}
    row["per_rank"] = (result.get("memory") or {}).get("per_rank")
    row["tokens_per_second"] = result.get("tokens_per_second")  # every rank's tokens
    if planned.returncode == 0:
        [plan_row] = json.loads(planned.stdout)["methods"]
        row |= {
            "predicted_tensor_bytes": plan_row["tensor_peak_bytes"],
            "predicted_device_bytes": plan_row["device_bytes"],
        }
    else:
        row["plan_error"] = planned.stderr[-2000:]
    return row


STEPS = {
    "planner": step_planner,
    "throughput": step_throughput,
    "suite": step_suite,
    "fsdp": step_fsdp,
    "sft": step_sft,
    "multigpu": step_multigpu,
}


def nccl_context(out: Path) -> None:
    """Under torchrun on 2 GPUs: each rank's device bytes outside PyTorch's allocator (mem_get_info's used minus
    memory_reserved) before the NCCL process group first communicates and after, to OUT/rank-R.json."""
    import torch
    import torch.distributed as dist

    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    torch.ones(1, device="cuda") @ torch.ones(1, device="cuda")  # the context and cuBLAS first

    def outside() -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free - torch.cuda.memory_reserved()

    before = outside()
    dist.init_process_group("nccl")
    for size in (1, 2**20, 2**26):  # small and large messages: NCCL sets up its channels and buffers lazily
        tensor = torch.ones(size, device="cuda")
        dist.all_reduce(tensor)
        dist.all_gather_into_tensor(torch.empty(2 * size, device="cuda"), tensor)
        dist.reduce_scatter_tensor(
            torch.empty(size // 2 or 1, device="cuda"), torch.ones(2 * (size // 2 or 1), device="cuda")
        )
    torch.cuda.synchronize()
    row = {
        "rank": dist.get_rank(),
        "outside_allocator_before_bytes": before,
        "outside_allocator_after_bytes": outside(),
    }
    row["nccl_bytes"] = row["outside_allocator_after_bytes"] - before
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"rank-{row['rank']}.json", row)
    dist.destroy_process_group()


@contextmanager
def on_cpu(cpu: bool) -> Iterator[None]:
    """--cpu on any machine: Accelerate's process state is made anew with its CPU flag, and the processes this
    starts see no GPU; both as they were afterwards."""
    from accelerate.state import AcceleratorState

    if not cpu:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("ACCELERATE_USE_CPU", "CUDA_VISIBLE_DEVICES")}
    os.environ |= {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    AcceleratorState._reset_state(reset_partial_state=True)  # read the flag again (one process: no group to keep)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        AcceleratorState._reset_state(reset_partial_state=True)


def run_step(name: str, setting: Setting) -> dict:
    """One step, timed; its failure is recorded, not raised: it must not cost the others their minutes."""
    start = time.perf_counter()
    record = {"step": name, "status": "ok", "error": None}
    try:
        record["output"] = STEPS[name](setting)
        if record["output"].get("status") == "skipped":
            record.update(status="skipped", error=record["output"]["why"])
    except Exception as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    record["seconds"] = time.perf_counter() - start
    print(f"[gpu_check] {name}: {record['status']} in {record['seconds']:.0f} s {record['error'] or ''}", flush=True)
    return record


def run_check(
    out: Path,
    cpu: bool,
    steps: list[str],
    bundle: Path,
    methods: list[str] | None = None,
    variants: list[str] | None = None,
) -> dict:
    from tunebench.measure import environment

    setting = Setting(cpu, out, bundle, list(methods or plannable()), variants)
    records = []
    with on_cpu(cpu):
        for name in steps:
            records.append(run_step(name, setting))
    summary = {
        "mode": "cuda" if setting.cuda else "cpu",
        "command": f"bash benchmarks/gpu_check.sh {'--cpu ' if cpu else ''}{out}",
        "steps": [{k: v for k, v in r.items() if k != "output"} for r in records],
        "environment": environment(),
    }
    write_json_atomic(out / "summary.json", summary)
    shutil.rmtree(setting.work, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the check, writing JSON under OUTDIR")
    run.add_argument("out")
    run.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU, end to end")
    run.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    run.add_argument("--methods", nargs="+", default=plannable(), choices=plannable())
    run.add_argument("--variants", nargs="*", help="the SFT step's variants (default: every shipped one; --cpu: a few)")
    run.add_argument("--bundle", default="/tmp/tunebench-bundle", help="where gpu_check.sh put the carried files")
    nccl = sub.add_parser("nccl", help="under torchrun on 2 GPUs: NCCL's buffers per rank (the multigpu step)")
    nccl.add_argument("out")
    bundle = sub.add_parser("bundle", help="prepare .gpu-bundle/call-N/, each under 64 MiB")
    bundle.add_argument("--out", default=str(BUNDLE_DIR))
    bundle.add_argument("--no-wheels", action="store_true", help="use the sizes in benchmarks/gpu_wheels.json")
    args = parser.parse_args(argv)
    if args.command == "nccl":
        nccl_context(Path(args.out))
        return 0
    if args.command == "bundle":
        plan = build_bundle(Path(args.out), wheels=not args.no_wheels)
        for call in plan["calls"]:
            items = ", ".join(call["items"])
            print(f"call {call['call']}: carry {call['carry']} ({call['bytes'] / MiB:.1f} MiB): {items}")
        calls = len(plan["calls"])
        print(f"total {plan['total_bytes'] / MiB:.1f} MiB in {calls} call(s) of <= 64 MiB with the working tree")
        return 0
    summary = run_check(Path(args.out), args.cpu, args.steps, Path(args.bundle), args.methods, args.variants)
    return 0 if all(s["status"] != "failed" for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
