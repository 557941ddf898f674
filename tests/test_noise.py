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


def test_gaussian_table_is_a_white_cycle_read_at_seeded_offsets() -> None:
    law = GaussianTable(CHUNK_NUMEL)
    table = law.table(torch.device("cpu"))
    assert table.numel() == TABLE_OFFSETS + CHUNK_NUMEL
    cycle = table[:TABLE_OFFSETS].double()
    assert torch.equal(table[TABLE_OFFSETS:], table[:CHUNK_NUMEL])  # windows wrap around the cycle
    assert abs(float(cycle.square().mean()) - 1) < 1e-6
    power = torch.fft.rfft(cycle).abs().square() / TABLE_OFFSETS  # flat: every lag but 0 uncorrelated, exactly
    assert float((power - 1).abs().max()) < 1e-3  # (the 2**-12 rounding grid leaves about 1e-4)
    assert torch.equal(table, GaussianTable(CHUNK_NUMEL).table(torch.device("cpu")))  # rebuilt identically
    seed = (5 << 1) | 1  # offset 5, negative sign
    window, sign = law.draw(seed, torch.empty(10))
    assert sign == -1.0 and torch.equal(window, table[5:15])
    assert law.draw(((TABLE_OFFSETS - 3) << 1), torch.empty(10))[0].tolist() == table[-CHUNK_NUMEL - 3:][:10].tolist()
    assert get_distribution("gaussian_table").draw(seed, torch.empty(10))[1] == -1.0


def test_gaussian_table_window_sums_have_the_iid_second_moment() -> None:
    """Over all offsets, E[(sum of a window)²] = window length: a gradient of one sign sees i.i.d.-like z."""
    law = GaussianTable(1 << 12, offsets=1 << 14)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), law.table(torch.device("cpu")).double().cumsum(0)])
    for width in (1 << 12, 1 << 8):
        sums = cumulative[width:width + (1 << 14)] - cumulative[:1 << 14]
        assert float(sums.square().mean()) / width == pytest.approx(1, abs=1e-3)


def test_gaussian_table_is_the_same_with_another_fft_library() -> None:
    """numpy's pocketfft and torch's FFT differ in the last float64 bits; the rounding grid absorbs that."""
    import numpy as np

    law = GaussianTable(1 << 12, offsets=1 << 16)
    cycle = law.table(torch.device("cpu"))[:1 << 16].numpy()
    generator = torch.Generator().manual_seed(law.seed)
    phase = torch.rand((1 << 15) + 1, generator=generator, dtype=torch.float64).mul_(2 * np.pi).numpy()
    ends = torch.randint(0, 2, (2,), generator=generator, dtype=torch.float64).mul_(2).sub_(1).numpy()
    spectrum = np.exp(1j * phase)
    spectrum[0], spectrum[-1] = ends
    rebuilt = np.round(np.fft.irfft(spectrum * np.sqrt(1 << 16), n=1 << 16) * 4096) / 4096
    assert np.array_equal(rebuilt.astype(np.float32), cycle)


def test_gaussian_table_refuses_a_period_shorter_than_a_chunk() -> None:
    with pytest.raises(ValueError, match="offsets"):
        GaussianTable(1 << 12, offsets=1 << 10)
