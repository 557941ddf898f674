"""Warnings on the default path that look like failures and are not, each hidden by its exact text.

1. bitsandbytes, when imported on a CPU with AVX512-BF16, tries to load an optional faster 4-bit kernel from the
   Hub (``kernels-community/quantization-bitsandbytes``) through the ``kernels`` package, and logs a warning when
   it cannot: the package is not installed (transformers < 5.25 does not require it), or the Hub is offline and
   the kernel is not cached (then ``kernels`` first warns that it skips the publisher check). PEFT imports
   bitsandbytes with itself (so does anything importing peft, hf_fedzo included), yet only QLoRA's 4-bit layers
   could use that kernel, and without it bitsandbytes runs its own CPU kernel. Only these two reasons are
   dropped: any other failure to load the kernel still shows. The filters go on the two loggers when hf_fedzo
   is imported, since the records are emitted once, at bitsandbytes' import, before any model exists.
2. PEFT up to 0.21 reads ``model.is_gradient_checkpointing`` while wrapping a model (0.22 no longer does), a
   property transformers 5 deprecated with a FutureWarning addressed to PEFT, not to the user (ZO runs no backward
   pass to checkpoint). It is hidden only around the wrap (:func:`peft_deprecations_hidden`).

This module imports nothing of hf_fedzo (``hf_fedzo/__init__.py`` imports it first).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_FAILED = "Failed to load CPU gemm_4bit_forward from kernels-community: "
BNB_KERNELS_MISSING = BNB_KERNEL_FAILED + "No module named 'kernels'"
BNB_KERNEL_NOT_CACHED = (BNB_KERNEL_FAILED + "Version 1 of 'kernels-community/quantization-bitsandbytes' is not "
                         "available in the local cache and Hugging Face Hub is in offline mode.")
KERNELS_LOGGER = "kernels._internals.hf_hub"
KERNELS_TRUST_SKIPPED = ("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' "
                         "because Hugging Face Hub is in offline mode.")
CHECKPOINTING_DEPRECATION = "`is_gradient_checkpointing` is deprecated"


class BnbKernelFallbackFilter(logging.Filter):
    """Drops bitsandbytes' "optional kernel not loaded" record when the reason is the ``kernels`` package missing
    (``BNB_KERNELS_MISSING``) or the kernel not cached while offline (``BNB_KERNEL_NOT_CACHED``), and nothing
    else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith((BNB_KERNELS_MISSING, BNB_KERNEL_NOT_CACHED))


class KernelTrustSkippedFilter(logging.Filter):
    """Drops the ``kernels`` package's offline "skipping publisher trust check" record for bitsandbytes' kernel
    (``KERNELS_TRUST_SKIPPED``), and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != KERNELS_TRUST_SKIPPED


def install_log_filters() -> None:
    """Put the filters on bitsandbytes' CPU logger and the ``kernels`` Hub logger (once; before or after their
    import)."""
    for name, kind in ((BNB_LOGGER, BnbKernelFallbackFilter), (KERNELS_LOGGER, KernelTrustSkippedFilter)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


@contextmanager
def peft_deprecations_hidden() -> Iterator[None]:
    """Within the block, hide transformers' ``is_gradient_checkpointing`` deprecation (PEFT's to fix); any other
    warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(CHECKPOINTING_DEPRECATION), category=FutureWarning)
        yield


__all__ = ["BNB_KERNELS_MISSING", "BNB_KERNEL_NOT_CACHED", "BNB_LOGGER", "CHECKPOINTING_DEPRECATION",
           "KERNELS_LOGGER", "KERNELS_TRUST_SKIPPED", "install_log_filters", "peft_deprecations_hidden"]
