"""Stateless seed derivation.

Every random direction is a pure function of its coordinates (base seed, round, client, global step,
micro-batch, block, perturbation index, parameter index, chunk). Nothing is drawn from a global RNG
and nothing depends on how many directions were generated before, so a resumed run, a replaying
client and the server all regenerate exactly the same perturbations.
"""

from __future__ import annotations

from dataclasses import dataclass

_MASK64 = (1 << 64) - 1
_SEED_MASK = (1 << 63) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Hash integer coordinates into a non-negative 63-bit seed (order-sensitive)."""
    acc = 0x243F6A8885A308D3
    for part in parts:
        acc = _splitmix64(acc ^ (int(part) & _MASK64))
    return acc & _SEED_MASK


BLOCK1 = 1
BLOCK2 = 2


@dataclass(frozen=True)
class SeedScope:
    """Where a training run sits in a federation: seeds derive from (base, round, client).

    A centralised run uses round 0 and client 0. Federated clients that share seeds for the same
    local step (the default, DeComFL-style) also use client 0; per-client seeds set their own id.
    """

    base: int
    round: int = 0
    client: int = 0

    def step_seed(self, global_step: int, micro_batch: int = 0) -> int:
        return mix_seed(self.base, self.round, self.client, global_step, micro_batch)


def direction_seed(step_seed: int, block: int, i: int, j: int = 0) -> int:
    """Seed of block-1 direction u_i (block=BLOCK1, j=0) or block-2 direction v_ij (block=BLOCK2)."""
    return mix_seed(step_seed, block, i, j)


def parameter_seed(direction: int, parameter_index: int, chunk: int) -> int:
    """Seed of one chunk of one parameter tensor inside a direction."""
    return mix_seed(direction, parameter_index, chunk)
