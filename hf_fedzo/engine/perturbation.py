"""Random directions regenerated from seeds, never stored.

A direction is materialised chunk by chunk (at most ``CHUNK_NUMEL`` elements at a time, each chunk a pure
function of its seed, derived from (direction seed, parameter index, chunk)), so the extra memory of a
perturbation is one chunk buffer rather than a copy of the largest weight matrix, and chunks can be generated in
parallel. z never depends on iteration order. The distributions are the ``PERTURBATIONS`` registry:
``gaussian_table`` (the default) and ``rademacher_philox`` (``noise.py``) cost about one memory pass;
``gaussian`` (MeZO's law) and ``rademacher`` fill a chunk from a private ``torch.Generator`` seeded with the chunk
seed, at about 4 ns per element on CPU, which doubles the cost of a full-weight step there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

from hf_fedzo.engine.noise import GaussianTable, PhiloxRademacher
from hf_fedzo.engine.seeds import parameter_seed
from hf_fedzo.registry import Registry

CHUNK_NUMEL = 1 << 20
# Chosen by benchmarks.step_overhead (full-weight steps at their plain forwards) and benchmarks.estimator_quality
# (estimates as good as mt19937 Gaussians per direction); docs/benchmarks.md, issue 17.
DEFAULT_PERTURBATION = "gaussian_table"

Sampler = Callable[[torch.Tensor, torch.Generator], None]


class Distribution(Protocol):
    """A direction's law: ``draw(chunk_seed, buffer)`` returns one chunk of z (``buffer`` filled, or a view of
    shared noise of ``buffer``'s size) and a sign (±1.0) to apply it with. It must be a pure function of the seed."""

    def draw(self, seed: int, buffer: torch.Tensor) -> tuple[torch.Tensor, float]: ...


class SeededSampler:
    """A ``sampler(out, generator)`` run with a private ``torch.Generator`` seeded with the chunk seed."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def draw(self, seed: int, buffer: torch.Tensor) -> tuple[torch.Tensor, float]:
        generator = torch.Generator(device=buffer.device)
        generator.manual_seed(seed)
        self.sampler(buffer, generator)
        return buffer, 1.0


def _gaussian(out: torch.Tensor, generator: torch.Generator) -> None:
    out.normal_(generator=generator)


def _rademacher(out: torch.Tensor, generator: torch.Generator) -> None:
    out.random_(0, 2, generator=generator).mul_(2).sub_(1)


PERTURBATIONS: Registry[Sampler | Distribution] = Registry("zo_perturbation", {
    "gaussian_table": GaussianTable(CHUNK_NUMEL),  # the default: about one memory pass per perturbation (noise.py)
    "rademacher_philox": PhiloxRademacher(),
    "gaussian": _gaussian,  # mt19937 per chunk, as MeZO
    "rademacher": _rademacher,
})


def register_perturbation(name: str, sampler: Sampler | Distribution, *,
                          overwrite: bool = False) -> Sampler | Distribution:
    """Add a distribution: a ``sampler(out, generator)`` filling ``out`` in place with zero-mean, unit-variance
    noise from a seeded generator, or a :class:`Distribution` (an object with ``draw(seed, buffer)``)."""
    return PERTURBATIONS.register(name, sampler, overwrite=overwrite)


def get_distribution(name: str) -> Distribution:
    if name not in PERTURBATIONS:
        raise ValueError(f"zo_perturbation: unknown distribution {name!r}; choose from {sorted(PERTURBATIONS)}")
    entry = PERTURBATIONS[name]
    return entry if hasattr(entry, "draw") else SeededSampler(entry)  # type: ignore[arg-type,return-value]


@dataclass(frozen=True)
class IndexedParameter:
    """A trainable tensor with the stable index its random stream is derived from."""

    index: int
    name: str
    tensor: torch.Tensor
    decay: bool


def _work_items(params: Sequence[IndexedParameter]) -> list[tuple[IndexedParameter, int, int, int]]:
    items = []
    for p in params:
        flat_numel = p.tensor.numel()
        for chunk, start in enumerate(range(0, flat_numel, CHUNK_NUMEL)):
            items.append((p, chunk, start, min(start + CHUNK_NUMEL, flat_numel)))
    return items


class DirectionApplier:
    """Adds linear combinations of seeded directions to parameters in place: θ += Σ_k c_k · z(seed_k).

    One call handles a single perturbation (one term) and an update from many scalars (many terms):
    per chunk the terms are accumulated in a float32 buffer and written once.
    """

    def __init__(self, distribution: str = DEFAULT_PERTURBATION, num_threads: int | None = None) -> None:
        self.law = get_distribution(distribution)
        self.distribution = distribution
        self.num_threads = num_threads or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    def _chunk(self, item: tuple[IndexedParameter, int, int, int], terms: Sequence[tuple[int, float]]) -> None:
        p, chunk, start, stop = item
        # detach(): an alias outside autograd, since grad mode is thread-local and workers run without it.
        flat = p.tensor.detach().view(-1)[start:stop]
        buffer = torch.empty(stop - start, dtype=torch.float32, device=flat.device)
        acc = None if len(terms) == 1 else torch.zeros_like(buffer)
        for seed, coef in terms:
            z, sign = self.law.draw(parameter_seed(seed, p.index, chunk), buffer)
            alpha = coef * sign  # sign is ±1.0: exact, so the default laws' arithmetic is unchanged
            if acc is None:
                flat.add_(z.to(flat.dtype), alpha=alpha)
                return
            acc.add_(z, alpha=alpha)
        assert acc is not None
        flat.add_(acc.to(flat.dtype))

    @torch.no_grad()
    def add_(self, params: Sequence[IndexedParameter], terms: Sequence[tuple[int, float]]) -> None:
        terms = [(s, c) for s, c in terms if c != 0.0]
        if not params or not terms:
            return
        items = _work_items(params)
        on_cpu = params[0].tensor.device.type == "cpu"
        # Generation is serial inside one torch.Generator; independent chunk streams let CPU threads
        # fill chunks concurrently (torch releases the GIL inside kernels).
        total = sum(p.tensor.numel() for p in params)
        if on_cpu and self.num_threads > 1 and total > 2 * CHUNK_NUMEL:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="hf_fedzo-z")
            list(self._pool.map(lambda it: self._chunk(it, terms), items))
        else:
            for item in items:
                self._chunk(item, terms)

    def direction(self, param: IndexedParameter, seed: int) -> torch.Tensor:
        """Materialise z for one parameter (tests and debugging only: production code never stores z)."""
        flat = torch.zeros(param.tensor.numel(), dtype=torch.float32, device=param.tensor.device)
        target = IndexedParameter(param.index, param.name, flat, param.decay)
        self.add_([target], [(seed, 1.0)])
        return flat.view_as(param.tensor)
