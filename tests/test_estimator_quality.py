"""benchmarks/estimator_quality.py: the rebuilt update direction is what the optimizer applies; the cosine,
fit, crossing and ratio arithmetic on synthetic curves; the whole measurement on a tiny tied-head llama."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from benchmarks import estimator_fit
from benchmarks import estimator_quality as eq
from benchmarks.estimator_fit import compare, crossing_ratio, fit_f0, flops_at, jackknife, mean_curve, predicted_f0
from hf_fedzo.engine import ZOEstimator, ZOOptimizer
from hf_fedzo.reporting import plots_available, write_json
from tests.tiny_models import llama, random_batch, seeded


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


@pytest.mark.parametrize("spec", ["1,1,none", "1,3,none", "2,3,2"])
def test_rebuilt_direction_is_the_step_the_optimizer_takes(spec: str) -> None:
    """One real ZOOptimizer step moves θ by exactly −lr × the rebuilt direction (split, tied head included)."""
    model = seeded(llama)
    batch = random_batch("llama")
    estimator = ZOEstimator(model, eq.Estimator.parse(spec).settings(1e-3))
    estimator.prepare(lambda: _loss(model, batch))
    assert bool(estimator.plan.tied) == (estimator.plan.split_index is not None)  # the tied head is exercised
    params = estimator.plan.parameters
    optimizer = ZOOptimizer([p.tensor for p in params], estimator, lr=0.05)
    before = [p.tensor.detach().clone() for p in params]
    direction = eq.UpdateDirection(estimator)
    estimate = estimator.estimate(lambda: _loss(model, batch), 1234)
    direction.add(estimate)
    optimizer.accumulate(estimate)
    optimizer.step()
    rebuilt = direction.vector()
    for p, old in zip(params, before, strict=True):
        assert rebuilt[p.index].abs().sum() > 0
        torch.testing.assert_close(p.tensor.detach() - old, -0.05 * rebuilt[p.index], atol=1e-6, rtol=1e-4)


def test_cosine_and_relative_error_of_the_mean_direction() -> None:
    model = seeded(llama)
    batch = random_batch("llama")
    estimator = ZOEstimator(model, eq.Estimator(1, 2, 2).settings(1e-3))
    estimator.prepare(lambda: _loss(model, batch))
    direction = eq.UpdateDirection(estimator)
    for seed in (1, 2, 3):
        direction.add(estimator.estimate(lambda: _loss(model, batch), seed))
    grad = eq.true_gradient(model, lambda: _loss(model, batch))
    mean = direction.vector()
    flat_mean = torch.cat([mean[i].flatten() for i in sorted(mean)]).double()
    flat_grad = torch.cat([grad[i].flatten() for i in sorted(grad)]).double()
    cosine, rel_err = direction.against(grad)
    assert cosine == pytest.approx(float(flat_mean @ flat_grad / (flat_mean.norm() * flat_grad.norm())), rel=1e-6)
    assert rel_err == pytest.approx(float((flat_mean - flat_grad).norm() / flat_grad.norm()), rel=1e-6)


def test_true_gradient_is_autograd_and_leaves_no_grad_behind() -> None:
    model = seeded(llama)
    batch = random_batch("llama")
    grad = eq.true_gradient(model, lambda: _loss(model, batch))
    _loss(model, batch).backward()
    for i, (_, p) in enumerate(model.named_parameters()):
        torch.testing.assert_close(grad[i], p.grad.double())
    model.zero_grad(set_to_none=True)
    eq.true_gradient(model, lambda: _loss(model, batch))
    assert all(p.grad is None for p in model.parameters())


def _exact(f0: float, flops: list[float]) -> list[tuple[float, float, float]]:
    return [(f, math.sqrt(f / (f + f0)), 1.0) for f in flops]


def test_fit_recovers_f0_and_inverts_to_flops() -> None:
    flops = [10.0, 20.0, 30.0, 40.0]
    cos2 = [f / (f + 500.0) for f in flops]
    assert fit_f0(flops, cos2) == pytest.approx(500.0)
    assert flops_at(500.0, math.sqrt(cos2[2])) == pytest.approx(30.0)
    assert fit_f0(flops, [0.0, -1e-4, 0.0, 0.0]) == math.inf  # no signal: never reaches any cosine


def test_crossing_ratio_at_the_highest_common_level() -> None:
    cheap = [(f, c) for f, c, _ in _exact(100.0, [4.0, 8.0, 12.0])]  # reaches a cosine 3x cheaper
    costly = [(f, c) for f, c, _ in _exact(300.0, [4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 36.0])]
    level, ratio = crossing_ratio(costly, cheap)
    assert level == pytest.approx(math.sqrt(12.0 / 112.0))
    assert ratio == pytest.approx(3.0, rel=0.02)  # linear interpolation of a concave curve: slightly off
    assert crossing_ratio([(1.0, 0.0)], cheap) is None


def test_compare_gives_the_ratio_at_equal_cosine_with_a_jackknife_error() -> None:
    flops = [2.0 * k for k in range(1, 9)]
    runs = {"MeZO": [_exact(1000.0, flops)] * 3, "FedSPZO": [_exact(250.0, flops)] * 3}
    out = compare(runs, "MeZO")
    assert out["MeZO"]["ratio"] == pytest.approx(1.0)
    assert out["FedSPZO"]["ratio"] == pytest.approx(4.0)
    assert out["FedSPZO"]["ratio_se"] == pytest.approx(0.0, abs=1e-12)  # identical repeats
    noisy = {"MeZO": runs["MeZO"], "FedSPZO": [_exact(f0, flops) for f0 in (200.0, 250.0, 300.0)]}
    assert compare(noisy, "MeZO")["FedSPZO"]["ratio_se"] > 0.1
    curve = mean_curve(noisy["FedSPZO"])
    assert curve["cos_se"][0] > 0 and curve["rel_err_se"][0] == 0.0


def test_jackknife_of_a_mean_is_the_standard_error() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    se = jackknife(lambda keep: sum(values[i] for i in keep) / len(keep), len(values))
    assert se == pytest.approx(torch.tensor(values).std().item() / 2.0)
    assert jackknife(lambda keep: 1.0, 1) == 0.0


def test_predicted_f0() -> None:
    # No split: P directions in d entries at cost 2PC reach F0 = 2C·d, whatever P is.
    assert predicted_f0(2 * 4 * 10.0, 0, 1000, 0.0, 5.0, 1, 4) == pytest.approx(2 * 10.0 * 1000)
    # A split whose gradient lies wholly in block 2: block 1 only adds noise from g2 (divided by P2).
    c1, c2, d1, d2, p2 = 9.0, 1.0, 900, 100, 4
    f0 = predicted_f0(2 * (c1 + p2 * c2), d1, d2, 0.0, 1.0, 1, p2)
    assert f0 == pytest.approx(2 * (c1 + p2 * c2) * (d1 / p2 + d2 / p2))
    assert 2 * (c1 + c2) * (d1 + d2) / f0 == pytest.approx(p2 * 10 / 13)  # MeZO/FedSPZO = P2·C / (C1 + P2·C2)


def test_estimator_specs() -> None:
    assert eq.Estimator.parse("2,8,0.9") == eq.Estimator(2, 8, 0.9)
    assert eq.Estimator.parse("1,1,none").kind == "MeZO"
    assert eq.Estimator.parse("1,4,none").label() == "n-SPSA (P=4)"
    assert eq.Estimator.parse("1,4,auto").label(24, 30) == "FedSPZO (P1=1, P2=4, split 24/30)"
    for bad in ("1,4", "0,4,0.9", "1,4,1.5", "a,4,0.9"):
        with pytest.raises(ValueError, match="--grid"):
            eq.Estimator.parse(bad)
    with pytest.raises(SystemExit):
        eq.main(["--grid", "1,4,none"])


def test_whole_measurement_on_a_tiny_model(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    """measure_param_set → tables and plot, with a tiny llama standing in for SmolLM2."""
    monkeypatch.setattr(eq, "load_params", lambda path, param_set, seed: seeded(llama))
    monkeypatch.setattr(eq, "THEORY_SPLITS", (0.5,))
    args = argparse.Namespace(model="tiny", lora_eps=1e-2, full_eps=1e-3, seed=0, budget_forwards=6.0,
                              perturbation=None)
    measured = [eq.MEZO, eq.Estimator(1, 2), eq.Estimator(1, 4, 0.5), eq.Estimator(2, 2, 3)]
    batches = [random_batch("llama", seed=s) for s in (0, 1)]
    lines: list[str] = []
    report = eq.measure_param_set("full", args, _loss, batches, measured, lines.append)
    assert len(lines) == 2 * len(measured)
    rows = report["estimators"]
    assert rows["MeZO"]["ratio"] == pytest.approx(1.0) and rows["MeZO"]["estimates"] == 3
    assert rows["MeZO"]["theory_ratio"] == pytest.approx(1.0)
    # MeZO's first-order F0 is 2C·d, C one forward, d the trainable entries (the tied head counted once).
    assert rows["MeZO"]["theory_f0"] == pytest.approx(2 * report["full_forward_flops"] * report["trainable"], rel=0.05)
    assert rows["n-SPSA (P=2)"]["theory_ratio"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["curve"]["flops"][-1] >= 6.0 * report["full_forward_flops"] * 0.99
        assert len(row["curve"]["cos"]) == row["estimates"]
    assert estimator_fit.winner(report).startswith("FedSPZO")
    estimator_fit.print_tables(report, "MeZO")
    assert "estimator-quality winner" in capsys.readouterr().out
    estimator_fit.plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").exists() == plots_available()  # a core install skips the figure only
    # --report_only rebuilds tables, plots and the last line from the saved report.
    write_json(tmp_path / "report.json", {"headline": {"p1": 1, "p2": 4, "split": 0.5}, "reports": {"full": report}})
    eq.main(["--report_only", "--output_dir", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    ratio = rows["FedSPZO (P1=1, P2=4, split 2/4)"]["ratio"]
    assert last == f"estimator quality: FLOPs ratio MeZO/FedSPZO at equal cosine: lora nan, full {ratio:.2f}"
    assert (tmp_path / "estimator_quality_full.png").is_file() == plots_available()
    with pytest.raises(SystemExit):
        eq.main(["--report_only", "--output_dir", str(tmp_path / "missing")])


def test_noise_f0_reads_the_error_of_the_mean_update() -> None:
    runs = {"MeZO": [[(2.0 * k, 0.1, math.sqrt(1000.0 / (2.0 * k))) for k in range(1, 5)]] * 2,
            "FedSPZO": [[(3.0 * k, 0.1, math.sqrt(500.0 / (3.0 * k))) for k in range(1, 4)]] * 2}
    out = compare(runs, "MeZO")
    assert out["MeZO"]["f0_noise"] == pytest.approx(1000.0)
    assert out["FedSPZO"]["ratio_noise"] == pytest.approx(2.0)


@pytest.mark.parametrize(("sq1", "sq2", "p1", "p2"), [(0.0, 1.0, 1, 1), (0.9, 0.1, 1, 4), (0.1, 0.9, 1, 4),
                                                     (0.5, 0.5, 2, 4)])
def test_predicted_noise_matches_a_simulation_of_split_estimates(sq1: float, sq2: float, p1: int, p2: int) -> None:
    """E||ĝ − g||²/||g||² of exact split directional derivatives (Monte Carlo) against predicted_f0 per FLOP."""
    gen = torch.Generator().manual_seed(0)
    d1, d2, trials = (0 if sq1 == 0 else 200), 60, 3000
    g1 = torch.randn(d1, generator=gen)
    g1 = g1 * math.sqrt(sq1) / g1.norm() if d1 else g1
    g2 = torch.randn(d2, generator=gen)
    g2 = g2 * math.sqrt(sq2) / g2.norm()
    u, v = torch.randn(trials, p1, d1, generator=gen), torch.randn(trials, p1, p2, d2, generator=gen)
    scalars = (u @ g1)[..., None] + v @ g2  # (trials, P1, P2) directional derivatives along (u_i, v_ij)
    estimate = torch.cat([(scalars.mean(-1)[..., None] * u).mean(1), (scalars[..., None] * v).mean((1, 2))], -1)
    simulated = float(((estimate - torch.cat([g1, g2])) ** 2).sum(-1).mean() / (sq1 + sq2))
    assert simulated == pytest.approx(predicted_f0(1.0, d1, d2, sq1, sq2, p1, p2), rel=0.08)
