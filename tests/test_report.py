"""tunebench report: statistics, Pareto fronts, the generated files, and the page in a real browser.

The fixtures in tests/fixtures/results/ come from real CPU runs (minilm on rotten_tomatoes, 128 training
examples, the harness keys added): cpu-len64 holds 4 methods x 2 seeds, a real out-of-memory run
(measure.memory_cap) and a run stopped with SIGTERM; cpu-len32 the 4 methods at max_length 32.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from scipy import stats

from tunebench.cli import main
from tunebench.errors import UserError
from tunebench.methods import get_method
from tunebench.report import write_report
from tunebench.report.formatting import fmt_ratio
from tunebench.report.stats import mcnemar_p, mean_ci, paired_bootstrap, pareto_front

FIXTURES = Path(__file__).parent / "fixtures" / "results"
LEN64, LEN32 = FIXTURES / "cpu-len64", FIXTURES / "cpu-len32"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "fixtures"
    write_report([str(LEN64), str(LEN32)], str(out))
    return out


def _results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


# -- statistics ---------------------------------------------------------------------------------------


def test_confidence_interval_matches_scipy() -> None:
    values = [0.81, 0.84, 0.79, 0.83]
    mean, half = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert mean == pytest.approx((low + high) / 2)
    assert half == pytest.approx((high - low) / 2)


def test_confidence_interval_by_hand() -> None:
    # n=2: sd = 0.1*sqrt(2), sem = 0.1, t(0.975, df=1) = 12.7062
    mean, half = mean_ci([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(12.7062 * 0.1, rel=1e-4)
    assert mean_ci([0.42]) == (0.42, None)


def test_pareto_front_minimizing_memory() -> None:
    points = [
        (100, 90),  # most accurate: on the front
        (50, 85),  # on the front
        (60, 80),  # dominated by (50, 85)
        (20, 70),  # cheapest: on the front
        (20, 70),  # a tie is not domination
        (200, 90),  # as accurate as (100, 90) at twice the memory: dominated
    ]
    assert pareto_front(points, minimize_x=True) == [True, True, False, True, True, False]


def test_pareto_front_maximizing_throughput() -> None:
    points = [(100, 90), (300, 85), (200, 80), (300, 84), (1000, 70)]
    assert pareto_front(points, minimize_x=False) == [True, True, False, False, True]


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs() -> None:
    # 10 discordant pairs split 9/1 (plus 5 concordant ones, which do not count): 2 * (1 + 10) / 2**10
    a = [1] * 9 + [0] + [1, 1, 1, 0, 0]
    b = [0] * 9 + [1] + [1, 1, 1, 0, 0]
    assert mcnemar_p(a, b) == 0.021484375 == 2 * 11 / 2**10
    assert mcnemar_p([1, 0], [1, 0]) == 1.0


def test_paired_bootstrap_interval_holds_the_difference() -> None:
    # 100 examples: a right on 90, b on 60, b's right ones a subset of a's: +30 points
    a, b = [1] * 90 + [0] * 10, [1] * 60 + [0] * 40
    difference, low, high = paired_bootstrap([a], [b])
    assert difference == pytest.approx(0.30)
    assert 0 < low < difference < high
    assert paired_bootstrap([a], [b]) == (difference, low, high)  # fixed seed: the same report every time
    # several seeds each: resampled too, the interval still holds the mean difference
    difference, low, high = paired_bootstrap([a, a[::-1]], [b, b])
    assert low < difference < high


# -- reports from real result files ---------------------------------------------------------------------


def test_report_files(report: Path) -> None:
    names = {p.name for p in report.iterdir()}
    assert {"report.md", "index.html", "results.csv"} <= names
    figures = {n for n in names if n.endswith(".svg")}
    assert {f"{kind}-cpu-len64-rotten-tomatoes.svg" for kind in ("pareto", "memory", "curves")} <= figures
    markdown = (report / "report.md").read_text()
    for figure in figures:
        assert f"({figure})" in markdown


def test_summary_table_aggregates_seeds(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    ok = [r for r in _results(LEN64) if r["status"] == "ok"]
    for method in ("full", "lora", "qlora", "head"):
        accuracies = [r["test_accuracy"] for r in ok if r["config"]["method"] == method]
        assert len(accuracies) == 2
        mean, half = mean_ci(accuracies)
        assert f"| **{method}** | " in markdown
        assert f"{100 * mean:.1f} ± {100 * half:.1f}" in markdown
    assert "(1 seed)" in markdown  # cpu-len32 has one seed per method


def test_failed_and_incomplete_runs_are_listed_not_averaged(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    oom = next(r for r in _results(LEN64) if r["status"] == "oom")
    interrupted = next(r for r in _results(LEN64) if r["status"] == "interrupted")
    failed_section = markdown.split("## Failed runs")[1].split("\n## ")[0]
    assert oom["run_id"] in failed_section and "out of memory" in failed_section
    incomplete_section = markdown.split("## Incomplete runs")[1].split("\n## ")[0]
    assert interrupted["run_id"] in incomplete_section and "interrupted" in incomplete_section


def test_recommendation_and_flags_come_from_the_data(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    advice = markdown.split("## What to use")[1].split("\n## ")[0]
    ok = [r for r in _results(LEN64) if r["status"] == "ok"]
    by_method = {m: [r for r in ok if r["config"]["method"] == m] for m in ("full", "lora", "qlora", "head")}
    best = max(by_method, key=lambda m: sum(r["test_accuracy"] for r in by_method[m]))
    assert f"**{best}** is the most accurate" in advice
    full_memory = sum(r["peak_memory_bytes"] for r in by_method["full"]) / 2
    head_memory = sum(r["peak_memory_bytes"] for r in by_method["head"]) / 2
    share = head_memory / full_memory
    assert (
        f"at {100 * share:.2g}% of its peak memory" in advice or f"at {100 * share:.0f}% of its peak memory" in advice
    )
    # The out-of-memory run (memory_cap) and the interrupted one (max_train_samples) are not compared.
    assert "`measure.memory_cap`" not in markdown and "`data.max_train_samples`" not in markdown


def test_side_by_side_ratios(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    section = markdown.split("## Side by side")[1].split("\n## ")[0]
    assert "cpu-len32 against cpu-len64" in section
    long = [r for r in _results(LEN64) if r["status"] == "ok" and r["config"]["method"] == "lora"]
    short = [r for r in _results(LEN32) if r["config"]["method"] == "lora"]
    ratio = short[0]["tokens_per_second"] / (sum(r["tokens_per_second"] for r in long) / len(long))
    row = next(line for line in section.splitlines() if line.startswith("| **lora**"))
    assert fmt_ratio(ratio) in row


def test_csv_has_one_flat_row_per_run(report: Path) -> None:
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert len(rows) == len(list(LEN64.glob("*.json"))) + len(list(LEN32.glob("*.json")))
    assert {"set", "run_id", "status", "config.train.batch_size", "memory.tensor.at_peak.activations"} <= set(rows[0])
    assert not any(key.startswith("curves") for key in rows[0])
    statuses = {row["run_id"]: row["status"] for row in rows}
    assert sorted(statuses.values()).count("oom") == 1


def test_html_is_well_formed_and_self_contained(report: Path) -> None:
    page = (report / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    root = ET.fromstring(page.removeprefix("<!DOCTYPE html>"))  # the page is also well-formed XML
    tags = {el.tag for el in root.iter()}
    assert "svg" in tags and {"script", "link", "img", "iframe", "object", "embed"}.isdisjoint(tags)
    # What a browser would fetch: src/href-like attributes and CSS url(); only in-page #anchors are allowed.
    for el in root.iter():
        for name, value in el.attrib.items():
            if name.split("}")[-1] in ("src", "href", "srcset", "action", "data", "poster"):
                assert value.startswith("#"), (el.tag, name, value)
    styles = " ".join(el.text or "" for el in root.iter("style")) + " ".join(el.get("style", "") for el in root.iter())
    assert all(u.startswith("#") for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", styles))
    assert "@import" not in styles
    # Stricter still: no URL text at all (matplotlib's xmlns and DTD URLs are stripped).
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)


def test_regenerating_replaces_the_whole_folder(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report([str(LEN32)], str(out))
    (out / "pareto-stale.svg").write_text("<svg/>")
    first = (out / "report.md").read_text()
    write_report([str(LEN32)], str(out))
    assert not (out / "pareto-stale.svg").exists()
    assert (out / "report.md").read_text() == first  # same results, same report
    assert "(1 seed)" in first and "Side by side" not in first


# -- hand-made results: the advice must follow the numbers -------------------------------------------------


def _write_results(
    folder: Path, rows: list[tuple[str, int, float, float, float, float]], train: dict | None = None, **fields
) -> None:
    """Result files from a real one, with method, seed, accuracy, peak memory, tokens/s and train seconds set;
    train: per-method config.train overrides; fields: top-level keys set in every result."""
    template = json.loads((LEN32 / "full-s1.json").read_text())
    folder.mkdir(parents=True)
    for method, seed, accuracy, memory, tokens_per_second, seconds in rows:
        result = copy.deepcopy(template)
        result["config"].update(method=method, seed=seed, pooling=None)
        result["config"]["train"]["lr"] = get_method(method).DEFAULTS["train"].get("lr")  # none: no rate
        result["config"]["train"].update((train or {}).get(method, {}))
        result["grid"] = {"model": "minilm", "task": "rotten_tomatoes", "method": method, "seed": seed}
        result.update(
            run_id=f"{method}-s{seed}",
            test_accuracy=accuracy,
            test_f1=accuracy,
            peak_memory_bytes=memory,
            tokens_per_second=tokens_per_second,
            train_seconds=seconds,
            **fields,
        )
        (folder / f"{method}-s{seed}.json").write_text(json.dumps(result))


def test_recommendation_follows_hand_made_numbers(tmp_path: Path) -> None:
    rows = [
        ("full", 1, 0.900, 1000e6, 100.0, 120.0),
        ("full", 2, 0.902, 1000e6, 100.0, 120.0),
        ("lora", 1, 0.895, 410e6, 160.0, 80.0),
        ("lora", 2, 0.893, 410e6, 160.0, 80.0),
        ("head", 1, 0.850, 100e6, 1200.0, 10.0),
        ("head", 2, 0.852, 100e6, 1200.0, 10.0),
    ]
    _write_results(tmp_path / "set", rows, train={"head": {"batch_size": 64}})
    write_report([str(tmp_path / "set")], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    advice = markdown.split("## What to use")[1].split("\n## ")[0]
    assert "**full** is the most accurate at 90.1" in advice
    assert "**Use lora** unless the last 0.7 points matter" in advice
    assert "at 41% of its peak memory, at 1.6× its throughput (tokens/s)" in advice  # 160 / 100 tokens/s
    assert "lora reaches 99% of full fine-tuning's accuracy (-0.7 points) at 41% of its peak memory" in advice
    assert "head reaches 94% of full fine-tuning's accuracy (-5.0 points) at 10% of its peak memory" in advice
    assert "with 12× its throughput" in advice
    assert "On the tightest memory budget, **head**" in advice
    pareto = re.search(r"\| \*\*head\*\* \|.*\| (memory, speed) \|", markdown)
    assert pareto, "head is the cheapest and fastest: on both fronts"
    flags = markdown.split("### Flags")[1]
    assert "`train.batch_size`" in flags and "64 for head" in flags
    assert "Not like for like" in advice and "`train.batch_size`" in advice
    assert "Not the same training budget" not in markdown and "Not the same pooling" not in markdown
    assert "not chosen by one rule" not in markdown  # every method at its own default: one rule

    # Make lora the most accurate: the advice changes with the numbers.
    flipped = [(m, s, 0.95 if m == "lora" else a, mem, tps, sec) for m, s, a, mem, tps, sec in rows]
    _write_results(tmp_path / "flipped", flipped)
    write_report([str(tmp_path / "flipped")], str(tmp_path / "out2"))
    advice = (tmp_path / "out2" / "report.md").read_text().split("## What to use")[1].split("\n## ")[0]
    assert "**lora** is the most accurate" in advice and "**Use lora**: no method within 1 point" in advice


def _outcomes(right: range, n: int = 63) -> list[int]:
    return [int(i in right) for i in range(n)]


def test_paired_advice_prefers_only_what_the_interval_separates(tmp_path: Path) -> None:
    # 63 test examples. full and lora disagree on 6 (4 for full, 2 for lora): tied. head is far below: separated.
    correct = {
        "full": _outcomes(range(40)),
        "lora": [int(i < 36 or 40 <= i < 42) for i in range(63)],  # 36 + 2 = 38 right
        "head": _outcomes(range(15)),
        "none": _outcomes(range(5)),  # the lightest of all: never the one to use
    }
    rows = [
        ("full", 1, 40 / 63, 1000e6, 100.0, 120.0),
        ("lora", 1, 38 / 63, 400e6, 160.0, 80.0),
        ("head", 1, 15 / 63, 100e6, 1200.0, 10.0),
        ("none", 1, 5 / 63, 50e6, 0.0, 0.0),
    ]
    _write_results(tmp_path / "set", rows)
    for method, outcome in correct.items():
        path = tmp_path / "set" / f"{method}-s1.json"
        result = json.loads(path.read_text())
        result.update(test_correct=outcome, test_size=63, too_long_dropped={"train": 3, "validation": 0, "test": 1})
        path.write_text(json.dumps(result))
    write_report([str(tmp_path / "set")], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    advice = markdown.split("## What to use")[1].split("\n## ")[0]
    assert "**full** is the most accurate at 63.5" in advice
    assert "full and lora are tied on accuracy: +3.2 points, 95% CI −" in advice and "n = 63." in advice
    assert "**Use lora**: tied on accuracy with full (−3.2 points) at 40% of its peak memory" in advice
    assert "full is more accurate than head: +39.7 points, 95% CI +" in advice
    assert "Use none" not in advice and "**none** is the most accurate" not in advice
    # Against full fine-tuning, a tie is said as a tie, never as a share of its accuracy; none has its gains line.
    assert "lora is tied with full fine-tuning on accuracy (−3.2 points, 95% CI −" in advice
    assert "head is behind full fine-tuning on accuracy (−39.7 points, 95% CI −" in advice
    assert "reaches" not in advice and "none is" not in advice
    assert "Gain over the untuned baseline none, never recommended" in advice and "full +55.6 points" in advice
    assert "paired test was not possible" not in markdown
    paired = markdown.split("### Paired comparisons")[1].split("\n\n", 2)[1]
    assert "| **full** − **lora** | 63 | +3.2 |" in paired
    assert "Test set: n = 63 examples." in markdown
    assert "Examples dropped as too long: 3 train, 0 validation, 1 test." in markdown
    assert "Learning-rate trials: 1 per method." in markdown
    assert re.search(r"resolving a 2-point difference needs about [0-9,]+ test examples", markdown)


def test_summary_table_groups_the_methods_the_paired_test_cannot_separate(tmp_path: Path) -> None:
    # 63 test examples: lora 40 right, head 30, none 28, full 20, each right on the first ones. lora is apart from
    # all (10+ discordant, one way); head and none differ on 2 examples (tied); full is 10 below head.
    right = {"lora": 40, "head": 30, "none": 28, "full": 20}
    rows = [(method, 1, n / 63, 1000e6, 100.0, 60.0) for method, n in right.items()]
    _write_results(tmp_path / "set", rows)
    for method, n in right.items():
        path = tmp_path / "set" / f"{method}-s1.json"
        result = json.loads(path.read_text())
        result.update(test_correct=_outcomes(range(n)), test_size=63)
        path.write_text(json.dumps(result))
    write_report([str(tmp_path / "set")], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    table = markdown.split("## Results: rotten_tomatoes")[1].split("\n\n")[1]
    tiers = re.findall(r"^\| \*\*(\w+)\*\* \| [^|]+ \| [^|]+ \| [^|]+ \| (\d) \|", table, re.MULTILINE)  # family first
    assert tiers == [("lora", "1"), ("head", "2"), ("none", "2"), ("full", "3")]  # method order within a tier
    assert "Tier: tier 1 is the most accurate method and every method tied with it" in markdown


def test_results_without_outcomes_fall_back_and_say_so(tmp_path: Path) -> None:
    rows = [("full", 1, 0.90, 1000e6, 100.0, 120.0), ("lora", 1, 0.895, 400e6, 160.0, 80.0)]
    _write_results(tmp_path / "set", rows)
    write_report([str(tmp_path / "set")], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    advice = markdown.split("## What to use")[1].split("\n## ")[0]
    assert "**Use lora** unless the last 0.5 points matter" in advice
    assert "The paired test was not possible: full and lora have no per-example test outcomes" in advice
    assert "The paired test was not possible" in markdown.split("### Flags")[1]
    assert "### Paired comparisons" not in markdown


def test_unequal_budget_pooling_and_lr_rule_are_said_plainly(tmp_path: Path) -> None:
    rows = [("full", 1, 0.90, 1000e6, 100.0, 120.0), ("head", 1, 0.85, 100e6, 1200.0, 10.0)]
    _write_results(tmp_path / "set", rows, train={"head": {"epochs": 10}, "full": {"lr": 1e-4}})
    head = tmp_path / "set" / "head-s1.json"
    head.write_text(head.read_text().replace('"pooling": null', '"pooling": "cls"'))
    write_report([str(tmp_path / "set")], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    advice = markdown.split("## What to use")[1].split("\n## ")[0]
    assert "**Not like for like**" in advice
    for text in (advice, markdown.split("### Flags")[1]):
        assert "Not the same training budget: epochs 1 for full; 10 for head." in text
        assert "Not the same pooling: the checkpoint's (null) for full; cls for head." in text
        assert "not chosen by one rule: set by the suite for full; the method's default for head" in text
    assert "| 1e-4 (set by the suite) |" in markdown and "| 1e-2 (the method's default) |" in markdown


def test_a_generate_task_s_default_rate_is_the_method_s_generate_default(tmp_path: Path) -> None:
    """head's default on a generate task is GENERATE_DEFAULTS' rate: that rate is its default there, not a setting."""
    generate_lr = get_method("head").GENERATE_DEFAULTS["train"]["lr"]
    rows = [("full", 1, 0.90, 1000e6, 100.0, 120.0), ("head", 1, 0.85, 100e6, 1200.0, 10.0)]
    for name, head_lr in (("generate-default", generate_lr), ("classify-default", None)):
        folder = tmp_path / name
        _write_results(folder, rows, train={"head": {"lr": head_lr}} if head_lr else None)
        for path in folder.glob("*.json"):
            result = json.loads(path.read_text())
            result["config"].setdefault("data", {})["task_type"] = "generate"
            path.write_text(json.dumps(result))
        write_report([str(folder)], str(tmp_path / f"{name}-report"))
        markdown = (tmp_path / f"{name}-report" / "report.md").read_text()
        if head_lr:
            assert "not chosen by one rule" not in markdown
            assert re.search(r"\| \*\*head\*\* \|.*\| [0-9.e-]+ \(the method's default\) \|", markdown)
        else:  # the classification default on a generate task was set by hand
            assert "set by the suite for head" in markdown


def test_old_results_flag_their_pooling(report: Path) -> None:
    # cpu-len64 predates the shared pooling key: head pooled its own way, the others used the model's pooler
    flags = (report / "report.md").read_text().split("### Flags")[1]
    pooler = "the model's own classification head (BERT: pooler on CLS)"
    assert f"Not the same pooling: {pooler} for full, lora and qlora; the checkpoint's (null) for head." in flags


def test_learning_rate_is_chosen_on_validation_never_on_test(tmp_path: Path) -> None:
    # lora swept over three rates, two seeds each: 1e-3 is best on validation, 3e-3 would be best on test
    validation = {1e-4: 0.70, 1e-3: 0.86, 3e-3: 0.84}
    test = {1e-4: 0.69, 1e-3: 0.80, 3e-3: 0.88}
    folder = tmp_path / "sweep"
    _write_results(folder, [("full", 1, 0.85, 1000e6, 100.0, 120.0)])
    template = json.loads((folder / "full-s1.json").read_text())
    for lr in validation:
        for seed in (1, 2):
            result = copy.deepcopy(template)
            result["config"].update(method="lora", seed=seed)
            result["config"]["train"]["lr"] = lr
            result["grid"] = {"model": "minilm", "task": "rotten_tomatoes", "method": "lora", "seed": seed, "lr": lr}
            result.update(
                run_id=f"lora-{lr}-s{seed}",
                best_validation_accuracy=validation[lr] + 0.01 * (seed - 1),
                test_accuracy=test[lr],
                test_f1=test[lr],
            )
            (folder / f"lora-{lr}-s{seed}.json").write_text(json.dumps(result))
    write_report([str(folder)], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    tuned = markdown.split("### Learning rate tuned on validation")[1].split("\n\n", 2)[1]
    assert "| **lora** | 1e-3 | 86.5 | 80.0 | 2 | selected |" in tuned  # mean validation over the two seeds
    assert "| lora | 3e-3 | 84.5 | 88.0 | 2 |  |" in tuned
    summary = next(line for line in markdown.splitlines() if line.startswith("| **lora** | ") and "±" in line)
    assert "80.0 ± 0.0" in summary and "1e-3 (tuned on validation)" in summary
    assert "not chosen by one rule: the method's default for full; tuned on validation for lora" in markdown


def test_cpu_against_gpu_side_by_side(tmp_path: Path) -> None:
    cpu = [("full", 1, 0.90, 1000e6, 100.0, 120.0), ("lora", 1, 0.89, 400e6, 150.0, 90.0)]
    gpu = [("full", 1, 0.90, 1200e6, 5000.0, 3.0), ("lora", 1, 0.89, 500e6, 6000.0, 2.5)]
    _write_results(tmp_path / "cpu", cpu)
    environment = json.loads((LEN32 / "full-s1.json").read_text())["environment"]
    environment["gpu"] = {
        "name": "NVIDIA H100",
        "memory_bytes": 80 * 2**30,
        "cuda": "12.8",
        "driver": "570",
        "count": 1,
    }
    _write_results(tmp_path / "gpu", gpu, peak_memory_source="cuda_max_allocated", environment=environment)
    write_report([str(tmp_path / "cpu"), str(tmp_path / "gpu")], str(tmp_path / "out"))
    section = (tmp_path / "out" / "report.md").read_text().split("## Side by side")[1].split("\n## ")[0]
    assert "**gpu**: NVIDIA H100" in section and "**cpu**: CPU:" in section
    full = next(line for line in section.splitlines() if line.startswith("| **full**"))
    assert full.endswith("| 1.2× | 50× | 0.025× |")  # memory 1200/1000, tokens/s 5000/100, time 3/120
    assert "tensor-tracker peak in cpu but CUDA max allocated in gpu" in section


# -- errors -----------------------------------------------------------------------------------------------


def test_bad_input_is_a_user_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="results folder not found"):
        write_report([str(tmp_path / "missing")], str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text('{"not": "a result"}')
    with pytest.raises(UserError, match="no tunebench result files"):
        write_report([str(tmp_path / "empty")], str(tmp_path / "out"))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("...")
    assert main(["report", str(LEN32), "-o", str(tmp_path / "precious")]) == 2
    assert "not a tunebench report" in capsys.readouterr().err
    assert (tmp_path / "precious" / "thesis.tex").exists()


# -- the page in a real browser ----------------------------------------------------------------------------


def test_page_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    from render_check import find_chromium, looks_rendered, pixel_stats, screenshot

    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); `make report-check` needs it too")
    png = tmp_path / "page.png"
    screenshot(report / "index.html", png)
    stats_ = pixel_stats(png)
    assert looks_rendered(stats_), stats_
    # A page without its figures is the control: the same check must call it blank of colour.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<svg.*?</svg>", "", (report / "index.html").read_text(), flags=re.S))
    screenshot(bare, tmp_path / "bare.png")
    assert not looks_rendered(pixel_stats(tmp_path / "bare.png"))


def test_choice_accuracy_column_gain_and_paired_table(tmp_path: Path) -> None:
    # 63 test examples: full gets 40 exact and 50 by choice; the untuned model 0 exact and 30 by choice, all of
    # them among full's 50: 20 discordant pairs, all one way
    exact = {"full": _outcomes(range(40)), "none": _outcomes(range(0))}
    choice = {"full": _outcomes(range(50)), "none": _outcomes(range(30))}
    rows = [("full", 1, 40 / 63, 1000e6, 100.0, 120.0), ("none", 1, 0.0, 50e6, 0.0, 0.0)]
    _write_results(tmp_path / "set", rows)
    for method in exact:
        path = tmp_path / "set" / f"{method}-s1.json"
        result = json.loads(path.read_text())
        result.update(
            test_correct=exact[method],
            test_size=63,
            test_exact_match=sum(exact[method]) / 63,
            test_answer_token_accuracy=0.5,
            test_answer_perplexity=2.0,
            test_choice_accuracy=sum(choice[method]) / 63,
            test_choice_correct=choice[method],
            choice={"candidates": 2, "source": "label_names"},
        )
        path.write_text(json.dumps(result))
    write_report([str(tmp_path / "set")], str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "report.md").read_text()
    generation = markdown.split("### Generation")[1]
    assert "| Exact match % | Gain over untuned | Choice accuracy % | Choice gain over untuned |" in generation
    assert "| **full** | 63.5 | +63.5 | 79.4 | +31.7 |" in generation  # 50 / 63, (50 - 30) / 63
    assert "| **none** | 0.0 | +0.0 | 47.6 | +0.0 |" in generation
    paired = markdown.split("### Paired comparisons: choice accuracy")[1].split("\n\n", 2)[1]
    assert "| **full** − **none** | 63 | +31.7 |" in paired
    assert "| 1.91e-06 |" in paired  # exact McNemar: 2 · 0.5^20
    exact_paired = markdown.split("### Paired comparisons\n")[1].split("### Paired comparisons: choice")[0]
    assert "| **full** − **none** | 63 | +63.5 |" in exact_paired
