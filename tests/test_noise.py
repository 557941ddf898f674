"""Every registered direction law: zero mean, unit variance, uncorrelated across seeds and tensors, exact replay."""

from __future__ import annotations

import pytest
import torch

from hf_fedzo.engine.noise import TABLE_OFFSETS, GaussianTable, PhiloxRademacher
from hf_fedzo.engine.perturbation import (
    CHUNK_NUMEL,
    PERTURBATIONS,
    DirectionApplier,
    IndexedParameter,
    get_distribution,
)

NUMEL = 3 * CHUNK_NUMEL // 2 + 7  # two chunks, the second ragged
DISTRIBUTIONS = ["gaussian", "rademacher", "gaussian_table", "rademacher_philox"]


def _param(index: int, numel: int = NUMEL) -> IndexedParameter:
    return IndexedParameter(index, f"p{index}", torch.zeros(numel), True)


def test_the_registry_holds_the_laws_tested_here() -> None:
    assert set(DISTRIBUTIONS) <= set(PERTURBATIONS)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_directions_are_standardised_and_uncorrelated(name: str) -> None:
    applier = DirectionApplier(name, num_threads=1)
    n = NUMEL
    bound = 6 / n ** 0.5  # six standard errors of a mean (or correlation) of n unit-variance terms
    a, b, c = (applier.direction(_param(i), seed) for i, seed in ((0, 11), (0, 12), (1, 11)))
    for z in (a, b, c):
        assert abs(float(z.double().mean())) < bound
        assert abs(float(z.double().var()) - 1) < 6 * (2 / n) ** 0.5
    assert abs(float((a.double() * b.double()).mean())) < bound  # same tensor, two seeds
    assert abs(float((a.double() * c.double()).mean())) < bound  # same seed, two tensors
    # Within one direction, its two chunks are uncorrelated too (compare the chunks element by element).
    head, tail = a[:CHUNK_NUMEL // 2].double(), a[CHUNK_NUMEL:CHUNK_NUMEL + CHUNK_NUMEL // 2].double()
    assert abs(float((head * tail).mean())) < 6 / (CHUNK_NUMEL // 2) ** 0.5


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_directions_over_many_seeds_have_identity_second_moment(name: str) -> None:
    """E[z zᵀ] = I over seeds (what makes the two-point estimate unbiased), checked on a small tensor."""
    applier = DirectionApplier(name, num_threads=1)
    samples = torch.stack([applier.direction(_param(2, 6), seed).double() for seed in range(4000)])
    second = samples.T @ samples / len(samples)
    torch.testing.assert_close(second, torch.eye(6, dtype=torch.float64), rtol=0, atol=0.1)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_replay_is_exact_and_stateless(name: str) -> None:
    """A direction is a pure function of its seed: fresh appliers, threads and call order do not change it."""
    first = DirectionApplier(name, num_threads=1).direction(_param(3, 5 * CHUNK_NUMEL), 99)
    DirectionApplier(name, num_threads=1).direction(_param(3), 5)  # unrelated draws in between change nothing
    again = DirectionApplier(name, num_threads=4).direction(_param(3, 5 * CHUNK_NUMEL), 99)
    assert torch.equal(first, again)
    weights = _param(3, 5 * CHUNK_NUMEL)
    DirectionApplier(name, num_threads=4).add_([weights], [(99, 0.5), (7, 0.25)])
    expected = 0.5 * first + 0.25 * DirectionApplier(name, num_threads=1).direction(_param(3, 5 * CHUNK_NUMEL), 7)
    torch.testing.assert_close(weights.tensor, expected, rtol=0, atol=1e-6)


def test_rademacher_philox_is_signs_from_its_words() -> None:
    buffer = torch.empty(130)
    z, sign = PhiloxRademacher().draw(12345, buffer)
    assert sign == 1.0 and set(z.unique().tolist()) == {-1.0, 1.0}
    import numpy as np

    bits = np.unpackbits(np.random.Philox(key=12345).random_raw(3).view(np.uint8), bitorder="little")[:130]
    assert z.tolist() == [1.0 if bit else -1.0 for bit in bits]


def test_gaussian_table_is_a_standardised_table_read_at_seeded_offsets() -> None:
    law = GaussianTable(CHUNK_NUMEL)
    table = law.table(torch.device("cpu"))
    assert table.numel() == TABLE_OFFSETS + CHUNK_NUMEL
    assert abs(float(table.double().mean())) < 1e-6 and abs(float(table.double().var(correction=0)) - 1) < 1e-5
    assert torch.equal(table, GaussianTable(CHUNK_NUMEL).table(torch.device("cpu")))  # rebuilt identically
    seed = (5 << 1) | 1  # offset 5, negative sign
    window, sign = law.draw(seed, torch.empty(10))
    assert sign == -1.0 and torch.equal(window, table[5:15])
    assert get_distribution("gaussian_table").draw(seed, torch.empty(10))[1] == -1.0
