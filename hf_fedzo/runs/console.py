"""What a recipe prints: ``--log_level`` and ``--quiet``, with the meaning transformers gives them.

``--log_level`` sets the level of the ``transformers``, ``datasets`` and ``hf_fedzo`` loggers (``passive``, the
default, leaves each library's own default: warnings only for transformers, progress lines for hf_fedzo).
``info`` and below print hf_fedzo's per-round lines, ``warning`` and above hide them. ``--quiet`` is
``--log_level error`` plus no progress bars (``transformers.logging.disable_progress_bar()``, which the Hub's
downloads, ``datasets`` and hf_fedzo's bars all follow): what remains are errors and the final results.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

from hf_fedzo.progress import LEVELS, LIBRARY_LOGGER, set_verbosity

LogLevel = Literal["passive", "debug", "info", "warning", "error", "critical"]


@dataclass
class ConsoleArguments:
    """How much a recipe prints, and how many threads it uses (the `--log_level`, `--quiet`, `--threads` flags)."""

    log_level: LogLevel = field(default="passive", metadata={
        "help": "Logger level of transformers, datasets and hf_fedzo, as transformers' --log_level: 'passive' keeps "
                "their defaults (hf_fedzo prints one line per round); 'warning' or above hides the round lines."})
    quiet: bool = field(default=False, metadata={
        "help": "Only errors and the final results: --log_level error and no progress bars."})
    threads: int | None = field(default=None, metadata={
        "help": "torch threads per process. Default: OMP_NUM_THREADS when set, else the usable cores (divided by "
                "the processes per machine under a launcher); see README, 'Threads and progress'."})

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


def configure_console(log_level: str = "passive", quiet: bool = False, bars: bool = True) -> None:
    """Apply ``--log_level``/``--quiet`` (and ``bars=False``, e.g. Trainer's ``--disable_tqdm``) to the libraries."""
    import datasets
    import transformers

    if quiet:
        log_level = "critical" if log_level == "critical" else "error"
    if quiet or not bars:
        transformers.logging.disable_progress_bar()  # also the Hub's bars, which ours follow
        datasets.disable_progress_bars()
    if log_level == "passive":
        return
    if log_level not in LEVELS:
        raise ValueError(f"--log_level must be passive or one of {sorted(LEVELS)}, got {log_level!r}")
    transformers.logging.set_verbosity(LEVELS[log_level])
    datasets.logging.set_verbosity(LEVELS[log_level])
    set_verbosity(log_level)
    library, root = logging.getLogger(LIBRARY_LOGGER), logging.getLogger()
    if not library.handlers and not root.handlers:  # as transformers does for its own logger: --log_level info shows
        library.addHandler(logging.StreamHandler(sys.stderr))


__all__ = ["ConsoleArguments", "configure_console"]
