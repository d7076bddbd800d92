"""The Python API as a notebook uses it: import tunebench, call a function, read the dict it returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tunebench
from tunebench.errors import UserError
from tunebench.planner.request import PlanRequest
from tunebench.results import read_result


def test_import_tunebench_stays_light() -> None:
    code = "import sys, tunebench; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_notebook_train_evaluate_report_plan(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a notebook's folder, not the checkout
    result = tunebench.train(
        method="head",
        task="rotten_tomatoes",
        max_train_samples=32,
        max_eval_samples=32,
        max_length=32,
        overrides={"train.trackers": [], "train.epochs": 2},
        out="head-run",
    )
    assert result["status"] == "ok"
    assert (result["config"]["data"]["max_train_samples"], result["config"]["train"]["epochs"]) == (32, 2)
    assert result == read_result(tmp_path / "head-run" / "result.json")  # the same dict the run folder keeps

    again = tunebench.evaluate("head-run")
    assert again["accuracy"] == result["test_accuracy"] and again["agreement_with_training"] == 1.0

    report = tunebench.write_report("head-run", "report")
    assert report == Path("report/report.md") and "head" in report.read_text()

    overrides = {"train.precision": "bf16-mixed", "train.grad_accum": 2}  # as train takes them
    plan = tunebench.plan(model="minilm", methods="head", max_length=32, budget="24GiB", overrides=overrides)
    assert [m["method"] for m in plan["methods"]] == ["head"] and plan["recommendation"].startswith("head")
    assert plan["precision"] == "bf16-mixed" and plan["settings"]["head"]["grad_accum"] == 2  # the rule, as given


def test_bench_takes_a_shipped_suite_by_name(tmp_path: Path) -> None:
    outcome = tunebench.bench("quick", out=tmp_path / "quick", dry_run=True)
    assert outcome == {"exit_status": 0, "results_dir": str(tmp_path / "quick"), "results": []}
    with pytest.raises(
        UserError,
        match="^unknown suite 'quik'; choose one of: <suite.yaml>, gpu, llm, llm-gpu, peft, peft-gpu, precision, "
        "quick, ",
    ):
        tunebench.bench("quik")


def test_unknown_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="^unknown setting 'epoch'; choose one of: "):
        tunebench.train(method="head", epoch=2)
    with pytest.raises(UserError, match="^unknown plan option 'bugdet'; choose one of: "):
        tunebench.plan(model="minilm", bugdet="24GiB")


def test_plan_takes_a_request_and_its_errors_name_no_flag() -> None:
    """tunebench.plan takes a PlanRequest as well as keywords; bad options are errors in the API's own words."""
    with pytest.raises(UserError, match=r"^strategy 'fsdp' needs a number of GPUs \(gpus\)"):
        tunebench.plan(PlanRequest(model="llama-3.2-1b", strategy="fsdp"))
    with pytest.raises(UserError, match=r"^plan cannot honour epochs \(train.epochs\)"):
        tunebench.plan(model="llama-3.2-1b", epochs=3)
    with pytest.raises(UserError, match="^plan takes a PlanRequest or keyword options, not both"):
        tunebench.plan(PlanRequest(), model="minilm")
