"""The golden check's comparison: what it drops as unstable and what it reports as changed (a full golden run
trains ten models and takes about ten minutes: it runs by hand, before and after a refactor)."""

from tunebench.benchmarks.golden import differences, stable


def test_stable_drops_time_and_place_but_keeps_measurements():
    result = {
        "test": {"accuracy": 0.5},
        "train_seconds": 3.2,
        "tokens_per_second": 100.0,
        "environment": {"git": {"commit": "abc"}},
        "memory": {"tensor": {"peak_bytes": 10}, "cuda": None, "peak_rss_bytes": 5},
    }
    assert stable(result) == {"test": {"accuracy": 0.5}, "memory": {"tensor": {"peak_bytes": 10}}}
    assert stable({"seconds_to_plan": 1.0, "methods": [{"s_per_step": 2.0}]}, ("seconds_to_plan",)) == {
        "methods": [{"s_per_step": 2.0}]
    }


def test_differences_names_each_changed_field_by_its_path():
    before = {"runs": {"a": {"peak": 10, "curve": [1, 2]}, "b": {"x": 1}}}
    after = {"runs": {"a": {"peak": 14, "curve": [1, 3]}, "c": {"x": 1}}}
    assert differences(before, after) == [
        "runs.a.curve[1]: 2 -> 3",
        "runs.a.peak: 10 -> 14",
        "runs.b: {'x': 1} -> None",
        "runs.c: None -> {'x': 1}",
    ]
    assert differences(before, before) == []
    assert differences({"l": [1, 2]}, {"l": [1]}) == ["l: [1, 2] -> [1]"]
