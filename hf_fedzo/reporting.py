"""Run outputs: metrics JSON and PNG plots, always written atomically.

A reader (a user, a Hub upload, a resumed run) sees either the previous complete file or the new
complete file, never a half-written one: every write goes to a temporary file in the same folder,
is flushed to disk and then renamed over the target.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

Curve = tuple[Sequence[float], Sequence[float]]

logger = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give outputs the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null rather than producing a file other tools reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False, default=str) + "\n"
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def plot_curves(path: str | os.PathLike[str], curves: Mapping[str, Curve], *, xlabel: str, ylabel: str,
                title: str = "", logx: bool = False, bands: Mapping[str, Sequence[float]] | None = None,
                reference: tuple[str, float] | Sequence[tuple[str, float]] | None = None,
                min_yspan: float | None = None, integer_x: bool = False,
                y_bounds: tuple[float, float] | None = None) -> Path:
    """One PNG with a line per named curve (needs the ``plots`` extra: matplotlib).

    ``bands[label]`` shades ± that spread around the curve of the same label (e.g. a std over seeds), and
    ``reference=(label, y)`` (or a list of them) draws dotted horizontal lines (e.g. zero-shot accuracy, the
    majority-class rate). ``min_yspan`` keeps the y axis at least that tall, so that a change of one example
    never fills the plot; ``y_bounds`` (e.g. ``(0, 1)`` for an accuracy) keeps that widened axis within the values
    the quantity can take. ``integer_x`` puts ticks on whole numbers only (rounds, steps).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'hf-fedzo[plots]'") from err

    for label, spread in (bands or {}).items():
        if label not in curves or len(spread) != len(curves[label][1]):
            raise ValueError(f"bands[{label!r}] needs one spread per point of the curve {label!r}")
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (xs, ys) in curves.items():
        (line,) = axes.plot(list(xs), list(ys), marker="o" if bands is None else None, markersize=3, label=label)
        if bands is not None and label in bands:
            axes.fill_between(list(xs), [y - d for y, d in zip(ys, bands[label], strict=True)],
                              [y + d for y, d in zip(ys, bands[label], strict=True)], color=line.get_color(),
                              alpha=0.15)
    references = [reference] if reference and isinstance(reference[0], str) else list(reference or [])
    for (name, y), style in zip(references, itertools.cycle((":", "--", "-.")), strict=False):
        axes.axhline(y, color="grey", linestyle=style, label=name)
    if min_yspan is not None:
        axes.set_ylim(*widened_ylim(*axes.get_ylim(), min_yspan, y_bounds))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if logx:
        axes.set_xscale("log")
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    if len(curves) + len(references) > 1:
        axes.legend(fontsize=8 if bands is not None else None)
    figure.tight_layout()
    try:
        return write_atomic(path, lambda handle: figure.savefig(handle, format="png"))
    finally:
        plt.close(figure)


def widened_ylim(low: float, high: float, min_span: float,
                 bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(low, high)`` widened around its middle to at least ``min_span``, then slid back inside ``bounds``
    (matplotlib's own margin around a flat line can leave them too)."""
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    if bounds is not None:  # e.g. never an accuracy axis above 1, but a sliver of margin so a line at 1 shows
        pad = 0.02 * min_span
        floor, ceiling = bounds[0] - pad, bounds[1] + pad
        shift = max(floor - low, 0.0) - max(high - ceiling, 0.0)
        low, high = max(low + shift, floor), min(high + shift, ceiling)
    return low, high


def plots_available() -> bool:
    """Whether matplotlib (the ``plots`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def draw_curves(path: str | os.PathLike[str], curves: Mapping[str, Curve], **options: Any) -> Path | None:
    """:func:`plot_curves`, or None and one logged line without matplotlib: a core install (no ``plots`` extra)
    still writes every result, only the figures are skipped."""
    if not plots_available():
        logger.warning("matplotlib is not installed (pip install 'hf-fedzo[plots]'): %s skipped", Path(path).name)
        return None
    return plot_curves(path, curves, **options)
