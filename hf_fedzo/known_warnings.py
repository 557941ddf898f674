"""Two warnings on the default path that look like failures and are not, each hidden by its exact text.

1. bitsandbytes, when imported on a CPU with AVX512-BF16, tries to load an optional faster 4-bit kernel through
   the ``kernels`` package and logs a warning when that package is not installed. PEFT imports bitsandbytes with
   itself (so does anything importing peft, hf_fedzo included), yet only QLoRA's 4-bit layers could use that
   kernel, and without it bitsandbytes runs its own CPU kernel. Only the "No module named 'kernels'" record is
   dropped: any other failure to load the kernel still shows. The filter goes on bitsandbytes' logger when
   hf_fedzo is imported, since the record is emitted once, at bitsandbytes' import, before any model exists.
2. PEFT reads ``model.is_gradient_checkpointing`` while wrapping a model, a property transformers 5 deprecated
   with a FutureWarning addressed to PEFT, not to the user (ZO runs no backward pass to checkpoint). It is
   hidden only around the wrap (:func:`peft_deprecations_hidden`).

This module imports nothing of hf_fedzo (``hf_fedzo/__init__.py`` imports it first).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MISSING = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"
CHECKPOINTING_DEPRECATION = "`is_gradient_checkpointing` is deprecated"


class KernelsMissingFilter(logging.Filter):
    """Drops bitsandbytes' "``kernels`` package missing" record (``BNB_KERNELS_MISSING``) and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(BNB_KERNELS_MISSING)


def install_log_filters() -> None:
    """Put :class:`KernelsMissingFilter` on bitsandbytes' CPU logger (once; before or after its import)."""
    bnb_logger = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, KernelsMissingFilter) for f in bnb_logger.filters):
        bnb_logger.addFilter(KernelsMissingFilter())


@contextmanager
def peft_deprecations_hidden() -> Iterator[None]:
    """Within the block, hide transformers' ``is_gradient_checkpointing`` deprecation (PEFT's to fix); any other
    warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(CHECKPOINTING_DEPRECATION), category=FutureWarning)
        yield


__all__ = ["BNB_KERNELS_MISSING", "BNB_LOGGER", "CHECKPOINTING_DEPRECATION", "install_log_filters",
           "peft_deprecations_hidden"]
