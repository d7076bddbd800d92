"""Run by tests/test_loop.py under torchrun (two gloo CPU processes): one head run with cached features.

Each process writes the dataset indices of the training batches it collated, in order, to OUT/batches-RANK.json.
Usage: two_process_train.py OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunebench.config import build_config
from tunebench.data import batching
from tunebench.training.run import train

out = Path(sys.argv[1])
collated: list[list[int]] = []
feature_loader = batching.feature_loader


def recording_feature_loader(features, labels, batch_size, seed):
    loader = feature_loader(features, labels, batch_size, seed)
    if seed is not None:  # the training loader; evaluation loaders have no seed
        collate = loader.collate_fn

        def record(examples: list[dict]) -> dict:
            collated.append([int(e["index"]) for e in examples])
            return collate(examples)

        loader.collate_fn = record
    return loader


batching.feature_loader = recording_feature_loader
cfg = build_config(
    "head",
    "rotten_tomatoes",
    overrides={
        "data": {"max_train_samples": 32, "max_eval_samples": 16, "max_length": 32},
        "train": {
            "batch_size": 4,
            "epochs": 3,
            "max_steps": 10,
            "warmup_ratio": 0.25,
            "log_every": 1,
            "trackers": [],
            "save": "none",
        },
    },
)
train(cfg, out / "run")
(out / f"batches-{os.environ['RANK']}.json").write_text(json.dumps(collated))
