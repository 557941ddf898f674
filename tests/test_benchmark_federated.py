"""benchmarks/federated_accuracy.py: one federated run on a tiny random-weight Llama and a tiny fake VADER, offline
(the ``tiny_assets`` fixture is in conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import hf_fedzo.federation.results
from benchmarks.accuracy_arms import ARMS, Setup
from benchmarks.federated_accuracy import run_arm

BUDGET_TFLOPS = 6e-3  # a tiny-Llama FedSPZO round (4 clients x 4 local steps) is about 4.8e-3


def test_a_run_stops_at_the_budget_and_plots_its_curve_from_zero_shot_beside_the_reference_lines(
        tiny_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, drawn = hf_fedzo.federation.results.plot_rounds, []

    def recording(output, config, result, plot=None):
        drawn.append(plot)
        real(output, config, result, plot)

    monkeypatch.setattr(hf_fedzo.federation.results, "plot_rounds", recording)
    setup = Setup(model=str(tiny_assets), eval_samples=8, test_samples=None, budget_tflops=BUDGET_TFLOPS,
                  eval_every_tflops=BUDGET_TFLOPS / 2)
    output = tmp_path / "run"
    run = run_arm(setup, ARMS["fedspzo"], 1, 5e-3, str(output), 0.625)

    assert run["curve"][0] == [0.0, 0.625] and len(run["curve"]) >= 2
    assert BUDGET_TFLOPS <= run["total_tflops"] == pytest.approx(run["curve"][-1][0])
    assert (output / "final_trainable.pt").is_file()
    (plot,) = drawn  # drawn once, by the federation, with what only the benchmark knows
    assert plot.label == "FedSPZO (P1=1, P2=4, split 0.9), lr 0.005, seed 1"
    assert plot.start == 0.625 and plot.ylabel == "validation accuracy (8 sentences)"
    references = dict(plot.references)
    assert references.keys() == {"zero-shot", "majority class"} and references["zero-shot"] == 0.625
    assert 0.5 <= references["majority class"] <= 1.0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (output / "accuracy_vs_flops.png").is_file()
