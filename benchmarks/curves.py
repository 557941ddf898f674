"""Arithmetic on accuracy-vs-FLOPs curves, shared by the federated benchmarks (pure functions, tested).

A curve is a list of ``(flops, accuracy)`` points in evaluation order, starting at zero-shot (FLOPs 0) since
LoRA starts at B = 0. A run is a dict with at least ``curve`` and ``final_accuracy``.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Curve = Sequence[Sequence[float]]
Runs = Mapping[tuple[str, int], Mapping[str, Any]]
GAIN_FRACTIONS = (0.5, 0.75, 0.9)


def first_reach(curve: Curve, target: float) -> float | None:
    """FLOPs at which a curve first reaches ``target``, linear between evaluations; ``None`` when it never does."""
    previous = None
    for flops, accuracy in curve:
        if accuracy >= target:
            if previous is None or previous[1] >= target:
                return flops
            (f0, a0) = previous
            return f0 + (target - a0) / (accuracy - a0) * (flops - f0)
        previous = (flops, accuracy)
    return None


def interpolate(curve: Curve, grid: Iterable[float]) -> list[float]:
    xs, ys = [p[0] for p in curve], [p[1] for p in curve]
    out = []
    for x in grid:
        if x >= xs[-1]:
            out.append(ys[-1])
            continue
        i = next(i for i, xi in enumerate(xs) if xi >= x)
        out.append(ys[0] if i == 0 else ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1]))
    return out


def mean_accuracy(curve: Curve, budget: float) -> float:
    """Area under the accuracy-vs-FLOPs curve over [0, budget], divided by the budget."""
    points = [p for p in curve if p[0] < budget] + [[budget, interpolate(curve, [budget])[0]]]
    return sum((f1 - f0) * (a0 + a1) / 2 for (f0, a0), (f1, a1) in itertools.pairwise(points)) / budget


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: one seed shows no spread, not a zero one)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def end_score(run: Mapping[str, Any]) -> float:
    """How a run ends on validation: the mean of its last two evaluations (one alone is noisier)."""
    tail = [accuracy for _, accuracy in run["curve"][-2:]]
    return statistics.fmean(tail)


def choose_lr(runs_by_lr: Mapping[float, Mapping[str, Any]]) -> float:
    """The step size whose validation run ends highest (``end_score``); a tie goes to the smaller step."""
    return max(sorted(runs_by_lr), key=lambda lr: (end_score(runs_by_lr[lr]), -lr))


def mean_curves(by_run: Runs, arms: Mapping[str, str], seeds: Sequence[int], budget: float,
                points: int = 60) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Per arm (name → label): mean and spread over seeds on a common FLOP grid."""
    grid = [budget * i / (points - 1) for i in range(points)]
    curves = {}
    for arm, label in arms.items():
        runs = [by_run[arm, s] for s in seeds if (arm, s) in by_run]
        if not runs:
            continue
        columns = list(zip(*(interpolate(r["curve"], grid) for r in runs), strict=True))
        curves[label] = (grid, [statistics.fmean(c) for c in columns],
                         [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns])
    return curves


def gain_costs(by_run: Runs, arms: Sequence[str], seeds: Sequence[int], zero_shot: float,
               fractions: Sequence[float] = GAIN_FRACTIONS) -> dict[str, Any]:
    """FLOPs each arm needs to reach 50/75/90% of the best arm's gain over zero-shot.

    The best arm is the one with the highest mean final validation accuracy; its gain is that mean minus
    zero-shot. Per seed, an arm's cost for fraction f is where its curve first reaches zero-shot + f·gain;
    the spread is over the seeds that reached it (``reached`` says how many did).
    """
    finals = {arm: statistics.fmean(by_run[arm, s]["final_accuracy"] for s in seeds) for arm in arms}
    best = max(arms, key=lambda arm: finals[arm])
    gain = finals[best] - zero_shot
    report: dict[str, Any] = {"best": best, "gain": gain, "fractions": list(fractions), "arms": {}}
    for arm in arms:
        rows = {}
        for fraction in fractions:
            costs = [first_reach(by_run[arm, s]["curve"], zero_shot + fraction * gain) for s in seeds]
            reached = [c for c in costs if c is not None]
            rows[str(fraction)] = {"flops": mean_and_spread(reached) if reached and gain > 0 else None,
                                   "reached": len(reached), "seeds": len(seeds)}
        report["arms"][arm] = rows
    return report


def compute_to_accuracy(by_run: Runs, baseline: str, methods: Sequence[str], seeds: Sequence[int],
                        zero_shot: float) -> dict[str, Any]:
    """Per seed the target is the baseline's final accuracy; each method's cost is the FLOPs to first reach it,
    and its ratio the baseline's cost over that. No ratio where the baseline did not beat zero-shot (every
    curve "reaches" such a target at 0 FLOPs) or where the method never reached it."""
    report: dict[str, Any] = {"baseline": baseline, "seeds": list(seeds), "per_seed": {}, "methods": {}}
    for seed in seeds:
        target = by_run[baseline, seed]["final_accuracy"]
        row: dict[str, Any] = {"target": target, "baseline_improved": target > zero_shot}
        for arm in (baseline, *methods):
            result = by_run[arm, seed]
            row[arm] = {"final_accuracy": result["final_accuracy"], "total_tflops": result["total_tflops"],
                        "tflops_to_target": first_reach(result["curve"], target)}
        baseline_cost = row[baseline]["tflops_to_target"]
        for arm in (baseline, *methods):
            cost = row[arm]["tflops_to_target"]
            row[arm]["ratio"] = baseline_cost / cost if row["baseline_improved"] and cost else None
        report["per_seed"][seed] = row
    for arm in (baseline, *methods):
        ratios = [r for s in seeds if (r := report["per_seed"][s][arm]["ratio"]) is not None]
        report["methods"][arm] = {
            "final_accuracy": mean_and_spread([by_run[arm, s]["final_accuracy"] for s in seeds]),
            "ratio": mean_and_spread(ratios) if ratios else None, "ratio_seeds": len(ratios),
            "unreached_seeds": sum(report["per_seed"][s][arm]["tflops_to_target"] is None for s in seeds),
        }
    return report


def late_rise(by_run: Runs, arm: str, seeds: Sequence[int], budget: float, tail: float = 0.25) -> tuple[float, float]:
    """How much ``arm``'s validation accuracy still rose over the last ``tail`` of the budget: mean and spread over
    seeds of accuracy(budget) − accuracy((1 − tail)·budget), interpolated. Inside the noise of one accuracy means
    the curve is no longer measurably rising (a plateau only if the gain itself is larger than that noise)."""
    start = (1 - tail) * budget
    return mean_and_spread([end - begin for begin, end in (interpolate(by_run[arm, s]["curve"], [start, budget])
                                                          for s in seeds)])


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` examples."""
    return (accuracy * (1 - accuracy) / n) ** 0.5 if n else float("nan")
