"""Directions that cost almost nothing to generate: a shared Gaussian table and Rademacher signs from Philox.

The ``gaussian`` direction (MeZO's) draws every element from a CPU ``torch.Generator`` (mt19937, about 4 ns per
element), so on CPU a full-weight step spends more time generating z than adding it. The two distributions here
keep every chunk a pure function of its 63-bit chunk seed (stateless, replay exact) and cost about one memory pass;
``gaussian_table`` is the library's default:

* ``gaussian_table``: one table of ``TABLE_OFFSETS + CHUNK_NUMEL`` standard normals, built once per process from a
  fixed seed and standardised to mean 0 and variance 1; a chunk is the window of the table at an offset taken from
  its seed, times a sign taken from another bit of the seed (the shared noise table of OpenAI's evolution
  strategies). Adding it is a read of the table window: nothing is generated. Two windows at different offsets are
  uncorrelated (the table is i.i.d.), and over seeds every coordinate pair is uncorrelated.
* ``rademacher_philox``: signs ±1 unpacked from 64-bit words of a Philox4x64 counter-based generator keyed by the
  chunk seed (numpy's; integer arithmetic only, so the same on every machine), 64 signs per word through a
  256-entry byte table.

Both hand out float32 windows; on an accelerator the table is copied there once, Philox signs are made on the CPU.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
import torch

TABLE_SEED = 0x5EED_7AB1E
TABLE_OFFSETS = 1 << 22  # distinct windows per sign: a chunk's offset is its seed modulo this

_BUILD_BLOCK = 1 << 20  # float64 normals generated at a time while building the table
_SIGN_BIT = 1
_OFFSET_SHIFT = 1


class GaussianTable:
    """``draw(seed, buffer)`` returns a window of the shared standard-normal table and the sign to apply it with."""

    def __init__(self, chunk_numel: int, offsets: int = TABLE_OFFSETS, seed: int = TABLE_SEED) -> None:
        self.chunk_numel = chunk_numel
        self.offsets = offsets
        self.seed = seed
        self._tables: dict[torch.device, torch.Tensor] = {}
        self._lock = threading.Lock()

    def table(self, device: torch.device) -> torch.Tensor:
        with self._lock:
            if device not in self._tables:
                cpu = self._tables.get(torch.device("cpu"))
                if cpu is None:
                    cpu = self._tables[torch.device("cpu")] = self._build()
                self._tables[device] = cpu.to(device)
            return self._tables[device]

    def _blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """The table's float64 normals, block by block, from a fresh generator (the same stream every call)."""
        generator = torch.Generator().manual_seed(self.seed)
        numel = self.offsets + self.chunk_numel
        block = torch.empty(min(_BUILD_BLOCK, numel), dtype=torch.float64)
        for start in range(0, numel, _BUILD_BLOCK):
            values = block[:min(_BUILD_BLOCK, numel - start)]
            yield start, values.normal_(generator=generator)

    def _build(self) -> torch.Tensor:
        """Standardised exactly: the table's own mean and variance are 0 and 1, not just in expectation. The normals
        are regenerated per pass rather than held in float64, so building costs one block beyond the table."""
        numel = self.offsets + self.chunk_numel
        mean = math.fsum(float(values.sum()) for _, values in self._blocks()) / numel
        std = math.sqrt(math.fsum(float((values - mean).square().sum()) for _, values in self._blocks()) / numel)
        table = torch.empty(numel, dtype=torch.float32)
        for start, values in self._blocks():
            table[start:start + values.numel()] = values.sub_(mean).div_(std)
        return table

    def draw(self, seed: int, buffer: torch.Tensor) -> tuple[torch.Tensor, float]:
        offset = (seed >> _OFFSET_SHIFT) % self.offsets
        sign = -1.0 if seed & _SIGN_BIT else 1.0
        return self.table(buffer.device)[offset:offset + buffer.numel()], sign


# Row b holds the signs of the 8 bits of byte b, least significant first: +1 for a set bit, -1 for a clear one.
_BYTE_SIGNS = torch.tensor([[1.0 if (byte >> bit) & 1 else -1.0 for bit in range(8)] for byte in range(256)])


class PhiloxRademacher:
    """``draw(seed, buffer)`` fills ``buffer`` with ±1 from Philox4x64 words keyed by ``seed``."""

    def draw(self, seed: int, buffer: torch.Tensor) -> tuple[torch.Tensor, float]:
        n = buffer.numel()
        words = np.random.Philox(key=seed).random_raw((n + 63) // 64)
        signs_of = torch.from_numpy(words.astype("<u8", copy=False).view(np.uint8)[: (n + 7) // 8]).long()
        if buffer.device.type == "cpu" and n % 8 == 0:
            torch.index_select(_BYTE_SIGNS, 0, signs_of, out=buffer.view(-1, 8))
        else:
            buffer.copy_(_BYTE_SIGNS[signs_of].view(-1)[:n])
        return buffer, 1.0
