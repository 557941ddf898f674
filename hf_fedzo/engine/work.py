"""``WorkCounters``: the forward passes and forward FLOPs a ZO step (or a client's round, or a run) cost, per block.

One type for every place that counts work: the estimator measures it per step, a federated client sums its
local steps, the trainer sums a run, and a round record sums its clients. The names are the keys of every
JSON file and log that reports work (``forwards_block1`` … ``flops_block2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields


@dataclass
class WorkCounters:
    forwards_block1: int = 0
    forwards_block2: int = 0
    flops_block1: int = 0
    flops_block2: int = 0

    @property
    def flops(self) -> int:
        """Forward FLOPs of both blocks."""
        return self.flops_block1 + self.flops_block2

    def __add__(self, other: WorkCounters) -> WorkCounters:
        return WorkCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> WorkCounters:
        """From a mapping with (some of) the four keys; a missing key counts 0, a non-integer one raises."""
        counts = {}
        for f in fields(cls):
            value = values.get(f.name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"work counter {f.name}: {value!r} is not a number")
            counts[f.name] = int(value)
        return cls(**counts)
