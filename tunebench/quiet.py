"""Quiet by default: what the libraries print on every run although tunebench expects it stays out of the way.

Hidden unless verbose (`tunebench -v`, or TUNEBENCH_VERBOSE=1, which reaches every run of a `bench` suite):
- the FutureWarning for transformers' deprecated `is_gradient_checkpointing`, which peft reads on each load;
- bitsandbytes' offline notice that it cannot fetch an optional CPU kernel (inference only; qlora does not use it);
- the progress bars of tokenization and weight loading (the training bar stays).
Anything else (a transformers load report, any other warning) stays visible. The task head is always
tunebench's own (tunebench.classifier), so no load report is expected: `train` notes the new head in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "TUNEBENCH_VERBOSE"


def is_verbose(verbose: bool = False) -> bool:
    return verbose or os.environ.get(VERBOSE_ENV) == "1"


@contextlib.contextmanager
def quiet(verbose: bool = False, tokenizing: bool = True) -> Iterator[None]:
    """Hide the expected output listed in the module docstring for the block; verbose hides nothing.
    tokenizing=False leaves the datasets package alone (importing it takes most of a second): for a block that
    tokenizes nothing, such as a plan without --validate."""
    if is_verbose(verbose):
        yield
        return
    from transformers.utils import logging as transformers_logging

    datasets_had_bars = False
    if tokenizing:
        import datasets.utils as datasets_bars

        datasets_had_bars = not datasets_bars.are_progress_bars_disabled()
        datasets_bars.disable_progress_bars()
    transformers_had_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    bitsandbytes_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bitsandbytes_level = bitsandbytes_logger.level
    bitsandbytes_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
            yield
    finally:
        bitsandbytes_logger.setLevel(bitsandbytes_level)
        if transformers_had_bars:
            transformers_logging.enable_progress_bar()
        if datasets_had_bars:
            datasets_bars.enable_progress_bars()
