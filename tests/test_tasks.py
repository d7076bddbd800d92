"""Tasks: the registered ones from their PyPI data packages, local files of every format, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import write_frame

from tunebench.config import build_config
from tunebench.data.tasks import SPLITS, get_task, load_capped, load_task, registered_tasks
from tunebench.errors import UserError


@pytest.fixture(scope="module")
def data_cfg() -> dict:
    return build_config()["data"]


@pytest.fixture(scope="module")
def review_cfg() -> dict:
    return build_config(overrides={"data": {"text_column": "review", "label_column": "sentiment"}})["data"]


def sizes(task) -> dict[str, int]:
    return {split: len(task.splits[split]) for split in SPLITS}


def test_registered_tasks_are_listed_and_installed() -> None:
    assert registered_tasks() == ["banking77", "banking77_gen", "imdb", "rotten_tomatoes", "rotten_tomatoes_gen"]
    for name in registered_tasks():
        spec = get_task(name)
        assert spec.installed(), name
        assert spec.description
        assert all(Path(path).is_file() for path in spec.files.values()), spec.files


@pytest.mark.parametrize(
    ("name", "expected_sizes", "num_labels"),
    [
        ("rotten_tomatoes", {"train": 6824, "validation": 853, "test": 853}, 2),
        ("banking77", {"train": 9003, "validation": 1000, "test": 3080}, 77),
        ("imdb", {"train": 20000, "validation": 2500, "test": 2500}, 2),
    ],
)
def test_registered_task_splits(data_cfg: dict, name: str, expected_sizes: dict, num_labels: int) -> None:
    task = load_task(get_task(name), data_cfg)
    assert sizes(task) == expected_sizes
    assert task.num_labels == num_labels
    for split in SPLITS:
        assert task.splits[split].column_names == ["text", "label"]
        labels = task.splits[split]["label"]
        assert min(labels) == 0 and max(labels) == num_labels - 1  # every class in every split
    if name == "banking77":
        assert task.label_names == sorted(task.label_names) and "card_arrival" in task.label_names
    else:
        assert task.label_names == ["negative", "positive"]


def test_carved_splits_are_disjoint_stratified_and_reproducible(data_cfg: dict) -> None:
    first = load_task(get_task("rotten_tomatoes"), data_cfg)
    again = load_task(get_task("rotten_tomatoes"), data_cfg)
    texts = {split: list(first.splits[split]["text"]) for split in SPLITS}
    assert texts == {split: list(again.splits[split]["text"]) for split in SPLITS}
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])
    for split in ("validation", "test"):
        positive = sum(first.splits[split]["label"]) / len(first.splits[split])
        assert abs(positive - 0.5) < 0.01  # the source is balanced


@pytest.mark.parametrize("suffix", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_local_file_with_own_columns_and_string_labels(
    review_files: dict[str, Path], review_frame: pd.DataFrame, review_cfg: dict, suffix: str
) -> None:
    task = load_task(get_task(str(review_files[suffix])), review_cfg)
    assert task.name == "reviews"
    assert task.label_names == ["negative", "positive"]  # sorted string labels -> ids 0, 1
    assert sizes(task) == {"train": 160, "validation": 20, "test": 20}
    truth = dict(zip(review_frame["review"], review_frame["sentiment"], strict=True))
    for split in SPLITS:
        for example in task.splits[split]:
            assert task.label_names[example["label"]] == truth[example["text"]]


def test_every_format_gives_the_same_splits(review_files: dict[str, Path], review_cfg: dict) -> None:
    loaded = [load_task(get_task(str(path)), review_cfg) for path in review_files.values()]
    for task in loaded[1:]:
        for split in SPLITS:
            assert task.splits[split]["text"] == loaded[0].splits[split]["text"]


def test_pair_task_keeps_both_texts(tmp_path: Path, review_frame: pd.DataFrame) -> None:
    pairs = pd.DataFrame(
        {
            "premise": review_frame["review"],
            "hypothesis": ["the critic liked it"] * len(review_frame),
            "entailment": review_frame["sentiment"].map({"positive": "yes", "negative": "no"}),
        }
    )
    path = write_frame(pairs, tmp_path / "pairs.jsonl")
    cfg = build_config(
        overrides={"data": {"text_column": "premise", "text_pair_column": "hypothesis", "label_column": "entailment"}}
    )["data"]
    task = load_task(get_task(str(path)), cfg)
    assert task.splits["train"].column_names == ["text", "label", "text_pair"]
    assert task.label_names == ["no", "yes"]
    assert set(task.splits["test"]["text_pair"]) == {"the critic liked it"}


def test_task_yaml_with_own_splits_label_names_and_filter(tmp_path: Path, data_cfg: dict) -> None:
    rows = pd.DataFrame(
        {
            "text": [f"review {i}" for i in range(12)],
            "label": [0, 1, 2] * 4,
            "lang": ["en", "en", "en", "de"] * 3,
        }
    )
    write_frame(rows.iloc[:6], tmp_path / "train.csv")
    write_frame(rows.iloc[6:9], tmp_path / "dev.csv")
    write_frame(rows.iloc[9:], tmp_path / "test.csv")
    yaml_file = tmp_path / "mood.yaml"
    yaml_file.write_text(
        "description: three moods\n"
        "source:\n"
        "  files: {train: train.csv, validation: dev.csv, test: test.csv}\n"
        "  where: {lang: en}\n"
        "label_names: [sad, calm, happy]\n"
        "config: {train: {epochs: 4}}\n"
    )
    spec = get_task(str(yaml_file))
    assert spec.name == "mood" and spec.installed()
    task = load_task(spec, data_cfg)
    assert task.label_names == ["sad", "calm", "happy"]
    assert sizes(task) == {"train": 5, "validation": 2, "test": 2}  # the German rows are filtered out
    assert build_config("head", str(yaml_file))["train"]["epochs"] == 4


# -- bad input: a clear UserError, one line ---------------------------------------------------------


def expect_error(match: str, spec_name: str, cfg: dict) -> str:
    with pytest.raises(UserError, match=match) as error:
        load_task(get_task(spec_name), cfg)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_unknown_task_lists_the_choices() -> None:
    with pytest.raises(UserError) as error:
        get_task("rotten-tomatoes")
    message = str(error.value)
    assert message.startswith("unknown task 'rotten-tomatoes'; choose one of: ")
    for choice in ("banking77", "imdb", "rotten_tomatoes", "<file.csv"):
        assert choice in message


def test_unsupported_file_suffix_is_an_unknown_task(tmp_path: Path) -> None:
    (tmp_path / "reviews.txt").write_text("text,label\n")
    with pytest.raises(UserError, match="unknown task"):
        get_task(str(tmp_path / "reviews.txt"))


def test_missing_data_file(tmp_path: Path, data_cfg: dict) -> None:
    with pytest.raises(UserError, match=f"^data file not found: {tmp_path}/nope.csv$"):
        get_task(str(tmp_path / "nope.csv"))
    yaml_file = tmp_path / "gone.yaml"
    yaml_file.write_text("source: {files: {train: missing.jsonl}}\n")
    assert not get_task(str(yaml_file)).installed()
    expect_error("^data file not found: .*missing.jsonl$", str(yaml_file), data_cfg)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.csv", b""),
        ("truncated.jsonl", b'{"text": "fine", "label": 0}\n{"text": "bad'),
        ("broken.json", b'[{"text": "fine", "label": 0},'),
        ("not.parquet", b"this is not parquet"),
        ("binary.csv", bytes(range(256)) * 4),
    ],
)
def test_unreadable_data_file(tmp_path: Path, data_cfg: dict, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    expect_error(f"^cannot read data file {tmp_path}/{name}: ", str(tmp_path / name), data_cfg)


def test_missing_columns_name_what_the_file_has(review_files: dict[str, Path], data_cfg: dict) -> None:
    message = expect_error("lacks column", str(review_files["csv"]), data_cfg)
    assert "['text', 'label']" in message and "['review', 'sentiment', 'critic_id']" in message
    assert "data.text_column" in message


def test_empty_split(tmp_path: Path, data_cfg: dict) -> None:
    (tmp_path / "header_only.csv").write_text("text,label\n")
    expect_error("^task 'header_only' has an empty train split$", str(tmp_path / "header_only.csv"), data_cfg)

    write_frame(pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}), tmp_path / "train.csv")
    (tmp_path / "test.csv").write_text("text,label\n")
    (tmp_path / "t.yaml").write_text("source: {files: {train: train.csv, validation: train.csv, test: test.csv}}\n")
    expect_error("^task 't' has an empty test split$", str(tmp_path / "t.yaml"), data_cfg)


def test_too_small_to_split(tmp_path: Path, data_cfg: dict) -> None:
    write_frame(pd.DataFrame({"text": list("abcde"), "label": [0, 1, 0, 1, 2]}), tmp_path / "tiny.csv")
    expect_error(
        "^task 'tiny': cannot carve stratified validation/test splits from 5", str(tmp_path / "tiny.csv"), data_cfg
    )


def test_rows_without_a_label_are_dropped_and_ids_stay_integers(tmp_path: Path, data_cfg: dict) -> None:
    rows = pd.DataFrame({"text": [f"t{i}" for i in range(41)], "label": [0, 1] * 20 + [None]})
    task = load_task(get_task(str(write_frame(rows, tmp_path / "blanks.csv"))), data_cfg)
    assert sum(sizes(task).values()) == 40
    assert task.label_names == ["0", "1"]
    assert set(task.splits["train"]["label"]) == {0, 1}


@pytest.mark.parametrize("bad_label", [2, -1])
def test_labels_out_of_range(tmp_path: Path, data_cfg: dict, bad_label: int) -> None:
    write_frame(pd.DataFrame({"text": list("abcd"), "label": [0, 1, 0, 1]}), tmp_path / "train.csv")
    write_frame(pd.DataFrame({"text": ["e", "f"], "label": [1, bad_label]}), tmp_path / "test.csv")
    (tmp_path / "binary.yaml").write_text(
        "source: {files: {train: train.csv, validation: train.csv, test: test.csv}}\nlabel_names: [neg, pos]\n"
    )
    expect_error(
        f"^task 'binary' test split has label {bad_label} out of range 0..1$", str(tmp_path / "binary.yaml"), data_cfg
    )


def test_string_label_unknown_to_train(tmp_path: Path, data_cfg: dict) -> None:
    write_frame(pd.DataFrame({"text": list("abcd"), "label": ["neg", "pos"] * 2}), tmp_path / "train.csv")
    write_frame(pd.DataFrame({"text": ["e"], "label": ["neutral"]}), tmp_path / "test.csv")
    (tmp_path / "s.yaml").write_text("source: {files: {train: train.csv, validation: train.csv, test: test.csv}}\n")
    expect_error(
        r"^task 's' test split has label\(s\) not in train: \['neutral'\]$", str(tmp_path / "s.yaml"), data_cfg
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sorce: {files: {train: a.csv}}\n", r"unknown key\(s\) \['sorce'\] in task file"),
        ("source: {files: {train: a.csv, dev: b.csv}}\n", r"names unknown split\(s\) \['dev'\]"),
        ("source: {package: no_such_data_package_xyz, files: {train: a.csv}}\n", "needs the package"),
    ],
)
def test_bad_task_yaml(tmp_path: Path, data_cfg: dict, text: str, match: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserError, match=match):
        load_task(get_task(str(tmp_path / "bad.yaml")), data_cfg)


def test_hub_dataset_offline_fails_clearly(data_cfg: dict) -> None:
    spec = get_task("tunebench-tests/no-such-dataset")
    assert spec.hub_id == "tunebench-tests/no-such-dataset"
    expect_error(
        r"^cannot load hub dataset 'tunebench-tests/no-such-dataset' \(HF_HUB_OFFLINE is set\): ", spec.hub_id, data_cfg
    )


def test_a_latin1_file_reads_with_data_encoding(tmp_path: Path, review_frame: pd.DataFrame) -> None:
    frame = review_frame.head(40).copy()
    frame.loc[0, "review"] = "a naïve, crème brûlée of a film: déjà vu"  # bytes that are not UTF-8 in latin-1
    path = tmp_path / "export.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    columns = {"text_column": "review", "label_column": "sentiment"}

    utf8 = build_config(overrides={"data": columns})["data"]
    message = expect_error(f"^cannot read data file {path}: it is not utf-8 text", str(path), utf8)
    assert "data.encoding" in message

    latin1 = build_config(overrides={"data": {**columns, "encoding": "latin-1"}})["data"]
    task = load_task(get_task(str(path)), latin1)
    texts = [t for split in SPLITS for t in task.splits[split]["text"]]
    assert sorted(texts) == sorted(frame["review"])


def test_an_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(UserError, match="^data.encoding must be a text encoding .* got 'latin-9000'$"):
        build_config(overrides={"data": {"encoding": "latin-9000"}})


def test_a_single_label_is_an_error_not_a_perfect_score(tmp_path: Path, data_cfg: dict) -> None:
    rows = pd.DataFrame({"text": [f"review {i}" for i in range(40)], "label": ["positive"] * 40})
    path = write_frame(rows, tmp_path / "one_label.csv")
    message = expect_error("^task 'one_label': every training example has the label 'positive'", str(path), data_cfg)
    assert "at least two labels" in message


def test_test_split_has_its_own_cap() -> None:
    data_cfg = build_config(overrides={"data": {"max_train_samples": 9, "max_eval_samples": 5}})["data"]

    def sizes(task) -> dict:
        return {split: len(rows) for split, rows in task.splits.items()}

    assert sizes(load_capped("rotten_tomatoes", data_cfg)) == {"train": 9, "validation": 5, "test": 5}
    data_cfg["max_test_samples"] = 7
    assert sizes(load_capped("rotten_tomatoes", data_cfg)) == {"train": 9, "validation": 5, "test": 7}
