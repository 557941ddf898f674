"""The curve arithmetic of the federated benchmarks (benchmarks/curves.py), on synthetic curves."""

from __future__ import annotations

import pytest

from benchmarks.curves import (
    choose_lr,
    compute_to_accuracy,
    end_score,
    first_reach,
    gain_costs,
    interpolate,
    late_rise,
    mean_accuracy,
    mean_and_spread,
    mean_curves,
    standard_error,
)

ZERO_SHOT = 0.5


def run(arm: str, seed: int, points: list[list[float]]) -> dict[str, object]:
    curve = [[0.0, ZERO_SHOT], *points]
    return {"arm": arm, "seed": seed, "curve": curve, "final_accuracy": curve[-1][1], "total_tflops": curve[-1][0]}


def test_first_reach_interpolates_between_evaluations():
    curve = [[0.0, 0.5], [10.0, 0.6], [20.0, 0.7]]
    assert first_reach(curve, 0.65) == pytest.approx(15.0)
    assert first_reach(curve, 0.6) == 10.0
    assert first_reach(curve, 0.4) == 0.0  # zero-shot already there
    assert first_reach(curve, 0.71) is None


def test_first_reach_takes_the_first_crossing_of_a_noisy_curve():
    curve = [[0.0, 0.5], [10.0, 0.62], [20.0, 0.55], [30.0, 0.63]]
    assert first_reach(curve, 0.6) == pytest.approx(10.0 * 0.1 / 0.12)


def test_mean_accuracy_is_the_area_over_the_budget():
    assert mean_accuracy([[0.0, 0.6], [10.0, 0.6]], 10.0) == pytest.approx(0.6)
    assert mean_accuracy([[0.0, 0.5], [10.0, 0.7]], 10.0) == pytest.approx(0.6)
    # a run that overshoots the budget is cut at the budget, its last segment interpolated
    assert mean_accuracy([[0.0, 0.5], [20.0, 0.9]], 10.0) == pytest.approx(0.6)
    # one that ends short of it keeps its last accuracy to the budget
    assert mean_accuracy([[0.0, 0.5], [5.0, 0.7]], 10.0) == pytest.approx((2.5 * 1.2 + 5 * 0.7) / 10)


def test_interpolate():
    assert interpolate([[0.0, 0.0], [10.0, 1.0]], [0.0, 2.5, 10.0, 12.0]) == pytest.approx([0.0, 0.25, 1.0, 1.0])


def test_step_size_is_chosen_by_the_end_of_the_validation_curve():
    runs = {2e-3: run("m", 1, [[10.0, 0.70], [20.0, 0.80], [30.0, 0.82]]),
            5e-3: run("m", 1, [[10.0, 0.85], [20.0, 0.84], [30.0, 0.60]]),  # best peak, collapses at the end
            1e-2: run("m", 1, [[10.0, 0.55], [20.0, 0.60], [30.0, 0.81]])}  # one lucky last point
    assert end_score(runs[2e-3]) == pytest.approx(0.81)
    assert choose_lr(runs) == 2e-3
    tied = {1e-3: run("m", 1, [[10.0, 0.7]]), 1e-2: run("m", 1, [[10.0, 0.7]])}
    assert choose_lr(tied) == 1e-3  # a tie goes to the smaller step


def test_gain_costs_use_fractions_of_the_best_arms_gain():
    by_run = {}
    for seed in (1, 2):
        by_run["fast", seed] = run("fast", seed, [[10.0, 0.7], [20.0, 0.9]])  # best: gain 0.4
        by_run["slow", seed] = run("slow", seed, [[20.0, 0.7], [40.0, 0.8]])  # never reaches 90% of it
    report = gain_costs(by_run, ["fast", "slow"], [1, 2], ZERO_SHOT)
    assert report["best"] == "fast" and report["gain"] == pytest.approx(0.4)
    fast = report["arms"]["fast"]
    assert fast["0.5"]["flops"] == (pytest.approx(10.0), 0.0)  # 0.7 = zero-shot + 0.5 x 0.4
    assert fast["0.9"]["flops"][0] == pytest.approx(10.0 + 10.0 * (0.86 - 0.7) / 0.2)
    slow = report["arms"]["slow"]
    assert slow["0.5"]["flops"][0] == pytest.approx(20.0)
    assert slow["0.9"]["flops"] is None and slow["0.9"]["reached"] == 0


def test_ratio_is_the_baseline_cost_over_the_method_cost_per_seed():
    by_run = {}
    for seed in (1, 2):
        by_run["mezo", seed] = run("mezo", seed, [[10.0, 0.55], [20.0, 0.6]])
        by_run["nspsa", seed] = run("nspsa", seed, [[20.0, 0.55], [40.0, 0.58]])  # never reaches 0.6
        by_run["fedspzo", seed] = run("fedspzo", seed, [[5.0, 0.6], [10.0, 0.62]])
    report = compute_to_accuracy(by_run, "mezo", ["nspsa", "fedspzo"], [1, 2], ZERO_SHOT)
    seed1 = report["per_seed"][1]
    assert seed1["target"] == 0.6
    assert seed1["mezo"]["tflops_to_target"] == 20.0 and seed1["mezo"]["ratio"] == 1.0
    assert seed1["fedspzo"]["tflops_to_target"] == 5.0 and seed1["fedspzo"]["ratio"] == 4.0
    assert seed1["nspsa"]["tflops_to_target"] is None and seed1["nspsa"]["ratio"] is None
    assert report["methods"]["fedspzo"]["ratio"] == (4.0, 0.0)
    assert report["methods"]["nspsa"]["ratio"] is None and report["methods"]["nspsa"]["unreached_seeds"] == 2


def test_no_ratio_when_the_baseline_never_beats_zero_shot():
    by_run = {("mezo", 1): run("mezo", 1, [[10.0, 0.45], [20.0, 0.5]]),
              ("fedspzo", 1): run("fedspzo", 1, [[10.0, 0.6]])}
    report = compute_to_accuracy(by_run, "mezo", ["fedspzo"], [1], ZERO_SHOT)
    assert report["per_seed"][1]["baseline_improved"] is False
    assert report["methods"]["fedspzo"]["ratio"] is None


def test_mean_curves_average_seeds_on_a_common_grid():
    by_run = {("mezo", 1): run("mezo", 1, [[10.0, 0.7]]), ("mezo", 2): run("mezo", 2, [[10.0, 0.5]])}
    (grid, mean, spread), = mean_curves(by_run, {"mezo": "MeZO"}, [1, 2], 10.0, points=3).values()
    assert grid == [0.0, 5.0, 10.0]
    assert mean == pytest.approx([0.5, 0.55, 0.6])
    assert spread[0] == 0.0 and spread[2] == pytest.approx(0.1414, abs=1e-4)


def test_standard_error_of_an_accuracy():
    assert standard_error(0.8, 1000) == pytest.approx(0.01265, abs=1e-5)
    assert standard_error(0.5, 1057) == pytest.approx(0.0154, abs=1e-4)


def test_the_test_table_sets_every_run_beside_the_untrained_model(capsys):
    from benchmarks.accuracy_report import print_test_table

    def scored(accuracy: float, positive_rate: float) -> dict[str, float]:
        return {"accuracy": accuracy, "standard_error": standard_error(accuracy, 1000), "balanced_accuracy": accuracy,
                "prediction_rate_0": 1 - positive_rate, "prediction_rate_1": positive_rate}

    zero_shot = {**scored(0.77, 0.4), "examples": 1000, "majority_rate": 0.52}
    tests = {("mezo", 42): scored(0.80, 0.5), ("mezo", 7): scored(0.78, 0.5), ("fedspzo", 42): scored(0.52, 0.97)}
    print_test_table(tests, zero_shot)
    out = capsys.readouterr().out
    assert "majority class 0.5200" in out
    assert "zero-shot (the prompt, untrained)" in out and "0.7700 ± 0.0133" in out
    assert "+0.0200 ± 0.0141 (2 seeds)" in out  # MeZO: gains +0.03 and +0.01 over the same zero-shot
    assert "-0.2500 ± nan (1 seeds)" in out
    assert out.count("<- predicts one class >= 95%") == 1  # the collapsed run is flagged, nothing else


def test_one_seed_has_no_spread_rather_than_a_zero_one():
    import math

    mean, spread = mean_and_spread([0.73])
    assert mean == 0.73 and math.isnan(spread)
    assert mean_and_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))


def test_late_rise_tells_a_plateau_from_a_curve_still_rising():
    by_run = {("flat", 1): run("flat", 1, [[50.0, 0.8], [100.0, 0.8]]),
              ("rising", 1): run("rising", 1, [[50.0, 0.6], [100.0, 0.8]]),
              ("rising", 2): run("rising", 2, [[50.0, 0.6], [100.0, 0.7]])}
    assert late_rise(by_run, "flat", [1], 100.0)[0] == pytest.approx(0.0)
    mean, spread = late_rise(by_run, "rising", [1, 2], 100.0)  # accuracy at 75 → 100 TFLOPs: +0.1 and +0.05
    assert mean == pytest.approx(0.075) and spread == pytest.approx(0.0354, abs=1e-4)


def test_the_tuning_table_shows_a_collapse_the_end_score_hides(capsys):
    from benchmarks.accuracy_arms import Setup
    from benchmarks.accuracy_report import print_tuning

    setup = Setup(model="m", eval_samples=256, test_samples=None, budget_tflops=96.0, eval_every_tflops=12.0)
    tuned = {("mezo", 42, 0.005): run("mezo", 42, [[30.0, 0.62], [60.0, 0.30], [90.0, 0.58], [96.0, 0.60]]),
             ("mezo", 42, 0.002): run("mezo", 42, [[48.0, 0.55], [96.0, 0.57]])}
    print_tuning(tuned, ZERO_SHOT, setup)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MeZO")]
    assert len(rows) == 2 and "0.002" in rows[0] and "0.005" in rows[1]  # sorted by step size
    assert "0.5900" in rows[1] and "0.3000 ( 60.0)" in rows[1]  # end score 0.59, lowest 0.30 at 60 TFLOPs
    assert "0.5600" in rows[0] and "0.5000 (  0.0)" in rows[0]  # a run that never drops: its lowest is zero-shot
