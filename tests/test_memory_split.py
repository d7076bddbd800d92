"""Memory, split: on CUDA the training steps' peak and evaluation's peak are kept apart, and the headline peak
(the report's memory axis) is the training steps'. The CUDA readings need a GPU (benchmarks/gpu_check.sh records
them); the bookkeeping around them runs here, on hand-written figures."""

from __future__ import annotations

import torch

from tunebench.measure import StepMeter, cuda_peak_fields
from tunebench.training import record

MiB = 2**20
# phase -> (max allocated, max reserved): the model alone (other), training, then a generation that needs more
PEAKS = {"other": (100 * MiB, 128 * MiB), "train": (300 * MiB, 384 * MiB), "eval": (500 * MiB, 512 * MiB)}


def test_cuda_fields_keep_the_training_and_evaluation_peaks_apart():
    fields = cuda_peak_fields(PEAKS, model_loaded_bytes=80 * MiB)
    assert fields == {
        "max_allocated_bytes": 500 * MiB,  # the whole run: evaluation's
        "max_reserved_bytes": 512 * MiB,
        "model_loaded_bytes": 80 * MiB,
        "max_allocated_above_model_bytes": 420 * MiB,
        "train_peak_bytes": 300 * MiB,
        "train_peak_reserved_bytes": 384 * MiB,
        "eval_peak_bytes": 500 * MiB,
        "eval_peak_reserved_bytes": 512 * MiB,
    }
    without_eval = cuda_peak_fields({"other": PEAKS["other"], "train": PEAKS["train"]}, model_loaded_bytes=80 * MiB)
    assert without_eval["eval_peak_bytes"] is None and without_eval["max_allocated_bytes"] == 300 * MiB


def test_the_headline_peak_on_cuda_is_the_training_steps_not_evaluation():
    memory = {"cuda": cuda_peak_fields(PEAKS, 80 * MiB), "tensor": {"peak_bytes": 7 * MiB}}
    headline = record.peak(memory)
    assert headline["peak_memory_bytes"] == 300 * MiB
    assert headline["peak_memory_source"] == "cuda_train_peak"
    assert "training steps" in headline["peak_memory_includes"]
    cpu = record.peak({"cuda": None, "tensor": {"peak_bytes": 7 * MiB}})
    assert (cpu["peak_memory_bytes"], cpu["peak_memory_source"]) == (7 * MiB, "tensor_tracker")
    assert "training steps" in cpu["peak_memory_includes"]


def test_meter_phases_nest_and_the_cpu_records_no_cuda_figures():
    meter = StepMeter(torch.device("cpu"))
    assert meter.enter("train") == "other"  # the model's load and build come before training
    with meter.phase("eval"):  # validation inside training
        assert meter.enter("eval") == "eval"
    assert meter.enter("other") == "train"  # training resumed after validation
    assert meter.cuda_peaks == {} and meter.summary()["cuda"] is None
