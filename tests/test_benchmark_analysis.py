"""The compute-to-accuracy and split-sweep arithmetic of benchmarks/federated_accuracy.py, on synthetic curves."""

from __future__ import annotations

import pytest

from benchmarks.federated_accuracy import (
    compute_to_accuracy,
    first_reach,
    interpolate,
    mean_accuracy,
    mean_curves,
    split_sweep,
)

ZERO_SHOT = 0.5


def run(arm: str, seed: int, curve: list[list[float]], **extra: object) -> dict[str, object]:
    return {"arm": arm, "seed": seed, "curve": curve, "final_accuracy": curve[-1][1],
            "total_tflops": curve[-1][0], "split_index": None, "num_layers": 30, "block2_share": 1.0,
            "step_forwards": 2.0, **extra}


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


def test_ratio_is_the_baseline_cost_over_the_method_cost_per_seed():
    by_run = {}
    for seed in (1, 2):
        by_run["mezo", seed] = run("mezo", seed, [[10.0, 0.55], [20.0, 0.52]])  # the worse MeZO step size
        by_run["mezo-lr2e-3", seed] = run("mezo-lr2e-3", seed, [[10.0, 0.55], [20.0, 0.6]])
        by_run["nspsa", seed] = run("nspsa", seed, [[20.0, 0.55], [40.0, 0.58]])  # never reaches 0.6
        by_run["fedspzo", seed] = run("fedspzo", seed, [[5.0, 0.6], [10.0, 0.62]])
    report = compute_to_accuracy(by_run, [1, 2], ZERO_SHOT)
    assert report["baseline"] == "mezo-lr2e-3"
    seed1 = report["per_seed"][1]
    assert seed1["target"] == 0.6
    assert seed1["mezo-lr2e-3"]["tflops_to_target"] == 20.0 and seed1["mezo-lr2e-3"]["ratio"] == 1.0
    assert seed1["fedspzo"]["tflops_to_target"] == 5.0 and seed1["fedspzo"]["ratio"] == 4.0
    assert seed1["nspsa"]["tflops_to_target"] is None and seed1["nspsa"]["ratio"] is None
    assert report["methods"]["fedspzo"]["ratio"] == (4.0, 0.0)
    assert report["methods"]["nspsa"]["ratio"] is None
    assert report["methods"]["nspsa"]["unreached_seeds"] == 2


def test_no_ratio_when_the_baseline_never_beats_zero_shot():
    by_run = {("mezo", 1): run("mezo", 1, [[10.0, 0.45], [20.0, 0.5]]),
              ("mezo-lr2e-3", 1): run("mezo-lr2e-3", 1, [[10.0, 0.45], [20.0, 0.48]]),
              ("nspsa", 1): run("nspsa", 1, [[20.0, 0.6]]),
              ("fedspzo", 1): run("fedspzo", 1, [[10.0, 0.6]])}
    report = compute_to_accuracy(by_run, [1], ZERO_SHOT)
    assert report["baseline"] == "mezo"
    assert report["per_seed"][1]["baseline_improved"] is False
    assert all(report["methods"][m]["ratio"] is None for m in ("mezo", "nspsa", "fedspzo"))


def test_sweep_ranks_by_mean_accuracy_not_the_last_point():
    by_run = {
        # early gain, slightly lower end
        ("fedspzo", 1): run("fedspzo", 1, [[5.0, 0.65], [10.0, 0.64]], split_index=24),
        # late jump to a higher end
        ("fedspzo-p2-8", 1): run("fedspzo-p2-8", 1, [[5.0, 0.5], [10.0, 0.66]], split_index=27),
    }
    rows = split_sweep(by_run, [1], 10.0, ZERO_SHOT)
    assert [row["arm"] for row in rows] == ["fedspzo", "fedspzo-p2-8"]
    assert rows[0]["split_index"] == 24 and rows[0]["p2"] == 4


def test_mean_curves_average_seeds_on_a_common_grid():
    by_run = {("mezo", 1): run("mezo", 1, [[10.0, 0.7]]), ("mezo", 2): run("mezo", 2, [[10.0, 0.5]])}
    (grid, mean, spread), = mean_curves(by_run, ["mezo"], [1, 2], ZERO_SHOT, 10.0, points=3).values()
    assert grid == [0.0, 5.0, 10.0]
    assert mean == pytest.approx([0.5, 0.55, 0.6])
    assert spread[0] == 0.0 and spread[2] == pytest.approx(0.1414, abs=1e-4)
