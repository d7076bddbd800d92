"""Task kinds: what differs between classifying and generating, owned by one object per kind.

A kind tokenizes the task, makes the loaders, evaluates a split and adds its own result fields; the loop
calls the same methods whatever the kind. Classify: text -> label, evaluated sharded over prepared loaders.
CachedFeatures (a Classify): the head method's frozen backbone runs once over each split and the head trains
on its pooled features. Generate: prompt -> answer written by a causal LM, loss on the answer only, scored on
what it generates (the processes share the batches) and measured for forgetting from the unmodified checkpoint.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from tunebench.data import batching
from tunebench.data import generate as generate_data
from tunebench.measure import StepMeter
from tunebench.models.causal_lm import check_causal_lm
from tunebench.training import classify_eval, generate_eval
from tunebench.training.args import TrainArgs
from tunebench.training.forgetting import ForgettingProbe


class TaskKind(Protocol):
    encoded: dict  # split name -> tokenized examples
    tokens_outside_steps: int  # non-padding tokens the backbone ran over outside the steps (training work)

    def encode(self, task, model_path: str, model_config, result: dict) -> None: ...
    def before_model(self, accelerator: Accelerator) -> None: ...
    def model_ready(self, model, accelerator: Accelerator, result: dict) -> None: ...
    def train_loader(self, model, accelerator: Accelerator, meter: StepMeter): ...
    def evaluate(self, split: str, model, accelerator: Accelerator, extra_metrics: list) -> tuple[dict, np.ndarray]: ...
    def test_fields(self, test_metrics: dict, predictions: np.ndarray, model) -> dict: ...


def task_kind(args: TrainArgs, method, tokenizer) -> TaskKind:
    """The kind this run's task and method make."""
    if args.generate:
        return Generate(args, tokenizer)
    if args.method_options.get("cache_features") and hasattr(method, "cache_features"):
        return CachedFeatures(args, tokenizer, method)
    return Classify(args, tokenizer)


def evaluation_kind(args: TrainArgs, tokenizer) -> Classify | Generate:
    """The kind `tunebench eval` scores a saved run's split with: the whole reloaded model (no feature cache); on a
    generate task, choice accuracy on whichever split it is asked for."""
    if args.generate:
        return Generate(args, tokenizer, choice_splits=("validation", "test"))
    return Classify(args, tokenizer)


class Classify:
    """Text -> label: dynamically padded batches, evaluated by argmax over prepared (sharded) loaders."""

    tokens_outside_steps = 0

    def __init__(self, args: TrainArgs, tokenizer):
        self.args, self.tokenizer = args, tokenizer
        self.encoded: dict = {}
        self.eval_loaders: dict = {}

    def encode(self, task, model_path: str, model_config, result: dict) -> None:
        self.encoded = batching.tokenize(task.splits, self.tokenizer, self.args.max_length)

    def before_model(self, accelerator: Accelerator) -> None:
        """Nothing to measure on the unmodified checkpoint."""

    def model_ready(self, model, accelerator: Accelerator, result: dict) -> None:
        """Nothing to measure before training."""

    def train_loader(self, model, accelerator: Accelerator, meter: StepMeter):
        """The prepared training loader; the validation and test loaders are kept for evaluate."""
        args = self.args
        loader = batching.train_loader(
            self.encoded["train"], self.tokenizer, args.batch_size, args.seed, args.group_by_length
        )
        loaders = {name: self._eval_loader(name) for name in ("validation", "test")}
        return self._prepare(accelerator, loader, loaders)

    def prepare_split(self, model, accelerator: Accelerator, split: str):
        """For `tunebench eval`: the model and the split's loader prepared (no training loader); returns the model."""
        model, self.eval_loaders[split] = accelerator.prepare(model, self._eval_loader(split))
        return model

    def _eval_loader(self, split: str):
        return batching.eval_loader(self.encoded[split], self.tokenizer, self.args.eval_batch_size)

    def _prepare(self, accelerator: Accelerator, train_loader, eval_loaders: dict):
        train_loader = accelerator.prepare(train_loader)
        self.eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
        return train_loader

    def evaluate(self, split: str, model, accelerator: Accelerator, extra_metrics: list) -> tuple[dict, np.ndarray]:
        return classify_eval.evaluate(model, self.eval_loaders[split], accelerator, extra_metrics)

    def test_fields(self, test_metrics: dict, predictions: np.ndarray, model) -> dict:
        """The per-example outcomes a paired comparison of methods needs: prediction == label."""
        labels = np.asarray(self.encoded["test"]["label"])
        return per_example_fields((predictions == labels).astype(int).tolist())


class CachedFeatures(Classify):
    """The head method with cache_features: the frozen backbone runs once over each split (processes share each
    split); from then on the head trains and is evaluated on the pooled features."""

    def __init__(self, args: TrainArgs, tokenizer, method):
        super().__init__(args, tokenizer)
        self.method = method

    def train_loader(self, model, accelerator: Accelerator, meter: StepMeter):
        args = self.args
        labels = {name: torch.tensor(split["label"]) for name, split in self.encoded.items()}
        features = {}
        for name, split in self.encoded.items():
            start = time.perf_counter()
            features[name] = cached_features(
                self.method, model, split, name, self.tokenizer, args.eval_batch_size, accelerator
            )
            if name == "train":
                meter.setup_seconds = time.perf_counter() - start  # part of the head method's training
                self.tokens_outside_steps = sum(split["length"])
        loader = batching.feature_loader(features["train"], labels["train"], args.batch_size, args.seed)
        loaders = {
            name: batching.feature_loader(features[name], labels[name], args.eval_batch_size, None)
            for name in ("validation", "test")
        }
        return self._prepare(accelerator, loader, loaders)


def cached_features(
    method, model, split, name: str, tokenizer, batch_size: int, accelerator: Accelerator
) -> torch.Tensor:
    """The method's pooled backbone features of every example in split, in dataset order, on the CPU.
    Each process embeds its share of the batches."""
    loader = accelerator.prepare(batching.eval_loader(split, tokenizer, batch_size))
    loader = tqdm(loader, desc=f"features {name}", disable=not accelerator.is_main_process)
    features, index = method.cache_features(accelerator.unwrap_model(model), loader, accelerator.device)
    [features] = classify_eval.in_dataset_order(accelerator, index, features)
    return features


class Generate:
    """Prompt -> answer (decoder LLMs): loss on the answer only; scored outside the prepared loaders on what the
    model generates, the batches shared between the processes; forgetting measured on the same tokens on the
    unmodified checkpoint, on the model the method built, and after training."""

    tokens_outside_steps = 0

    def __init__(self, args: TrainArgs, tokenizer, choice_splits: tuple[str, ...] = ("test",)):
        self.args, self.tokenizer = args, tokenizer
        # the loop ranks the candidates on test only: validation selects on exact match, and scoring every
        # candidate there would only add cost
        self.choice_splits = choice_splits
        self.encoded: dict = {}
        self.model_path = ""
        self.forgetting: ForgettingProbe | None = None
        self.choices: generate_data.Choices | None = None
        self.choice_correct: dict[str, list[int]] = {}  # split -> the last evaluation's choice outcomes
        self.trains = True  # whether the built model has anything to train

    def encode(self, task, model_path: str, model_config, result: dict) -> None:
        check_causal_lm(model_path, model_config)
        self.model_path = model_path
        self.encoded, result["too_long_dropped"] = generate_data.tokenize(task.splits, self.tokenizer, self.args.data)
        self.choices = task.choices if self.args.generation.choice_accuracy else None
        if self.choices:
            result["choice"] = self.choices.summary()

    def before_model(self, accelerator: Accelerator) -> None:
        """Forgetting's loss on the unmodified checkpoint, loaded, measured and freed here."""
        self.forgetting = ForgettingProbe(self.tokenizer, self.args.generation, accelerator.device)
        self.forgetting.measure_original(self.model_path, self.args.precision, accelerator.autocast())

    def model_ready(self, model, accelerator: Accelerator, result: dict) -> None:
        result["lm_head_untied"] = getattr(model, "lm_head_untied", False)
        self.trains = result["trainable_params"] > 0
        self.forgetting.measure_built(accelerator.unwrap_model(model))

    def train_loader(self, model, accelerator: Accelerator, meter: StepMeter):
        args = self.args
        loader = batching.train_loader(
            self.encoded["train"],
            self.tokenizer,
            args.batch_size,
            args.seed,
            args.group_by_length,
            collate_fn=generate_data.collate(self.tokenizer.pad_token_id),
        )
        return accelerator.prepare(loader)

    def prepare_split(self, model, accelerator: Accelerator, split: str):
        """For `tunebench eval`: the model prepared; generation reads the split itself."""
        return accelerator.prepare(model)

    def evaluate(self, split: str, model, accelerator: Accelerator, extra_metrics: list) -> tuple[dict, np.ndarray]:
        """Generation metrics, and on choice_splits choice accuracy for a closed-set task; extra (classification)
        metrics do not apply."""
        model, gen = accelerator.unwrap_model(model), self.args.generation
        metrics, outputs = generate_eval.evaluate(
            model, self.encoded[split], self.tokenizer, gen.batch_size, gen.margin, accelerator.device
        )
        if self.choices and split in self.choice_splits:
            self.choice_correct[split] = generate_eval.choice_correct(
                model, self.encoded[split], self.tokenizer, self.choices.candidates, gen.batch_size, accelerator.device
            )
            metrics["choice_accuracy"] = float(np.mean(self.choice_correct[split]))
        return metrics, outputs

    def test_fields(self, test_metrics: dict, predictions: np.ndarray, model) -> dict:
        return {
            **generate_eval.result_fields(test_metrics),
            "sample_generations": generate_eval.samples(self.encoded["test"], predictions),
            "forgetting": self.forgetting.result(model, self.trains),
            "forgetting_seconds": self.forgetting.seconds,
            **per_example_fields(generate_eval.exact_matches(self.encoded["test"], predictions)),
            **self._choice_fields(test_metrics),
        }

    def _choice_fields(self, test_metrics: dict) -> dict:
        """test_choice_accuracy and test_choice_correct (0/1 per test example, dataset order, as test_correct)."""
        if not self.choices:
            return {}
        return {
            "test_choice_accuracy": test_metrics["choice_accuracy"],
            "test_choice_correct": self.choice_correct["test"],
        }


def per_example_fields(correct: list[int]) -> dict:
    """test_correct (0/1 per test example, dataset order) and test_size: what the report pairs methods on."""
    return {"test_correct": correct, "test_size": len(correct)}
