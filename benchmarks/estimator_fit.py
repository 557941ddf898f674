"""The arithmetic of benchmarks/estimator_quality.py: cosine curves, the F0 fit, ratios at equal cosine.

Pure functions of measured points, so they are tested on synthetic curves (tests/test_estimator_quality.py).
A run is a list of ``(cumulative FLOPs, cosine, relative error)`` points, one per estimate, on one batch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.federated_accuracy import first_reach


def fit_f0(flops: Sequence[float], cos2: Sequence[float]) -> float:
    """F0 of E[cos²] = F / (F + F0): least squares of cos²/(1 − cos²) = F / F0 through the origin."""
    q = [c / (1.0 - c) for c in cos2]
    num = sum(f * y for f, y in zip(flops, q, strict=True))
    return math.inf if num <= 0 else sum(f * f for f in flops) / num


def flops_at(f0: float, cosine: float) -> float:
    """FLOPs at which the fitted curve reaches ``cosine``."""
    return f0 * cosine**2 / (1.0 - cosine**2)


def crossing_ratio(base: Sequence[Sequence[float]], other: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """``(level, base FLOPs / other FLOPs)`` where two mean curves ``[(flops, rms cosine), ...]`` first reach the
    highest cosine both reach (linear between estimates, from (0, 0)); ``None`` when either never leaves 0."""
    level = min(max(c for _, c in base), max(c for _, c in other))
    if level <= 0:
        return None
    f_base = first_reach([[0.0, 0.0], *base], level)
    f_other = first_reach([[0.0, 0.0], *other], level)
    assert f_base is not None and f_other is not None  # both curves reach their common maximum
    return level, f_base / f_other


def jackknife(estimate: Callable[[Sequence[int]], float], n: int) -> float:
    """Standard error of ``estimate(indices)`` by leaving one repeat out at a time (0 with one repeat)."""
    if n < 2:
        return 0.0
    values = [estimate([j for j in range(n) if j != i]) for i in range(n)]
    mean = statistics.fmean(values)
    return math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in values))


def predicted_f0(cost: float, d1: int, d2: int, sq1: float, sq2: float, p1: int, p2: int) -> float:
    """First-order F0 of an estimator spending ``cost`` FLOPs per estimate (see the module docstring); with no
    split everything is block 2 (``d1 = sq1 = 0``)."""
    total = sq1 + sq2
    noise = d1 / p1 * (sq1 + sq2 / p2) + d2 / (p1 * p2) * total
    return cost * noise / total


def standard_error(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def mean_curve(runs: Sequence[Sequence[Sequence[float]]]) -> dict[str, list[float]]:
    """Per estimate index, over repeats: mean FLOPs, mean cos ± SE, mean cos², mean relative error ± SE."""
    out: dict[str, list[float]] = {k: [] for k in ("flops", "cos", "cos_se", "cos2", "rel_err", "rel_err_se")}
    for column in zip(*runs, strict=True):
        flops, cos, rel = zip(*column, strict=True)
        out["flops"].append(statistics.fmean(flops))
        out["cos"].append(statistics.fmean(cos))
        out["cos_se"].append(standard_error(cos))
        out["cos2"].append(statistics.fmean(c * c for c in cos))
        out["rel_err"].append(statistics.fmean(rel))
        out["rel_err_se"].append(standard_error(rel))
    return out


def compare(runs: Mapping[str, Sequence[Sequence[Sequence[float]]]], base: str) -> dict[str, dict[str, Any]]:
    """Fit, ratio to ``base`` (± jackknife SE over repeats) and the crossing cross-check for every estimator."""
    n = len(runs[base])

    def f0(name: str, keep: Sequence[int]) -> float:
        curve = mean_curve([runs[name][i] for i in keep])
        return fit_f0(curve["flops"], curve["cos2"])

    out = {}
    for name in runs:
        curve = mean_curve(runs[name])
        rms = [(f, math.sqrt(c)) for f, c in zip(curve["flops"], curve["cos2"], strict=True)]
        base_curve = mean_curve(runs[base])
        base_rms = [(f, math.sqrt(c)) for f, c in zip(base_curve["flops"], base_curve["cos2"], strict=True)]
        every = list(range(n))
        out[name] = {"curve": curve, "f0": f0(name, every), "ratio": f0(base, every) / f0(name, every),
                     "ratio_se": jackknife(lambda keep, name=name: f0(base, keep) / f0(name, keep), n),
                     "crossing": crossing_ratio(base_rms, rms)}
    return out
