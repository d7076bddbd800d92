"""The settings the training loop reads, taken once from the run's config into a typed dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from tunebench.config import Config
from tunebench.data import generate as generate_data


@dataclass(frozen=True)
class GenerationArgs:
    """Generate tasks only: how answers are scored and forgetting measured."""

    batch_size: int  # teacher forcing and batched greedy generation
    margin: int  # max_new_tokens = the longest reference answer + margin
    forgetting_texts: int  # IMDB reviews whose loss is measured before and after training; 0 = off
    forgetting_max_length: int  # tokens kept of each review
    choice_accuracy: bool  # score a closed-set task's candidate answers on test


@dataclass(frozen=True)
class TrainArgs:
    """What one run trains, how, and what it measures and keeps. Built once by from_config; config stays whole for
    what takes all of it (the method's build, the saved config.yaml, the trackers' hyper-parameters)."""

    config: Config
    seed: int
    method: str
    method_options: dict
    task: str
    model: str
    data: dict  # the data section, for loading and tokenizing the task
    generate: bool  # a generate task (a causal LM writes the answer) rather than classification
    max_length: int  # tokens per example (classification)
    group_by_length: bool  # training batches of similar length
    epochs: int
    max_steps: int | None  # stop after this many optimizer steps, whatever the epochs
    batch_size: int  # examples per micro-batch
    eval_batch_size: int
    grad_accum: int  # micro-batches per optimizer step
    lr: float
    weight_decay: float
    warmup_ratio: float  # of the optimizer steps
    scheduler: str  # linear | cosine | constant
    max_grad_norm: float | None  # 0 or None: no clipping
    optimizer: str  # adamw | adamw_8bit | paged_adamw_8bit
    adamw: str  # auto | fused | foreach | single_tensor
    precision: str  # a rule of tunebench.models.precision.RULES (auto resolved by training.run before)
    gradient_checkpointing: bool
    eval_every: int  # validate every N optimizer steps; 0: at the end of each epoch only
    log_every: int  # optimizer steps between loss records
    trackers: list  # Accelerate tracker names
    save: str  # best_and_last | best | none
    metrics: list  # extra `evaluate` metrics
    track_memory: bool  # the tensor tracker's breakdown
    memory_cap: int | None  # bytes; past it the tracker raises torch.OutOfMemoryError
    generation: GenerationArgs

    @classmethod
    def from_config(cls, cfg: Config) -> TrainArgs:
        data, train, gen = cfg["data"], cfg["train"], cfg["generation"]
        return cls(
            config=cfg,
            seed=cfg["seed"],
            method=cfg["method"],
            method_options=cfg["method_options"],
            task=cfg["task"],
            model=cfg["model"],
            data=data,
            generate=generate_data.is_generate(cfg),
            max_length=data["max_length"],
            group_by_length=data["group_by_length"],
            epochs=train["epochs"],
            max_steps=train["max_steps"],
            batch_size=train["batch_size"],
            eval_batch_size=train["eval_batch_size"],
            grad_accum=train["grad_accum"],
            lr=train["lr"],
            weight_decay=train["weight_decay"],
            warmup_ratio=train["warmup_ratio"],
            scheduler=train["scheduler"],
            max_grad_norm=train["max_grad_norm"],
            optimizer=train["optimizer"],
            adamw=train["adamw"],
            precision=train["precision"],
            gradient_checkpointing=train["gradient_checkpointing"],
            eval_every=train["eval_every"],
            log_every=train["log_every"],
            trackers=train["trackers"],
            save=train["save"],
            metrics=cfg["metrics"],
            track_memory=cfg["measure"]["track_memory"],
            memory_cap=cfg["measure"]["memory_cap"],
            generation=GenerationArgs(
                batch_size=gen["batch_size"],
                margin=gen["margin"],
                forgetting_texts=gen["forgetting_texts"],
                forgetting_max_length=gen["forgetting_max_length"],
                choice_accuracy=gen["choice_accuracy"],
            ),
        )
