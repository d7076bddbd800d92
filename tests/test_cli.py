"""The `tunebench` command: listings, a real train and eval, and bad input -> one line on stderr, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_frame

from tunebench.cli import main
from tunebench.files import CONFIG_DIR, read_yaml
from tunebench.methods import method_names
from tunebench.models.hub import EMBEDDED, describe_models
from tunebench.results import read_result

TINY_FLAGS = ["--max-train-samples", "32", "--max-eval-samples", "32", "--max-length", "32", "--batch-size", "16"]
QUIET = ["--set", "train.trackers=[]"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The error main() printed: one line, prefixed, last, no traceback (progress bars of the data and model
    loading may come before it when the error shows up only then)."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tunebench: error: "), err
    assert sum("tunebench:" in line for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


def test_tasks_lists_what_exists_and_whether_installed(capsys) -> None:
    code, out, _ = run_cli(capsys, "tasks")
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.strip().splitlines()}
    names = ("banking77", "banking77_gen", "imdb", "rotten_tomatoes", "rotten_tomatoes_gen")
    assert rows == dict.fromkeys(names, "installed")


def test_models_lists_what_exists_and_whether_installed(capsys) -> None:
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.strip().splitlines()}
    assert set(lines) == set(EMBEDDED)
    assert lines["minilm"].split()[1] == "ready"
    for row in describe_models():
        state = lines[row["name"]].split(None, 1)[1]
        if not row["installed"]:
            assert state.startswith(f"missing ({row['install']})")
        elif not row["prepared"]:
            assert state.startswith("installed, needs --prepare")


def test_train_then_eval_reproduces_predictions(capsys, tmp_path: Path) -> None:
    run_dir = tmp_path / "head-run"
    code, out, err = run_cli(capsys, "train", "--method", "head", *TINY_FLAGS, *QUIET, "--out", str(run_dir))
    assert code == 0, err
    assert out.startswith("head on rotten_tomatoes: test accuracy ")
    result = read_result(run_dir / "result.json")
    assert result["status"] == "ok"
    # the pooling that ran: MiniLM is a sentence-transformers checkpoint, trained with mean pooling
    assert result["config"]["pooling"] is None and result["model"]["pooling"] == "mean"

    code, out, err = run_cli(capsys, "eval", str(run_dir))
    assert code == 0, err
    report = json.loads(out)
    assert report["agreement_with_training"] == 1.0
    assert report["accuracy"] == read_result(run_dir / "result.json")["test_accuracy"]

    code, out, _ = run_cli(capsys, "eval", str(run_dir), "--split", "validation")
    assert code == 0 and "agreement_with_training" not in json.loads(out)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "--method", "lorra"],
            "unknown method 'lorra'; choose one of: adalora, boft, dora, fourierft, full, head",
        ),
        (
            ["train", "--task", "rotten"],
            "<task.yaml>, banking77, banking77_gen, imdb, rotten_tomatoes, rotten_tomatoes_gen",
        ),
        (["train", "--set", "train.lrr=1"], "unknown config key 'train.lrr' in command-line overrides; valid keys"),
        (["train", "--set", "method_options.pooling=max"], "unknown config key 'method_options.pooling'"),
        (
            ["train", "--method", "head", "--set", "pooling=max"],
            "pooling must be one of mean, cls, last or null, got 'max'",
        ),
        (["train", "--method", "qlora", "--set", "method_options.bits=3"], "method_options.bits must be 4 or 8, got 3"),
        (["train", "--set", "train.lr"], "--set takes key=value"),
        (["train", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["train", "--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
        (["train", "--max-train-samples", "0"], "data.max_train_samples must be a positive integer or null, got 0"),
        (
            ["train", "--set", "train.optimizer=sgd"],
            "train.optimizer must be one of adamw, adamw_8bit, paged_adamw_8bit",
        ),
        (["plan", "--set", "train.epochs=3"], "plan cannot honour the override train.epochs: it does not change one"),
        (["plan", "--set", "train.save=none"], "plan cannot honour the override train.save: "),
        (
            ["plan", "--set", "data.max_train_samples=8"],
            "step; the planner honours model, method, variants, task, pooling",
        ),
        (["plan", "--epochs", "3"], "plan cannot honour epochs (train.epochs): it does not change one training step"),
        (["plan", "--methods", "full,lora", "--set", "method_options.r=8"], "method_options.* overrides are one"),
        (["fly"], "argument command: invalid choice: 'fly'"),
        ([], "the following arguments are required: command"),
        (["eval", "/no/such/run"], "/no/such/run is not a run folder (no config.yaml)"),
        (["models", "--prepare", "gpt5"], "unknown model 'gpt5'; choose one of: minilm, mpnet-base, smollm2-135m"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path: Path, argv: list[str], expected: str) -> None:
    if argv and argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert expected in one_line_error(err)
    if argv and argv[0] == "train":
        assert not (tmp_path / "run").exists()  # refused before a run folder exists


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--model", "bert-tiny"],
            "unknown model 'bert-tiny'; choose one of: <hub id like org/name>, <local folder>, ",
        ),
        (["--model", "tunebench-tests/no-such-model"], "cannot load model 'tunebench-tests/no-such-model' from the "),
        (["--task", "tunebench-tests/no-such-data"], "cannot load hub dataset 'tunebench-tests/no-such-data' ("),
        (["--set", "metrics=[accuracy]"], "cannot load evaluate metric 'accuracy' (hub names need internet; a local"),
    ],
)
def test_bad_model_task_or_metric_fails_before_training(capsys, tmp_path: Path, flags, expected) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--method", "head", *TINY_FLAGS, *QUIET, *flags, "--out", str(run_dir))
    assert code == 2
    line = one_line_error(err)
    assert expected in line
    if "tunebench-tests/" in expected:
        assert "HF_HUB_OFFLINE" in line
    result = read_result(run_dir / "result.json")
    assert result["status"] == "failed" and result["error"] in line
    assert result.get("optimizer_steps") is None and not (run_dir / "best").exists()


def test_bad_data_fails_before_any_model_loads(capsys, tmp_path: Path, review_files: dict[str, Path]) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--task", str(review_files["parquet"]), *QUIET, "--out", str(run_dir))
    assert code == 2
    assert "split lacks column(s) ['text', 'label']" in one_line_error(err)
    result = read_result(run_dir / "result.json")
    assert result["status"] == "failed" and "model" not in result


def test_local_file_task_with_own_columns_from_the_command_line(capsys, tmp_path, review_files) -> None:
    run_dir = tmp_path / "run"
    columns = ["--set", "data.text_column=review", "--set", "data.label_column=sentiment"]
    argv = ["train", "--method", "head", "--task", str(review_files["csv"]), *TINY_FLAGS, *QUIET, *columns]
    code, out, err = run_cli(capsys, *argv, "--out", str(run_dir))
    assert code == 0, err
    result = read_result(run_dir / "result.json")
    assert result["task"] == {"name": "reviews", "num_labels": 2, "sizes": {"train": 32, "validation": 20, "test": 20}}


def test_eval_of_a_run_without_weights(capsys, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--method", "head", *TINY_FLAGS, *QUIET, "--set", "train.save=none", "--out", str(run_dir)
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", str(run_dir))
    assert code == 2
    assert "has no saved weights (best/); was it run with train.save=none?" in one_line_error(err)


def test_console_script_bad_input(tmp_path: Path) -> None:
    """The installed `tunebench` command itself: exit 2, the error as its last line, no traceback."""
    tunebench = Path(sys.executable).with_name("tunebench")
    done = subprocess.run(
        [str(tunebench), "train", "--method", "sft", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"tunebench: error: unknown method 'sft'; choose one of: {', '.join(sorted(method_names()))}"
    )
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_plan_flags_are_a_plan_request() -> None:
    """Every plan flag lands in PlanRequest's field of the same name (--seq-len: max_length, --set: overrides)."""
    from tunebench.cli import build_parser, plan_request
    from tunebench.planner.request import PlanRequest

    args = build_parser().parse_args(["plan", "--seq-len", "64", "--set", "train.grad_accum=2", "--gpus", "2"])
    assert plan_request(args) == PlanRequest(max_length=64, overrides=["train.grad_accum=2"], gpus=2)


# Every data.* and generation.* key of configs/defaults.yaml with its bad values (and train.log_every): refused
# by the config check, before a run folder exists. test_every_data_and_generation_key_has_bad_values keeps it whole.
BAD_VALUES = [
    ("data.text_column=", "data.text_column must be text, got None"),
    ("data.text_pair_column=[a]", "data.text_pair_column must be text or null, got ['a']"),
    ("data.label_column=label: x", "data.label_column must be text, got the mapping {'label': 'x'} (YAML reads"),
    ("data.encoding=klingon", "data.encoding must be a text encoding Python knows"),
    ("data.max_length=0", "data.max_length must be a positive integer, got 0"),
    ("data.max_length=1.5", "data.max_length must be a positive integer, got 1.5"),
    ("data.max_train_samples=-1", "data.max_train_samples must be a positive integer or null, got -1"),
    ("data.max_eval_samples=0.5", "data.max_eval_samples must be a positive integer or null, got 0.5"),
    ("data.max_test_samples=0", "data.max_test_samples must be a positive integer or null, got 0"),
    ("data.group_by_length=maybe", "config key 'data.group_by_length' must be true or false, got 'maybe'"),
    ("data.task_type=regress", "data.task_type must be one of classify, generate, got 'regress'"),
    ("data.prompt_column=7", "data.prompt_column must be text, got 7"),
    ("data.answer_column=", "data.answer_column must be text, got None"),
    ("data.messages_column=[]", "data.messages_column must be text, got []"),
    (
        "data.prompt_template=Review: {txt}",
        "data.prompt_template must be text, got the mapping {'Review': {'txt': None}} (YAML reads 'a: b' and {a} "
        "as mappings); quote the value: --set 'data.prompt_template=\"...\"'",
    ),
    ("data.prompt_template={text", "--set 'data.prompt_template={text': YAML cannot read the value ("),
    ("data.prompt_template='Review: {text'", "data.prompt_template 'Review: {text' has a stray brace ("),
    ("data.prompt_template='Review: text}'", "data.prompt_template 'Review: text}' has a stray brace ("),
    ("data.prompt_template='Review: {}'", "data.prompt_template 'Review: {}' has a field without a column name"),
    ("data.prompt_template=[a]", "data.prompt_template must be text or null, got ['a']"),
    ("data.chat_template=sometimes", "config key 'data.chat_template' must be true or false, got 'sometimes'"),
    ("data.too_long=truncate", "data.too_long must be one of error, drop, got 'truncate'"),
    ("generation.batch_size=0", "generation.batch_size must be a positive integer, got 0"),
    ("generation.batch_size=2.5", "generation.batch_size must be a positive integer, got 2.5"),
    ("generation.margin=-1", "generation.margin must be an integer >= 0, got -1"),
    ("generation.forgetting_texts=-1", "generation.forgetting_texts must be an integer >= 0, got -1"),
    ("generation.forgetting_max_length=0", "generation.forgetting_max_length must be a positive integer, got 0"),
    ("generation.choice_accuracy=maybe", "config key 'generation.choice_accuracy' must be true or false, got 'maybe'"),
    ("train.log_every=0", "train.log_every must be a positive integer, got 0"),
]


@pytest.mark.parametrize(("setting", "expected"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_bad_data_and_generation_values_exit_2_before_a_run_folder(capsys, tmp_path, setting, expected) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--task", "banking77_gen", "--set", setting, "--out", str(run_dir))
    assert code == 2
    assert expected in one_line_error(err)
    assert not run_dir.exists()


def test_every_data_and_generation_key_has_bad_values() -> None:
    defaults = read_yaml(CONFIG_DIR / "defaults.yaml")
    keys = {f"{section}.{key}" for section in ("data", "generation") for key in defaults[section]}
    assert keys <= {setting.partition("=")[0] for setting, _ in BAD_VALUES}


def test_template_naming_a_missing_column_says_which_and_which_exist(capsys, tmp_path, review_files) -> None:
    generate = ["--set", "data.task_type=generate", "--set", "data.answer_column=sentiment"]
    template = ["--set", "data.prompt_template='Review: {txt}'"]
    argv = ["train", "--model", "smollm2-135m", "--task", str(review_files["csv"]), *QUIET, *generate, *template]
    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "run"))
    assert code == 2
    assert one_line_error(err).endswith(
        "data.prompt_template names column(s) ['txt'] that task 'reviews' train split lacks; "
        "it has ['review', 'sentiment', 'critic_id']"
    )


def test_label_values_print_plain(capsys, tmp_path, review_frame) -> None:
    one_label = write_frame(review_frame.assign(sentiment=1), tmp_path / "same.csv")
    columns = ["--set", "data.text_column=review", "--set", "data.label_column=sentiment"]
    code, _, err = run_cli(capsys, "train", "--task", str(one_label), *QUIET, *columns, "--out", str(tmp_path / "r"))
    assert code == 2
    assert "every training example has the label 1; a classifier needs" in one_line_error(err)
