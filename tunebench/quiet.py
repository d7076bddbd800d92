"""Quiet by default: what the libraries print on every run although tunebench expects it stays out of the way.

Hidden unless verbose (`tunebench -v`, or TUNEBENCH_VERBOSE=1, which reaches every run of a `bench` suite):
- transformers' load report when all it says is that the task head is new: every method trains that
  head from scratch, and `train` says so in one line;
- the FutureWarning for transformers' deprecated `is_gradient_checkpointing`, which peft reads on each load;
- bitsandbytes' offline notice that it cannot fetch an optional CPU kernel (inference only; qlora does not use it);
- the progress bars of tokenization and weight loading (the training bar stays).
Anything else (a load report naming other keys, any other warning) stays visible.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "TUNEBENCH_VERBOSE"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_verbose(verbose: bool = False) -> bool:
    return verbose or os.environ.get(VERBOSE_ENV) == "1"


def only_new_head(report: str) -> bool:
    """Whether a transformers load report lists nothing but MISSING keys of the task head.

    The report is a table, `Key | Status | ...` over a `---+---` rule, one row per key (ANSI-coloured on a terminal).
    """
    from tunebench.classifier import TASK_HEAD

    lines = _ANSI.sub("", report).splitlines()
    rule = next((i for i, line in enumerate(lines) if re.fullmatch(r"-+(-\+-+)+-?", line.strip())), None)
    if rule is None:
        return False
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.split("|")])
    return bool(rows) and all(
        len(row) > 1 and row[1] == "MISSING" and row[0].split(".")[0] == TASK_HEAD for row in rows
    )


class _NewHeadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "LOAD REPORT" not in message or not only_new_head(message)


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Hide the expected output listed in the module docstring for the block; verbose hides nothing."""
    if is_verbose(verbose):
        yield
        return
    import datasets.utils as datasets_bars
    from transformers.utils import logging as transformers_logging

    datasets_had_bars = not datasets_bars.are_progress_bars_disabled()
    transformers_had_bars = transformers_logging.is_progress_bar_enabled()
    datasets_bars.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _NewHeadReport()
    report_logger.addFilter(report_filter)
    bitsandbytes_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bitsandbytes_level = bitsandbytes_logger.level
    bitsandbytes_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
            yield
    finally:
        bitsandbytes_logger.setLevel(bitsandbytes_level)
        report_logger.removeFilter(report_filter)
        if transformers_had_bars:
            transformers_logging.enable_progress_bar()
        if datasets_had_bars:
            datasets_bars.enable_progress_bars()
