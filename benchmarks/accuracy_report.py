"""What the compute-to-accuracy benchmarks print: chosen step sizes, validation curves summarised, FLOPs to a
share of the best gain, every test score beside the untrained model's, and the headline ratio."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.accuracy_arms import ARMS, HEADLINE, Setup
from benchmarks.curves import end_score, late_rise, mean_accuracy, mean_and_spread, standard_error


def print_tuning(tuned: Mapping[tuple[str, int, float], Any], zero_shot: float, setup: Setup) -> None:
    """Every tuning run's validation score (what picks the step size) and its lowest point, which shows a collapse
    the end score alone can hide when a run recovers."""
    print(f"\ntuning runs: validation on {setup.eval_samples} sentences (zero-shot {zero_shot:.4f}), "
          f"{setup.budget_tflops:g} forward TFLOPs per run")
    print(f"{'arm':<44} {'seed':>5} {'lr':>8} {'end score':>10} {'lowest (at TFLOPs)':>20}")
    for (arm, seed, lr), run in sorted(tuned.items()):
        low_tflops, low = min(run["curve"], key=lambda point: point[1])
        print(f"{ARMS[arm].label:<44} {seed:>5} {lr:>8g} {end_score(run):>10.4f} {low:>10.4f} ({low_tflops:>5.1f})")


def print_test_table(tests: Mapping[tuple[str, int], Any], zero_shot: Mapping[str, Any]) -> None:
    """Every chosen run's one test score beside the untrained model's, then each arm's mean gain over it."""
    def row(name: str, seed: str, m: Mapping[str, Any]) -> str:
        flag = "  <- predicts one class >= 95%" if max(m["prediction_rate_0"], m["prediction_rate_1"]) >= 0.95 else ""
        return (f"{name:<44} {seed:>5} {m['accuracy']:>8.4f} ± {m['standard_error']:.4f} "
                f"{m['balanced_accuracy']:>9.4f} {m['prediction_rate_0']:>7.2f}/{m['prediction_rate_1']:.2f}{flag}")

    print(f"\ntest: {zero_shot['examples']} sentences, each chosen run scored once (± is the standard error of one "
          f"measurement on that many sentences); majority class {zero_shot['majority_rate']:.4f}")
    print(f"{'arm':<44} {'seed':>5} {'accuracy':>16} {'balanced':>9} {'pred. rate 0/1':>15}")
    print(row("zero-shot (the prompt, untrained)", "-", zero_shot))
    for (arm, seed), m in sorted(tests.items()):
        print(row(ARMS[arm].label, str(seed), m))
    print("\ntest gain over zero-shot, mean ± std over seeds (paired: the same test sentences)")
    for arm in dict.fromkeys(arm for arm, _ in sorted(tests)):
        gains = [m["accuracy"] - zero_shot["accuracy"] for (a, _), m in tests.items() if a == arm]
        mean, spread = mean_and_spread(gains)
        print(f"{ARMS[arm].label:<44} {mean:+.4f} ± {spread:.4f} ({len(gains)} seeds)")


def print_report(setup: Setup, zero_shot: float, grids: Mapping[str, Sequence[float]], chosen: Mapping[str, float],
                 by_run: Mapping[tuple[str, int], Any],
                 tests: Mapping[tuple[str, int], Any], gains: Mapping[str, Any], c2a: Mapping[str, Any],
                 seeds: Sequence[int], zero_shot_test: Mapping[str, Any],
                 headline: str = "compute to accuracy") -> None:
    print(f"\nvalidation: {setup.eval_samples} sentences, zero-shot {zero_shot:.4f}; budget "
          f"{setup.budget_tflops:g} forward TFLOPs per run; seeds {', '.join(map(str, seeds))}")
    print(f"\nstep sizes chosen on validation (first seed):\n{'arm':<44} {'grid':<22} {'chosen':>8}")
    for arm, lr in chosen.items():
        partial = "" if len(grids[arm]) == len(ARMS[arm].lr_grid) else \
            f"   (partial: {len(grids[arm])} of {len(ARMS[arm].lr_grid)}, --lrs)"
        print(f"{ARMS[arm].label:<44} {' '.join(f'{g:g}' for g in grids[arm]):<22} {lr:>8g}{partial}")
    fractions = gains["fractions"]
    print("\nmean validation accuracy over the budget (area under the curve / budget; accuracy per FLOP spent)")
    for arm in gains["arms"]:
        runs = [by_run[arm, s] for s in seeds]
        area = statistics.fmean(mean_accuracy(r["curve"], setup.budget_tflops) for r in runs)
        print(f"{ARMS[arm].label:<44} {area:.4f}   final {statistics.fmean(r['final_accuracy'] for r in runs):.4f}")
    noise = standard_error(zero_shot, setup.eval_samples)
    print(f"\nplateau check: validation accuracy gained over the last quarter of the budget, mean ± std over seeds "
          f"(one accuracy is ± {noise:.3f})")
    for arm in gains["arms"]:
        rise, spread = late_rise(by_run, arm, seeds, setup.budget_tflops)
        verdict = "still rising" if rise > noise else "no rise beyond one standard error"
        print(f"{ARMS[arm].label:<44} {rise:+.4f} ± {spread:.4f}   {verdict}")
    print(f"\nFLOPs (TFLOPs, mean ± std over seeds) to reach {'/'.join(f'{f:.0%}' for f in fractions)} of the best "
          f"arm's validation gain ({ARMS[gains['best']].label}: +{gains['gain']:.4f})")
    for arm, rows in gains["arms"].items():
        cells = []
        for fraction in fractions:
            row = rows[str(fraction)]
            cost = row["flops"]
            reached = f"({row['reached']}/{row['seeds']})"
            cells.append("never" if cost is None else f"{cost[0]:.1f} ± {cost[1]:.1f} {reached}")
        print(f"{ARMS[arm].label:<44} " + "  ".join(f"{c:>20}" for c in cells))
    print_test_table(tests, zero_shot_test)
    method = HEADLINE[1]
    ratio = c2a["methods"][method]["ratio"]
    n = c2a["methods"][method]["ratio_seeds"]
    print(f"\nmethod {ARMS[method].label} reached MeZO's final accuracy on {n} of {len(seeds)} seeds")
    value = "nan ± nan" if ratio is None else f"{ratio[0]:.2f} ± {ratio[1]:.2f}"
    print(f"{headline}: FLOPs ratio MeZO/FedSPZO to MeZO's final accuracy {value} over {n} seeds")
