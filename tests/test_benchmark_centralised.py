"""benchmarks/centralised_accuracy.py end to end on a tiny random-weight Llama and a tiny fake VADER, offline
(the ``tiny_assets`` fixture is in conftest.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks.accuracy_arms import ARMS, Setup
from benchmarks.accuracy_runs import run_dir
from benchmarks.centralised_accuracy import main, run_arm, zo_config
from benchmarks.federated_accuracy import federation_config

ARGS = ["--arms", "mezo", "fedspzo", "--seeds", "1", "2", "--eval_samples", "8", "--workers", "1"]
BUDGET_TFLOPS, EVAL_EVERY_TFLOPS = 9e-4, 3e-4  # a tiny-Llama step: MeZO 1.7e-4, FedSPZO 3.0e-4


def test_a_run_trains_with_the_federations_zo_settings(tmp_path: Path) -> None:
    setup = Setup(model="tiny", eval_samples=8, test_samples=None, budget_tflops=1.0, eval_every_tflops=1.0)
    for name in ("mezo", "nspsa", "fedspzo", "fedspzo-p2-2", "mezo-full", "fedspzo-wd2"):
        args = zo_config(setup, ARMS[name], 7, 5e-3, str(tmp_path))
        federation = federation_config(setup, ARMS[name], 7, 5e-3)
        assert args.zo_settings == federation.round_settings().zo
        assert args.weight_decay == federation.weight_decay == ARMS[name].weight_decay
        assert args.per_device_train_batch_size == setup.batch_size and args.lr_scheduler_type == "constant"


def test_the_benchmark_runs_end_to_end_and_stops_at_the_budget(
        tiny_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [*ARGS, "--model_name_or_path", str(tiny_assets), "--output_dir", str(out),
            "--budget_tflops", str(BUDGET_TFLOPS), "--eval_every_tflops", str(EVAL_EVERY_TFLOPS)]
    report = main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("centralised compute to accuracy: FLOPs ratio MeZO/FedSPZO to MeZO's final accuracy ")
    value = last.split("final accuracy ")[1]
    assert value.endswith(" seeds") and (value.startswith("nan ± nan over 0") or " ± " in value)

    runs = report["runs"]
    assert {(r["arm"], r["seed"]) for r in runs} == {(a, s) for a in ("mezo", "fedspzo") for s in (1, 2)}
    assert len(report["tuning"]) == 6  # 2 arms x 3 step sizes on the first seed
    for run in runs:
        # The budget stops training (max_steps is 1e9): the step that crosses it is the last.
        steps, spent = run["steps"], run["total_tflops"]
        assert spent >= BUDGET_TFLOPS and spent - BUDGET_TFLOPS < 1.5 * spent / steps
        flops = [x for x, _ in run["curve"]]
        assert flops[0] == 0.0 and flops[-1] == pytest.approx(spent) and len(flops) >= 4  # a FLOP cadence
        assert flops == sorted(flops)
    tests = report["test"]
    assert len(tests) == 4 and all(t["examples"] == 8 and 0 <= t["standard_error"] <= 0.5 for t in tests)
    assert all(t["prediction_rate_0"] + t["prediction_rate_1"] == pytest.approx(1.0) for t in tests)

    # Finished runs are reused: a second call runs nothing and reports the same.
    chosen = report["chosen_lr"]["mezo"]
    saved = json.loads((run_dir(out, "mezo", chosen, 1) / "curve.json").read_text())
    assert saved["result"]["curve"] == next(r["curve"] for r in runs if r["arm"] == "mezo" and r["seed"] == 1)
    assert main([*argv, "--report_only"])["compute_to_accuracy"] == report["compute_to_accuracy"]


def test_an_interrupted_run_resumes_from_its_last_evaluation(tiny_assets: Path, tmp_path: Path) -> None:
    """A run stopped at a smaller budget leaves a checkpoint; the same run at the full budget continues from it
    (the curve so far and the FLOP counters come back with it) and ends exactly where an uninterrupted run ends."""
    # The first budget ends on an evaluation of the cadence, as a kill after a checkpoint would.
    setup = Setup(model=str(tiny_assets), eval_samples=8, test_samples=None, budget_tflops=2 * EVAL_EVERY_TFLOPS,
                  eval_every_tflops=EVAL_EVERY_TFLOPS)
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    first = run_arm(setup, ARMS["mezo"], 1, 5e-3, str(resumed), 0.5)
    assert any(p.name.startswith("checkpoint-") for p in resumed.iterdir())
    full = dataclasses.replace(setup, budget_tflops=BUDGET_TFLOPS)
    second = run_arm(full, ARMS["mezo"], 1, 5e-3, str(resumed), 0.5)
    uninterrupted = run_arm(full, ARMS["mezo"], 1, 5e-3, str(fresh), 0.5)
    assert second["curve"][:len(first["curve"])] == first["curve"]
    assert second["curve"] == uninterrupted["curve"] and second["steps"] == uninterrupted["steps"] > first["steps"]
    ends = [torch.load(folder / "final_trainable.pt") for folder in (resumed, fresh)]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in ends[0].items())  # it trained
