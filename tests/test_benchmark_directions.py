"""benchmarks/step_overhead.py's byte count for the bandwidth floor, and benchmarks/direction_laws.py's moments."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.direction_laws import moments
from benchmarks.step_overhead import MovedBytes, bandwidth
from hf_fedzo.engine import IndexedParameter, ZOEstimator, ZOSettings
from tests.tiny_models import llama, random_batch, seeded


def test_a_mezo_step_moves_four_passes_of_weights_and_z() -> None:
    """Perturb, flip, restore and update: four passes, each reading and writing θ (float32) and reading z."""
    model = seeded(llama)
    batch = random_batch("llama")
    estimator = ZOEstimator(model, ZOSettings(eps=1e-3, p1=1, p2=1, split="none"))
    moved = MovedBytes(estimator)
    estimate = estimator.estimate(lambda: model(**batch).loss, step_seed=3)
    assert float(estimate.scalars[0, 0]) != 0.0
    estimator.apply_update([(estimate.step_seed, estimate.scalars)], lr=1e-3)
    d = sum(p.tensor.numel() for p in estimator.parameters)
    assert moved.total == 4 * d * (2 * 4 + 4)


def test_a_zero_scalar_update_moves_nothing() -> None:
    model = seeded(llama)
    batch = random_batch("llama")
    estimator = ZOEstimator(model, ZOSettings(eps=1e-3, p1=1, p2=1, split="none"))
    estimator.prepare(lambda: model(**batch).loss)
    moved = MovedBytes(estimator)
    estimator.apply_update([(7, torch.zeros(1, 1))], lr=1e-3)
    assert moved.total == 0


def test_bandwidth_is_a_positive_rate() -> None:
    rate = bandwidth(1, numel=1 << 16, repeats=2)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize("law", ["gaussian_table", "gaussian", "rademacher_philox"])
def test_moments_of_every_law_match_iid_directions(law: str) -> None:
    """E[(g·z)²]/‖g‖² ≈ 1 against a structured gradient (one sign per tensor, three tensors, two chunks in one);
    600 directions give a standard error of about 0.06."""
    shapes = [(1 << 20) + 300, 500, 64]
    params = [IndexedParameter(i, f"w{i}", torch.zeros(n), True) for i, n in enumerate(shapes)]
    gen = torch.Generator().manual_seed(0)
    grad = {p.index: torch.rand(p.tensor.numel(), generator=gen, dtype=torch.float64) * (1 + p.index)
            for p in params}
    m = moments(params, grad, law, directions=600, seed=1)
    assert m["d"] == sum(shapes)
    assert abs(m["projected"] - 1) < 4 * m["projected_se"] < 0.4
    assert m["second"] == pytest.approx(m["projected"], rel=0.01)  # ‖z‖² ≈ d

