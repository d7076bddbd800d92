"""Installed like any Python tool: the wheel in a fresh virtual environment, used from another folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_the_wheel_works_from_any_folder_without_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    # Build from a copy of the sources: setuptools' in-tree build/ folder may hold files deleted since.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("tunebench", "methods", "benchmarks", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheels", src], tmp_path, env)
    (wheel,) = (tmp_path / "wheels").glob("tunebench-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    run([*pip, "--python", python, "install", "--no-deps", wheel], tmp_path, env)
    # The dependencies come from this environment's site-packages, added as plain paths: a .pth file in a folder
    # that a .pth line adds is not processed, so the checkout's editable-install finder stays off.
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env).stdout.strip()
    )
    (site / "dependencies.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run(
        [
            python,
            "-c",
            "import json, tunebench, tunebench.methods, tunebench.benchmarks as b; "
            "print(json.dumps([tunebench.__file__, tunebench.methods.__file__, b.__file__, str(tunebench.CONFIG_DIR), "
            "tunebench.REPO_ROOT]))",
        ],
        work,
        env,
    )
    *files, repo_root = json.loads(where.stdout)
    assert all(Path(f).is_relative_to(site) for f in files), files
    assert repo_root is None

    tunebench = venv / "bin" / "tunebench"
    tasks = run([tunebench, "tasks"], work, env).stdout
    assert {line.split()[0]: line.split()[1] for line in tasks.splitlines()} == {
        "banking77": "installed",
        "banking77_gen": "installed",
        "imdb": "installed",
        "rotten_tomatoes": "installed",
        "rotten_tomatoes_gen": "installed",
    }
    plan = run(
        [tunebench, "plan", "--model", "minilm", "--methods", "lora,head", "--seq-len", "32", "--json"], work, env
    )
    assert {m["method"] for m in json.loads(plan.stdout)["methods"]} == {"lora", "head"}

    train = run(
        [
            tunebench,
            "train",
            "--method",
            "lora",
            "--max-train-samples",
            "32",
            "--max-eval-samples",
            "16",
            "--max-length",
            "32",
            "--batch-size",
            "16",
            "--max-steps",
            "2",
            "--out",
            "run",
            "--set",
            "train.trackers=[]",
            "--set",
            "train.save=none",
        ],
        work,
        env,
    )
    result = json.loads((work / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["environment"]["git"] == {"commit": None, "dirty": None}
    assert train.stdout.startswith("lora on rotten_tomatoes: test accuracy ")
