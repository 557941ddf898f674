"""Progress as the Hugging Face stack shows it: tqdm bars, and one printed line per unit of work (a round).

Two switches, both the stack's own:

* **bars** follow the Hugging Face progress-bar switch: ``transformers.logging.disable_progress_bar()``,
  ``huggingface_hub.utils.disable_progress_bars()`` or ``HF_HUB_DISABLE_PROGRESS_BARS=1`` turn them off
  everywhere (ours, the Hub's downloads and transformers' own);
* **lines** follow the level of the ``hf_fedzo`` logger, as transformers' verbosity is the level of its own
  logger: unset, they print (INFO); ``set_verbosity("warning")`` (a recipe's ``--log_level warning``) hides them.

This module imports nothing of hf_fedzo, so every layer may use it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

LIBRARY_LOGGER = "hf_fedzo"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}


def bars_enabled() -> bool:
    """Whether progress bars show: the Hugging Face switch (``disable_progress_bar()``,
    ``HF_HUB_DISABLE_PROGRESS_BARS=1``)."""
    from huggingface_hub.utils import are_progress_bars_disabled

    return not are_progress_bars_disabled()


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", leave: bool = True, enabled: bool = True, initial: float = 0) -> Any:
    """A tqdm bar (on stderr), shown only when ``enabled`` and the Hugging Face switch allow it.

    A disabled bar still iterates and accepts ``update``/``close``, so callers never branch on it.
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial,
                disable=not (enabled and bars_enabled()), dynamic_ncols=True)


def verbosity() -> int:
    """The level of the ``hf_fedzo`` logger; unset means INFO (progress lines print)."""
    level = logging.getLogger(LIBRARY_LOGGER).level
    return level if level != logging.NOTSET else logging.INFO


def set_verbosity(level: int | str) -> None:
    """Set the ``hf_fedzo`` logger's level (``"info"``, ``logging.WARNING``, …), as transformers' ``set_verbosity``."""
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"log level must be one of {sorted(LEVELS)}, got {level!r}")
        level = LEVELS[level.lower()]
    logging.getLogger(LIBRARY_LOGGER).setLevel(level)


def announce(line: str) -> None:
    """Print one progress line on stdout unless the verbosity is above INFO.

    Written through tqdm, so an open bar is redrawn below the line instead of being cut by it, and flushed, so a
    run piped into a file shows it when it happens.
    """
    if verbosity() > logging.INFO:
        return
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h02m``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


__all__ = ["announce", "bars_enabled", "format_duration", "progress_bar", "set_verbosity", "verbosity"]
