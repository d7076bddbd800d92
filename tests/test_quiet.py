"""Quiet by default: a train shows its bar, one model note and the result; -v shows everything."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from transformers.utils.loading_report import LoadStateDictInfo

from tunebench.cli import main
from tunebench.quiet import quiet

TINY = ["--max-train-samples", "32", "--max-eval-samples", "16", "--max-length", "32", "--batch-size", "16"]
TRAIN = [
    "train",
    "--method",
    "lora",
    *TINY,
    "--max-steps",
    "2",
    "--set",
    "train.trackers=[]",
    "--set",
    "train.save=none",
]


def transformers_report(missing: set[str] = frozenset(), unexpected: set[str] = frozenset()) -> str:
    """The load report exactly as transformers words it."""
    info = LoadStateDictInfo(set(missing), set(unexpected), set(), [], {}, set())
    return "BertForSequenceClassification LOAD REPORT from: /m\n" + info.create_loading_report()


def test_default_train_prints_the_bar_a_model_note_and_the_result(capfd, tmp_path) -> None:
    assert main([*TRAIN, "--out", str(tmp_path / "quiet")]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("lora on rotten_tomatoes: test accuracy ") and out.count("\n") == 1
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0] == (
        "minilm: pretrained backbone; new classification head for rotten_tomatoes "
        "(it starts from random weights and trains with every method)"
    )
    assert all(line.startswith("lora rotten_tomatoes: ") for line in lines[1:]), err  # the training bar only
    assert "LOAD REPORT" not in err and "Warning" not in err

    assert main(["-v", *TRAIN, "--out", str(tmp_path / "verbose")]) == 0
    _, err = capfd.readouterr()
    assert "tokenize train" in err and "Loading weights" in err


def test_unexpected_warnings_and_reports_stay_visible() -> None:
    logger = logging.getLogger("transformers.modeling_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet():
                deprecated = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
                warnings.warn(deprecated, FutureWarning, stacklevel=1)
                warnings.warn("something nobody expected", FutureWarning, stacklevel=1)
                logger.warning(transformers_report(missing={"encoder.layer.0.output.dense.weight"}))
    finally:
        logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == ["something nobody expected"]
    assert len(seen) == 1 and "encoder.layer.0.output.dense.weight" in seen[0]


def test_a_dry_run_prints_only_the_suite(tmp_path) -> None:
    # a fresh process: bitsandbytes' notice comes once, on its first import (the suite's configs import it)
    command = [sys.executable, "-m", "tunebench.cli", "bench", "quick", "--dry-run", "--out", str(tmp_path / "q")]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and out.stdout.startswith("suite quick: 8 runs") and out.stderr == "", out.stderr
