"""The arithmetic and outputs of benchmarks/estimator_quality.py: cosine curves, the F0 fit, ratios at equal
cosine, tables and plots.

Pure functions of measured points, so they are tested on synthetic curves (tests/test_estimator_quality.py).
A run is a list of ``(cumulative FLOPs, cosine, relative error)`` points, one per estimate, on one batch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.curves import first_reach


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
    """Per estimate index, over repeats: mean FLOPs, cos ± SE, cos², relative error ± SE and its square."""
    keys = ("flops", "cos", "cos_se", "cos2", "rel_err", "rel_err_se", "rel_err2")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for column in zip(*runs, strict=True):
        flops, cos, rel = zip(*column, strict=True)
        for key, value in zip(keys, (statistics.fmean(flops), statistics.fmean(cos), standard_error(cos),
                                     statistics.fmean(c * c for c in cos), statistics.fmean(rel), standard_error(rel),
                                     statistics.fmean(r * r for r in rel)), strict=True):
            out[key].append(value)
    return out


def noise_f0(curve: Mapping[str, Sequence[float]]) -> float:
    """F0 from the error of the mean update: E||ĝ − g||²/||g||² = F0 / F for averaged unbiased estimates, read at
    the last (most averaged) point. Equal error means equal cosine once many estimates are averaged."""
    return curve["flops"][-1] * curve["rel_err2"][-1]


def compare(runs: Mapping[str, Sequence[Sequence[Sequence[float]]]], base: str) -> dict[str, dict[str, Any]]:
    """Per estimator: the cosine fit and the error-based F0, their ratios to ``base`` (± jackknife SE over
    repeats) and the crossing cross-check."""
    n, every = len(runs[base]), list(range(len(runs[base])))

    def f0(name: str, keep: Sequence[int]) -> float:
        curve = mean_curve([runs[name][i] for i in keep])
        return fit_f0(curve["flops"], curve["cos2"])

    def f0_noise(name: str, keep: Sequence[int]) -> float:
        return noise_f0(mean_curve([runs[name][i] for i in keep]))

    def rms(curve: Mapping[str, Sequence[float]]) -> list[tuple[float, float]]:
        return [(f, math.sqrt(c)) for f, c in zip(curve["flops"], curve["cos2"], strict=True)]

    def ratio(f: Callable[[str, Sequence[int]], float], name: str) -> tuple[float, float]:
        return f(base, every) / f(name, every), jackknife(lambda keep: f(base, keep) / f(name, keep), n)

    base_curve = mean_curve(runs[base])
    out = {}
    for name in runs:
        curve = mean_curve(runs[name])
        (cos_ratio, cos_se), (noise_ratio, noise_se) = ratio(f0, name), ratio(f0_noise, name)
        out[name] = {"curve": curve, "f0": f0(name, every), "ratio": cos_ratio, "ratio_se": cos_se,
                     "f0_noise": f0_noise(name, every), "ratio_noise": noise_ratio, "ratio_noise_se": noise_se,
                     "crossing": crossing_ratio(rms(base_curve), rms(curve))}
    return out


# ---------------------------------------------------------------- outputs

def winner(report: Mapping[str, Any]) -> str:
    """The measured FedSPZO grid point with the highest MeZO/FedSPZO FLOPs ratio at equal cosine."""
    fedspzo = {k: v for k, v in report["estimators"].items() if v["estimator"]["split"] != "none"}
    return max(fedspzo, key=lambda k: fedspzo[k]["ratio"])


def print_tables(report: Mapping[str, Any], headline: str) -> None:
    print(f"\n{report['param_set']}: {report['trainable']:,} trainable entries, ε {report['eps']:g}, "
          f"{report['repeats']} repeats (batches), one forward {report['full_forward_flops'] / 1e9:.1f} GFLOPs")
    print(f"{'estimator':<40} {'fwd/est':>7} {'est':>4} {'GFLOPs':>7} {'cos at budget':>17} {'rel err':>7} "
          f"{'MeZO/X equal cos':>16} {'crossing':>15} {'equal error':>12} {'theory':>6} {'F0 cos/err/theory':>17}")
    for label, row in report["estimators"].items():
        curve = row["curve"]
        crossing = "–" if row["crossing"] is None else f"{row['crossing'][1]:.2f} @{row['crossing'][0]:.5f}"
        print(f"{label:<40} {row['forwards_per_estimate']:>7.2f} {row['estimates']:>4} "
              f"{curve['flops'][-1] / 1e9:>7.0f} {curve['cos'][-1]:>8.5f} ± {curve['cos_se'][-1]:.5f} "
              f"{curve['rel_err'][-1]:>7.0f} {row['ratio']:>9.2f} ± {row['ratio_se']:.2f} {crossing:>15} "
              f"{row['ratio_noise']:>5.2f} ± {row['ratio_noise_se']:.2f} {row['theory_ratio']:>6.2f} "
              f"{row['f0'] / 1e15:>5.0f}/{row['f0_noise'] / 1e15:.0f}/{row['theory_f0'] / 1e15:.0f}"
              + ("  <- headline" if label == headline else ""))
    print("F0 in PFLOPs: FLOPs to reach cos² = 1/2 on the fitted curve; the FLOPs to reach a cosine c are F0·c²/(1−c²)")
    print(f"estimator-quality winner: {winner(report)}")
    print("theory only, P1 = 1 (first-order noise from the measured gradient's block norms), best first:")
    for row in report["theory"][:6]:
        b = row["blocks"]
        entries, grad2 = b["d2"] / (b["d1"] + b["d2"]), b["sq2"] / (b["sq1"] + b["sq2"])
        cost = b["c2"] / (b["c1"] + b["c2"])
        print(f"  {row['label']:<40} ratio {row['theory_ratio']:5.2f}   block 2 holds {entries:6.1%} of the entries, "
              f"{grad2:6.1%} of ||g||², {cost:.2f} of the forward FLOPs")


def plot(report: Mapping[str, Any], path: Path) -> None:
    from hf_fedzo.reporting import draw_curves

    rows = report["estimators"]  # every curve starts at (0, 0): no estimate yet, no direction
    draw_curves(path, {k: ([0.0] + [f / 1e9 for f in v["curve"]["flops"]], [0.0, *v["curve"]["cos"]])
                       for k, v in rows.items()},
                bands={k: [0.0, *v["curve"]["cos_se"]] for k, v in rows.items()},
                xlabel="forward GFLOPs spent on one batch (engine count)",
                ylabel="cosine(mean ZO update, true gradient)",
                title=f"SmolLM2-135M {report['param_set']}: mean ± SE over {report['repeats']} batches")
