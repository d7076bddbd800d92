"""Config layering: defaults.yaml -> method DEFAULTS -> task -> user file -> --set; unknown keys fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench import CONFIG_DIR
from tunebench.config import build_config, merge, parse_set
from tunebench.errors import UserError
from tunebench.files import read_yaml
from tunebench.methods import get_method, registry


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_alone() -> None:
    defaults = read_yaml(CONFIG_DIR / "defaults.yaml")
    cfg = build_config()
    assert cfg["method"] == defaults["method"] == "lora"
    assert cfg["task"] == defaults["task"] == "rotten_tomatoes"
    assert cfg["data"] == defaults["data"]
    assert cfg["train"]["batch_size"] == defaults["train"]["batch_size"]


@pytest.mark.parametrize("method", sorted(set(registry()) - {"none"}))  # none trains nothing: it has no rate
def test_method_layer_sets_its_rate_and_options(method: str) -> None:
    spec = get_method(method)
    cfg = build_config(method, "rotten_tomatoes")
    assert cfg["train"]["lr"] == spec.DEFAULTS["train"]["lr"]
    assert cfg["method_options"] == spec.DEFAULTS["method_options"]


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    # head sets its own lr and weight decay over the defaults; banking77 sets epochs 3 over 1; imdb max_length 256
    head_lr = get_method("head").DEFAULTS["train"]["lr"]
    assert head_lr != read_yaml(CONFIG_DIR / "defaults.yaml")["train"]["lr"]
    cfg = build_config("head", "banking77")
    assert (cfg["train"]["lr"], cfg["train"]["weight_decay"], cfg["train"]["epochs"]) == (head_lr, 0.0, 3)
    assert build_config("head", "imdb")["data"]["max_length"] == 256

    user = write(tmp_path / "user.yaml", "train: {epochs: 5, lr: 1e-4}\ndata: {max_length: 128}\n")
    cfg = build_config("head", "banking77", user)
    assert (cfg["train"]["epochs"], cfg["train"]["lr"], cfg["data"]["max_length"]) == (5, 1e-4, 128)
    assert cfg["train"]["weight_decay"] == 0.0  # untouched keys keep the method's value

    cfg = build_config("head", "banking77", user, parse_set(["train.epochs=7", "pooling=cls"]))
    assert (cfg["train"]["epochs"], cfg["train"]["lr"], cfg["pooling"]) == (7, 1e-4, "cls")
    assert cfg["method_options"] == get_method("head").DEFAULTS["method_options"]


def test_generate_defaults_apply_to_generate_tasks_only_and_yield_to_later_layers(tmp_path: Path) -> None:
    head = get_method("head")
    generate_lr = head.GENERATE_DEFAULTS["train"]["lr"]
    assert generate_lr != head.DEFAULTS["train"]["lr"]
    assert build_config("head", "rotten_tomatoes")["train"]["lr"] == head.DEFAULTS["train"]["lr"]
    assert build_config("head", "rotten_tomatoes_gen")["train"]["lr"] == generate_lr
    # a classification task made generate by the user's file gets them too; the file's own lr still wins
    user = write(tmp_path / "user.yaml", "data: {task_type: generate, answer_column: label}\n")
    assert build_config("head", "rotten_tomatoes", user)["train"]["lr"] == generate_lr
    cfg = build_config("head", "rotten_tomatoes_gen", overrides=parse_set(["train.lr=3e-3"]))
    assert cfg["train"]["lr"] == 3e-3
    cfg = build_config("head", "rotten_tomatoes_gen", layers=[("grid", {"train": {"lr": 7e-4}})])
    assert cfg["train"]["lr"] == 7e-4


def test_method_and_task_from_the_user_file_or_overrides(tmp_path: Path) -> None:
    user = write(tmp_path / "user.yaml", "method: head\ntask: banking77\n")
    cfg = build_config(user_file=user)
    head_lr = get_method("head").DEFAULTS["train"]["lr"]
    assert (cfg["method"], cfg["task"], cfg["train"]["lr"], cfg["train"]["epochs"]) == ("head", "banking77", head_lr, 3)
    cfg = build_config(user_file=user, overrides={"method": "full"})
    assert (cfg["method"], cfg["train"]["lr"]) == ("full", 5e-5)
    # the explicit arguments win, and the run keeps the options of the method and task it runs
    cfg = build_config("qlora", "imdb", user)
    assert (cfg["method"], cfg["task"], cfg["data"]["max_length"]) == ("qlora", "imdb", 256)
    assert cfg["method_options"] == get_method("qlora").DEFAULTS["method_options"]


def test_values_take_the_type_of_their_default() -> None:
    # YAML 1.1 reads 5e-5 (no dot) as a string; the config makes it the float it means
    cfg = build_config("full", overrides=parse_set(["train.lr=5e-5", "train.epochs=2.0", "seed=7"]))
    assert cfg["train"]["lr"] == 5e-5 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 2 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["seed"] == 7


def test_free_form_leaves_accept_mappings_and_lists() -> None:
    peft = {"peft_type": "IA3", "target_modules": ["key", "value"], "feedforward_modules": []}
    cfg = build_config("lora", overrides={"method_options": {"peft_config": peft}, "metrics": ["a/b"]})
    assert cfg["method_options"]["peft_config"] == peft
    assert cfg["metrics"] == ["a/b"]
    assert parse_set(["train.trackers=[]", "data.max_train_samples="]) == {
        "train": {"trackers": []},
        "data": {"max_train_samples": None},
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train": {"lrr": 1}}, "unknown config key 'train.lrr' in command-line overrides; valid keys here: "),
        ({"trian": {"lr": 1}}, "unknown config key 'trian'"),
        ({"method_options": {"rank": 8}}, "unknown config key 'method_options.rank'"),
        ({"train": 3}, "config key 'train' in command-line overrides must be a mapping"),
        ({"train": {"lr": "fast"}}, "config key 'train.lr' must be a number, got 'fast'"),
        (
            {"train": {"gradient_checkpointing": "yes please"}},
            "config key 'train.gradient_checkpointing' must be true or false",
        ),
        ({"train": {"scheduler": "step"}}, "train.scheduler must be one of linear, cosine, constant, got 'step'"),
        ({"train": {"epochs": 0}}, "train.epochs must be a positive integer, got 0"),
        ({"train": {"epochs": 1.5}}, "train.epochs must be a positive integer, got 1.5"),
        ({"train": {"lr": -1}}, "train.lr must be positive"),
        ({"data": {"max_train_samples": "all"}}, "data.max_train_samples must be a positive integer or null"),
        ({"data": {"max_eval_samples": 0}}, "data.max_eval_samples must be a positive integer or null"),
        ({"train": {"max_steps": -5}}, "train.max_steps must be a positive integer or null"),
        ({"measure": {"memory_cap": "1GB"}}, "measure.memory_cap must be a positive number of bytes or null"),
        ({"head_dropout": 1.0}, "head_dropout must be a number in [0, 1) or null, got 1.0"),
        ({"pooling": "max"}, "pooling must be one of mean, cls, last or null, got 'max'"),
    ],
)
def test_bad_values_are_user_errors(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match="^" + _escaped(message)) as error:
        build_config("lora", "rotten_tomatoes", overrides=overrides)
    assert "\n" not in str(error.value)


def test_unknown_key_error_lists_the_valid_keys() -> None:
    with pytest.raises(UserError) as error:
        build_config("head", overrides={"method_options": {"r": 8}})
    assert str(error.value).endswith("valid keys here: cache_features, unfreeze_top")


def test_unknown_key_in_the_user_file_names_the_file(tmp_path: Path) -> None:
    user = write(tmp_path / "typo.yaml", "data:\n  max_lenght: 32\n")
    with pytest.raises(UserError, match=f"unknown config key 'data.max_lenght' in {_escaped(str(user))}"):
        build_config(user_file=user)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [1, 2", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping of keys, not list"),
    ],
)
def test_bad_user_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_config(user_file=write(tmp_path / "bad.yaml", text))


def test_missing_user_file() -> None:
    with pytest.raises(UserError, match="config file not found: /no/such/file.yaml"):
        build_config(user_file="/no/such/file.yaml")


def test_empty_user_file_changes_nothing(tmp_path: Path) -> None:
    assert build_config(user_file=write(tmp_path / "empty.yaml", "")) == build_config()


@pytest.mark.parametrize("item", ["train.lr", "=3", "nothing"])
def test_parse_set_needs_key_equals_value(item: str) -> None:
    with pytest.raises(UserError, match="--set takes key=value"):
        parse_set([item])


def test_merge_does_not_modify_its_inputs() -> None:
    base = {"a": {"b": 1, "c": 2}}
    layer = {"a": {"b": 5}}
    assert merge(base, layer, "test") == {"a": {"b": 5, "c": 2}}
    assert base == {"a": {"b": 1, "c": 2}} and layer == {"a": {"b": 5}}


def test_unknown_method_and_task_list_the_choices() -> None:
    # the methods and every variant (configs/variants.yaml), sorted
    with pytest.raises(
        UserError, match="^unknown method 'lorra'; choose one of: adalora, boft, dora, fourierft, full, head, .*"
    ):
        build_config("lorra")
    with pytest.raises(
        UserError,
        match="^unknown task 'rotten'; choose one of: .*banking77, banking77_gen, imdb, rotten_tomatoes, "
        "rotten_tomatoes_gen",
    ):
        build_config("lora", "rotten")


def _escaped(text: str) -> str:
    import re

    return re.escape(text)
