"""benchmarks/heterogeneous.py: its arms run on a tiny model, and its comparison arithmetic on those runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.heterogeneous import ARMS, Setup, compare, curves, report, run_arm, summary_line
from tests.federation_setup import batch_loss, client_data, tiny_model


def test_curves_charge_a_round_its_slowest_client() -> None:
    run = {"arm": "x", "rounds": [
        {"round": 0, "sampled": [0, 1], "flops": 30, "cumulative_flops": 30,
         "accounting": {"0": {"flops_block1": 10, "flops_block2": 10}, "1": {"flops_block1": 5, "flops_block2": 5}}},
        {"round": 1, "sampled": [0, 1], "flops": 30, "cumulative_flops": 60, "eval": {"accuracy": 0.7},
         "accounting": {"0": {"flops_block1": 10, "flops_block2": 10}, "1": {"flops_block1": 5, "flops_block2": 5}}},
    ]}
    assert curves(run, 0.5) == {"flops": [[0.0, 0.5], [60.0, 0.7]], "clock": [[0.0, 0.5], [40.0, 0.7]]}


def test_the_benchmark_arms_run_and_compare_on_a_tiny_model(tmp_path: Path) -> None:
    setup = dataclasses.replace(Setup(model="tiny"), rounds=3, eval_every=1, num_clients=4, clients_per_round=2,
                                local_steps=1, batch_size=4, learning_rate=5e-3, zo_eps=1e-3)
    clients = client_data()
    accuracy = iter(x / 100 for x in range(50, 100))

    def evaluate(model: object) -> dict[str, float]:
        return {"accuracy": next(accuracy)}

    runs = [run_arm(setup, arm, tmp_path, tiny_model, batch_loss, clients, evaluate) for arm in ARMS]
    table = compare(runs, 0.5)
    assert set(table["arms"]) == {a.name for a in ARMS}
    arms = table["arms"]
    # The arm that spent the fewest FLOPs sets the equal-FLOPs point; weak clients cost less than strong ones.
    assert table["equal_flops"] == min(row["total_flops"] for row in arms.values())
    assert arms["all-weak"]["total_flops"] < arms["top"]["total_flops"]
    assert len(arms["top"]["active_sets"]) > 1 and arms["exclude-weak"]["active_sets"] == []
    for row in arms.values():
        assert 0.5 <= row["accuracy_at_equal_flops"] <= 1 and 0.5 <= row["accuracy_at_equal_clock"] <= 1
    line = summary_line(table)
    assert line.startswith("heterogeneous: accuracy zorba ") and line.endswith(" at equal wall-clock")
    assert "| zorba-fedmezo |" in report(table, {"weak": 1.0})
    with pytest.raises(KeyError):
        summary_line({"arms": {"zorba": arms["zorba"]}})
