"""Every command the README shows runs here as written, so the documentation cannot drift from what works.

Commands come from the README's bash/console blocks and from inline `tunebench ...` spans. Each one is run
through the real CLI in a temporary folder, with small sizes appended (argparse keeps the last value of a
flag): training commands get a few examples and one step, suites are expanded with --dry-run (test_harness
runs real suites), `plan --validate` checks one method. A command no rule below covers fails the test: a
new README command needs a rule here, or a named test elsewhere that runs it.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tunebench.cli import main

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()

# One optimizer step: one validation pass and one test pass (two steps over one-batch epochs validated twice).
SMALL_TRAIN = ["--max-train-samples", "16", "--max-eval-samples", "16", "--max-length", "32", "--max-steps", "1"]
# Commands run elsewhere, or not runnable on a CPU-only machine: each with where, or why not.
ELSEWHERE = {
    "make demo": "CI's own entry point family; make demo's suite is `tunebench bench quick`, dry-run below",
    "make test": "CI runs it",
    "make gpu-bundle": "downloads wheels; tests/test_gpu_check.py checks the bundle it plans",
    "make report-check": "tests/test_report.py runs the same render check",
    "pip install": "installation; tests/test_package.py installs the built wheel into a fresh venv",
    "ACCELERATE_USE_CPU=1 torchrun": "tests/test_multiprocess.py runs it as written",
    "torchrun --nproc_per_node 8": "needs 8 GPUs",
    "torchrun --nnodes 2": "needs two GPU nodes",
    "bash benchmarks/gpu_check.sh --cpu": "tests/test_gpu_check.py runs its steps on the CPU",
    "bash benchmarks/gpu_check.sh": "runs on the GPU machine",
    "python -m tunebench.benchmarks": "measurement scripts: tests/test_gpu_check.py runs vs_trainer tiny, "
    "tests/test_sharding.py plan_speed tiny, tests/test_golden.py the golden check's comparison",
    "accelerate launch": "needs GPUs: Accelerate's FSDP plugin does not engage on the CPU; tests/test_sharding.py "
    "runs torch's fully_shard directly (memory, save and reload)",
    "tunebench models --prepare": "needs an optional model package that make setup does not install",
    "ray start": "tests/test_ray.py starts the README's head and second node on this machine and runs suites on them",
}
# Inline spans that are whole commands: a verb with an argument, or a verb that takes none.
INLINE = r"`(tunebench (?:(?:train|eval|bench|report|plan|models) [^-`][^`]*|(?:train|plan) --[^`]*|tasks|models))`"


def readme_commands() -> list[str]:
    commands = []
    for lang, body in re.findall(r"```(bash|console)\n(.*?)```", README, re.S):
        for line in body.splitlines():
            line = line.strip()
            if lang == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            line = line.split(" #", 1)[0].strip()
            if line:
                commands.append(line)
    # an inline span with a placeholder (`tunebench eval RUN_DIR`) names a command's form, not a command
    commands += [c for c in re.findall(INLINE, README) if not re.search(r"\b[A-Z][A-Z_]+\b", c)]
    return list(dict.fromkeys(commands))


def covered_elsewhere(command: str) -> str | None:
    return next((why for prefix, why in ELSEWHERE.items() if command.startswith(prefix)), None)


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A fresh folder with the checkout's configs/ and committed results/, where the README's commands run."""
    for folder in ("results", "configs"):
        (tmp_path / folder).symlink_to(REPO / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(command: str) -> None:
    words = shlex.split(command)
    assert words[0] == "tunebench", command
    args, verb = words[1:], words[1]
    if verb == "train":
        args += SMALL_TRAIN + ([] if "--out" in args else ["--out", f"runs/{len(list(Path().glob('runs/*')))}"])
    elif verb == "bench":
        if args[1].endswith(".yaml") and not Path(args[1]).exists():  # "a suite file of your own"
            shutil.copy(REPO / "configs" / "suites" / "quick.yaml", args[1])
        args += [] if "--dry-run" in args else ["--dry-run"]
    elif verb == "plan" and "--validate" in args and "--methods" not in args:
        args += ["--methods", "head"]
    elif verb == "report":
        for folder in args[1 : args.index("-o")]:
            if not Path(folder).exists() and folder.startswith("runs/"):  # `make demo`'s output: take the reference
                shutil.copytree(REPO / "results" / Path(folder).name, folder)
    assert main(args) == 0, command


@pytest.mark.slow
def test_every_readme_command_runs_as_written(workdir: Path) -> None:
    commands = readme_commands()
    ran = []
    for command in commands:
        if covered_elsewhere(command):
            continue
        assert command.startswith("tunebench "), f"README command with no rule in tests/test_readme.py: {command}"
        run(command)
        ran.append(command)
    assert any(c.startswith("tunebench train") for c in ran) and any(c.startswith("tunebench eval") for c in ran)
