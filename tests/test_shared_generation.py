"""Two processes share a generate task's evaluation: each scores its share of the batches, and both get back
what one process alone computes, to the last digit (gloo on the CPU, on any machine)."""

from __future__ import annotations

from pathlib import Path

from generate_grid import BATCH_SIZES, SPLIT_SIZES
from two_processes import one_and_two_processes

REPO = Path(__file__).resolve().parent.parent


def test_two_processes_generate_and_score_what_one_does(tiny_llm, tmp_path):
    runs = one_and_two_processes(REPO / "tests" / "generate_grid.py", [tiny_llm], tmp_path)
    one, two = runs[1]["rows"], runs[2]["rows"]
    assert [(r["size"], r["batch_size"]) for r in two] == [(s, b) for s in SPLIT_SIZES for b in BATCH_SIZES]
    for single, double in zip(one, two, strict=True):
        assert len(double["outputs"]) == len(double["choice_correct"]) == double["size"]
        assert double == single  # generations, every metric (answer loss to the last digit) and choice outcomes
    # a random model writes varied text: equal generations are not a coincidence of empty outputs
    assert len({o for r in two for o in r["outputs"]}) > 3
