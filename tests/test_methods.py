"""Each method on the real MiniLM and a small real subset: what trains, what stays frozen, what is saved.

Every method trains once per session (`trained`); the tests assert on that one run. `train()` builds its
model inside; a spy around the method's `build` keeps the very object it trains and a snapshot taken
before the first step, so the frozen weights are compared with themselves, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import BALANCED_ACCURACY, write_frame
from sklearn.metrics import balanced_accuracy_score

from tunebench.config import build_config
from tunebench.data.tasks import get_task, load_capped, load_task
from tunebench.methods import get_method
from tunebench.models.hub import load_pretrained, load_tokenizer, resolve_model
from tunebench.results import final_result, read_result
from tunebench.training.evaluation import evaluate_run
from tunebench.training.run import train

pytestmark = pytest.mark.slow

# Per method: enough steps at a high enough rate that the training loss drops for sure on 32 examples.
# log_every 1: the train-loss curve then holds every step's loss.
SETTINGS = {
    "full": {"train": {"lr": 1e-4, "epochs": 3, "log_every": 1}},
    "lora": {"train": {"lr": 3e-3, "epochs": 3, "log_every": 1}},
    "qlora": {"train": {"lr": 3e-3, "epochs": 3, "log_every": 1}},
    # head trains on cached features, so its steps are nearly free; it runs on a local file task with its
    # own column names and string labels, and with an extra metric loaded from a local script
    "head": {
        "train": {"lr": 1e-2, "epochs": 10, "log_every": 1},
        "data": {"text_column": "review", "label_column": "sentiment"},
        "metrics": [str(BALANCED_ACCURACY)],
    },
}
METHODS = tuple(SETTINGS)


@dataclass
class TrainedRun:
    method: str
    cfg: dict
    run_dir: Path
    result: dict
    model: torch.nn.Module  # the object train() built and trained, holding the best weights at the end
    state_before: dict[str, torch.Tensor]  # its state_dict, cloned before the first step
    batch: dict[str, torch.Tensor]  # the training examples as one fixed batch
    loss_before: float  # on batch, before the first step


def fixed_batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    model.train(was_training)
    return loss


def _train_once(method: str, cfg: dict, run_dir: Path) -> TrainedRun:
    module = get_method(method)
    original_build = module.build
    seen: dict = {}

    def build_and_snapshot(model_path, num_labels, run_cfg, device):
        model = original_build(model_path, num_labels, run_cfg, device)
        task = load_capped(run_cfg["task"], run_cfg["data"])  # cut to max_train_samples, as the loop cuts it
        _, _, tokenizer = load_pretrained(run_cfg["model"])
        texts = list(task.splits["train"]["text"])
        max_length = run_cfg["data"]["max_length"]
        batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        batch["labels"] = torch.tensor(list(task.splits["train"]["label"]))
        seen.update(
            model=model,
            state_before={name: t.detach().clone() for name, t in model.state_dict().items()},
            batch=batch,
            loss_before=fixed_batch_loss(model, batch),
        )
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "build", build_and_snapshot)
        result = train(cfg, run_dir)
    return TrainedRun(method, cfg, run_dir, result, **seen)


@pytest.fixture(scope="session")
def head_task_file(tmp_path_factory, review_frame) -> Path:
    return write_frame(review_frame, tmp_path_factory.mktemp("head-task") / "reviews.jsonl")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_config, head_task_file) -> Callable[[str], TrainedRun]:
    """trained(method) -> that method's one run of the session, trained on first use."""
    runs: dict[str, TrainedRun] = {}

    def get(method: str) -> TrainedRun:
        if method not in runs:
            task = str(head_task_file) if method == "head" else "rotten_tomatoes"
            cfg = tiny_config(method, task, SETTINGS[method])
            runs[method] = _train_once(method, cfg, tmp_path_factory.mktemp(f"run-{method}"))
        return runs[method]

    return get


def _epoch_mean_losses(result: dict) -> list[float]:
    """Mean training loss per epoch; each epoch sees every training example once, in batches of one size."""
    losses = [point["loss"] for point in result["curves"]["train_loss"]]
    per_epoch = len(losses) // result["config"]["train"]["epochs"]
    return [float(np.mean(losses[i : i + per_epoch])) for i in range(0, len(losses), per_epoch)]


@pytest.mark.parametrize("method", METHODS)
def test_run_completes_and_loss_goes_down(trained, method: str) -> None:
    run = trained(method)
    assert run.result["status"] == "ok", run.result["error"]
    assert final_result(run.run_dir / "result.json") is not None
    assert read_result(run.run_dir / "result.json")["test_accuracy"] == run.result["test_accuracy"]

    epochs = _epoch_mean_losses(run.result)
    assert len(epochs) == run.cfg["train"]["epochs"]
    assert epochs[-1] < epochs[0]
    # the same examples, evaluation mode, before the first step and with the weights the run kept
    loss_after = fixed_batch_loss(run.model, run.batch)
    assert loss_after < run.loss_before - 0.01, (run.loss_before, loss_after)


@pytest.mark.parametrize("method", METHODS)
def test_run_folder_holds_what_the_run_promises(trained, method: str) -> None:
    run = trained(method)
    # the config as it ran: train.precision auto resolved (on the CPU, fp32)
    ran = run.cfg | {"train": run.cfg["train"] | {"precision": "fp32"}}
    assert run.cfg["train"]["precision"] == "auto"
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text()) == ran
    assert (run.run_dir / "best").is_dir() and (run.run_dir / "last").is_dir()
    predictions = json.loads((run.run_dir / "test_predictions.json").read_text())
    assert len(predictions) == run.result["task"]["sizes"]["test"] == (20 if method == "head" else 32)
    assert set(predictions) <= {0, 1}
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    assert run.result["trainable_params"] == trainable
    assert run.result["optimizer_steps"] == len(run.result["curves"]["train_loss"])
    assert 0 < run.result["checkpoint_bytes"]
    assert not list(run.run_dir.glob("*.partial")), "a checkpoint folder was left half-written"


def test_full_changes_the_backbone(trained) -> None:
    run = trained("full")
    params = dict(run.model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    backbone = [name for name in params if not name.startswith("classifier.")]
    changed = [name for name in backbone if not torch.equal(params[name].detach(), run.state_before[name])]
    assert len(changed) == len(backbone), sorted(set(backbone) - set(changed))[:5]
    assert run.result["trainable_params"] == run.result["total_params"]
    # the memory trace saw the backbone's activations that the head method never keeps (test below)
    assert run.result["memory"]["tensor"]["max_by_category"]["activations"] > 4 * 2**20


def _is_adapter_or_head(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_leave_the_base_bit_identical(trained, method: str) -> None:
    run = trained(method)
    trainable = [name for name, p in run.model.named_parameters() if p.requires_grad]
    assert trainable and all(_is_adapter_or_head(name) for name in trainable), trainable
    assert any("lora_B" in name for name in trainable)
    assert any("modules_to_save" in name and "classifier" in name for name in trainable)

    state = run.model.state_dict()
    base = [name for name in run.state_before if not _is_adapter_or_head(name)]
    assert len(base) > 100
    differ = [name for name in base if not torch.equal(state[name], run.state_before[name])]
    assert not differ, differ[:5]
    # and what trains did train: LoRA's B starts at zero, the head is random
    for name in trainable:
        if "lora_B" in name or "modules_to_save" in name:
            assert not torch.equal(state[name], run.state_before[name]), name


def test_qlora_base_is_packed_4bit(trained) -> None:
    import bitsandbytes as bnb

    run = trained("qlora")
    quantized = [m for m in run.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) >= 6 * 6  # query, key, value and three dense layers in each of six blocks
    names = [n for n, m in run.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert not [n for n in names if "pooler" in n or "classifier" in n]  # head and pooler stay unquantized
    for module in quantized:
        assert module.weight.dtype == torch.uint8 and module.weight.quant_state is not None
    # the snapshot above compared the packed storage itself, plus its quantization state
    assert any(name.endswith(".weight.absmax") for name in run.state_before)
    assert run.result["total_params"] > 22_000_000  # 4-bit weights count their real element count


def test_head_leaves_the_backbone_bit_identical(trained) -> None:
    run = trained("head")
    params = dict(run.model.named_parameters())
    assert sorted(name for name, p in params.items() if p.requires_grad) == ["classifier.bias", "classifier.weight"]
    assert run.result["trainable_params"] == 384 * 2 + 2
    for name, tensor in run.model.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, run.state_before[name]), name
    assert not torch.equal(params["classifier.weight"].detach(), run.state_before["classifier.weight"])
    assert run.result["setup_seconds"] > 0  # the feature cache counts as training time
    # with cached features the training loop never ran the backbone: its memory trace holds no activations
    assert run.result["memory"]["tensor"]["max_by_category"]["activations"] < 64 * 1024


class SavedTensors:
    """Counts the tensors autograd saves for backward while active (torch.autograd.graph.saved_tensors_hooks)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(tensor.shape))
        return tensor

    def __enter__(self) -> SavedTensors:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def test_head_backbone_saves_no_activations(trained, tiny_config) -> None:
    head = trained("head")
    batch = head.batch
    seq_len = batch["input_ids"].shape[1]
    head.model.train()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    with SavedTensors() as backbone_saved:
        features = head.model.features(**inputs)
    assert backbone_saved.shapes == []
    assert not features.requires_grad

    with SavedTensors() as head_saved:
        loss = head.model(**batch).loss
    loss.backward()
    # dropout, the Linear head and the loss save a few (batch, hidden|labels) tensors; nothing per token
    assert 0 < len(head_saved.shapes) <= 8, head_saved.shapes
    assert all(seq_len not in shape[1:] for shape in head_saved.shapes), head_saved.shapes
    assert all(p.grad is None for p in head.model.backbone.parameters())
    head.model.zero_grad(set_to_none=True)

    full = trained("full")
    with SavedTensors() as full_saved:
        full.model(**batch).loss.backward()
    full.model.zero_grad(set_to_none=True)
    assert len(full_saved.shapes) > 100
    assert sum(len(shape) == 3 and shape[1] == seq_len for shape in full_saved.shapes) > 20

    # the counter does see a backbone that trains: a head model whose top layer is unfrozen
    cfg = tiny_config("head", overrides={"method_options": {"unfreeze_top": 1, "cache_features": False}})
    partly_frozen = get_method("head").build(resolve_model("minilm"), 2, cfg, torch.device("cpu"))
    with SavedTensors() as top_saved:
        partly_frozen.features(**inputs)
    assert 10 < len(top_saved.shapes) < len(full_saved.shapes) / 3


@pytest.mark.parametrize("method", METHODS)
def test_eval_reproduces_the_test_predictions(trained, method: str) -> None:
    run = trained(method)
    report = evaluate_run(run.run_dir)
    assert report["agreement_with_training"] == 1.0
    assert report["accuracy"] == run.result["test_accuracy"]
    assert report["f1_macro"] == run.result["test_f1"]


def test_extra_metric_from_a_local_script(trained) -> None:
    run = trained("head")
    predictions = np.array(json.loads((run.run_dir / "test_predictions.json").read_text()))
    task = load_task(get_task(run.cfg["task"]), run.cfg["data"])
    assert task.label_names == ["negative", "positive"]
    labels = np.array(task.splits["test"]["label"])
    expected = balanced_accuracy_score(labels, predictions)
    assert run.result["test"]["balanced_accuracy"] == pytest.approx(expected)
    assert "balanced_accuracy" in run.result["curves"]["validation"][-1]


def test_each_run_logs_to_its_own_file(trained) -> None:
    for method in METHODS:
        trained(method)
    for method in METHODS:
        log = (trained(method).run_dir / "train.log").read_text()
        assert f"{method} on " in log
        others = [m for m in METHODS if m != method and f"\n{m} on " in "\n" + _messages(log)]
        assert not others, f"{method}'s train.log also holds the runs of {others}"


def _messages(log: str) -> str:
    """The message part of each log line (after 'date time LEVEL ')."""
    return "\n".join(line.split(" ", 3)[-1] for line in log.splitlines())


# -- any peft config from YAML ----------------------------------------------------------------------


def test_ia3_from_a_yaml_peft_config_trains_saves_and_reloads(tmp_path: Path, tiny_config) -> None:
    user_file = tmp_path / "ia3.yaml"
    user_file.write_text(
        "method: lora\n"
        "train: {lr: 1.0e-2, max_steps: 2, save: best}\n"
        "data: {max_train_samples: 32, max_eval_samples: 32, max_length: 32}\n"
        "method_options:\n"
        "  peft_config:\n"
        "    peft_type: IA3\n"
        "    target_modules: [key, value, output.dense]\n"
        "    feedforward_modules: [output.dense]\n"
    )
    cfg = build_config(user_file=user_file, overrides={"train": {"trackers": [], "batch_size": 16}})
    assert cfg["method"] == "lora" and cfg["method_options"]["peft_config"]["peft_type"] == "IA3"
    run_dir = tmp_path / "run"
    result = train(cfg, run_dir)
    assert result["status"] == "ok"
    adapter = json.loads((run_dir / "best" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3"
    assert not (run_dir / "last").exists()  # save: best
    # IA3 scales key, value and the dense outputs (16,128 values) and trains the 2-label head (770)
    assert result["trainable_params"] == 16_128 + 770
    assert evaluate_run(run_dir)["agreement_with_training"] == 1.0


def test_dora_via_use_dora_trains_magnitudes(tiny_config) -> None:
    cfg = tiny_config("lora", overrides={"method_options": {"use_dora": True, "r": 4, "target_modules": ["query"]}})
    path = resolve_model("minilm")
    tokenizer = load_tokenizer(path, "bert")
    model = get_method("lora").build(path, 2, cfg, torch.device("cpu"))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_magnitude_vector" in name for name in trainable) == 6  # one per query layer
    assert all(_is_adapter_or_head(name) for name in trainable)
    batch = dict(tokenizer(["a fine film", "a dull mess"], padding=True, return_tensors="pt"))
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_qlora_8bit_base_stays_int8_and_bit_identical(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config("qlora", "rotten_tomatoes", {**SETTINGS["qlora"], "method_options": {"bits": 8}})
    run = _train_once("qlora", cfg, tmp_path / "run")
    assert run.result["status"] == "ok", run.result["error"]
    int8 = [n for n, p in run.model.named_parameters() if p.dtype == torch.int8]
    assert len(int8) >= 36  # q, k, v, attention output, intermediate, output in each of the 6 layers
    assert not any("classifier" in n or "pooler" in n for n in int8)  # the head stays unquantized
    state = run.model.state_dict()
    base = [name for name in run.state_before if not _is_adapter_or_head(name)]
    assert not [name for name in base if not torch.equal(state[name], run.state_before[name])]
    assert evaluate_run(run.run_dir)["agreement_with_training"] == 1.0


@pytest.mark.parametrize("pooling", [None, "cls"])
def test_every_method_builds_one_classifier_with_the_shared_pooling(tiny_config, pooling) -> None:
    """full, lora and head pool the same backbone output the same way: null is what the checkpoint was trained
    with (its sentence-transformers pooling config says mean), derived here by hand from AutoModel."""
    from transformers import AutoModel

    path = resolve_model("minilm")
    tokenizer = load_tokenizer(path, "bert")
    batch = tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    hidden = AutoModel.from_pretrained(path).eval()(**batch).last_hidden_state.detach()
    trained_with = json.loads(Path(path, "1_Pooling", "config.json").read_text())
    assert trained_with["pooling_mode_mean_tokens"] and not trained_with["pooling_mode_cls_token"]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    for method in ("full", "lora", "qlora", "head") if pooling is None else ("lora", "head"):
        cfg = tiny_config(method, overrides={"pooling": pooling})
        model = get_method(method).build(path, 2, cfg, torch.device("cpu")).eval()
        classifier = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert (classifier.pooling, classifier.classifier.out_features) == (pooling or "mean", 2), method
        assert classifier.backbone.pooler is None, method  # BERT's pooler is not part of any method's model
        if method != "qlora":  # qlora's backbone is 4-bit: its features differ by the quantization error
            with torch.no_grad():
                features = classifier.features(**batch)
            torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5, msg=method)
