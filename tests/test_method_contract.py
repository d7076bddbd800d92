"""The method contract (tunebench.methods.Method): every registered method satisfies it, and a fifth method
declared as an entry point from outside tunebench (BitFit, tests/fixtures/bitfit.py) reaches train, plan and
report with no other edit."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.methods import Method, get_method, plannable, registry
from tunebench.results import read_result

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_method_has_the_contract_signatures():
    for name in registry():
        module = get_method(name)
        for member in ("build", "save", "load") + (("build_meta",) if module.PLANNING else ()):
            expected = list(inspect.signature(getattr(Method, member)).parameters)[1:]  # without self
            assert list(inspect.signature(getattr(module, member)).parameters) == expected, (name, member)
    assert plannable() == ["full", "lora", "qlora", "head"]  # none trains nothing: no step to plan


@pytest.fixture
def bitfit_installed(tmp_path, monkeypatch):
    """A package that declares BitFit as an entry point, laid out as pip installs one, on PYTHONPATH (for
    subprocesses) and on sys.path (for this process; the registry is read afresh, and again after the test)."""
    site = tmp_path / "site"
    info = site / "tunebench_bitfit-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tunebench-bitfit\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tunebench.methods]\nbitfit = tests.fixtures.bitfit\n")
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))
    registry.cache_clear()
    yield
    registry.cache_clear()


def test_a_fifth_method_from_an_entry_point_reaches_train_plan_and_report(bitfit_installed, tmp_path):
    """`tunebench train --method bitfit` in a subprocess, then plan and report in this process."""
    from transformers import AutoModel

    from tunebench import api
    from tunebench.models.hub import resolve_model

    runs = tmp_path / "runs"
    tiny = ["--max-train-samples", "16", "--max-eval-samples", "16", "--max-length", "32", "--batch-size", "8"]
    command = [str(Path(sys.executable).with_name("tunebench")), "train", "--method", "bitfit", *tiny]
    command += ["--set", "train.trackers=[]", "--set", "train.save=none", "--out", str(runs / "bitfit")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_result(runs / "bitfit" / "result.json")
    assert result["status"] == "ok" and result["config"]["method"] == "bitfit"
    # what trains, counted independently on the checkpoint: every bias of the encoder (not the unused pooler's)
    # and the 2-label head
    encoder = AutoModel.from_pretrained(resolve_model("minilm"))
    biases = sum(p.numel() for n, p in encoder.named_parameters() if n.endswith(".bias") and "pooler" not in n)
    assert result["trainable_params"] == biases + encoder.config.hidden_size * 2 + 2

    assert plannable() == ["full", "lora", "qlora", "bitfit", "head"]  # its order of preference, 2.5
    plan = api.plan(model="minilm", max_length=32, batch_size=4, methods="bitfit")
    (planned,) = plan["methods"]
    assert planned["trainable_params"] == result["trainable_params"]  # build_meta trains what build does
    assert planned["mfu"] == 0.30  # its default, from its PLANNING

    report = api.write_report(runs, tmp_path / "report").read_text()
    assert "| **bitfit** |" in report and "1e-3 (the method's default)" in report  # its rate, from its DEFAULTS
