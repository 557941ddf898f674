"""Directions that cost almost nothing to generate: a shared Gaussian table and Rademacher signs from Philox.

The ``gaussian`` direction (MeZO's) draws every element from a CPU ``torch.Generator`` (mt19937, about 4 ns per
element), so on CPU a full-weight step spends more time generating z than adding it. The two distributions here
keep every chunk a pure function of its 63-bit chunk seed (stateless, replay exact) and cost about one memory pass;
``gaussian_table`` is the library's default:

* ``gaussian_table``: one cyclic table of ``TABLE_OFFSETS`` entries, built once per process from a fixed seed; a
  chunk is the window of the table at an offset taken from its seed (wrapping around), times a sign taken from
  another bit of the seed (the shared noise table of OpenAI's evolution strategies). Adding it is a read of the
  table window: nothing is generated. The table is white by construction, not just in expectation: every
  frequency has power exactly 1 and a uniform random phase (an inverse real FFT), so its circular autocorrelation
  is exactly 1 at lag 0 and 0 at every other lag, and for any gradient g the mean over offsets of (g·z)² is exactly
  ‖g‖², as for i.i.d. z. An i.i.d. normal table only gets this on average: its random autocorrelations (about
  1/√T at every lag) add up over a window: the 4M-offset table used before gave E[(g·z)²] = 0.19‖g‖² for a
  gradient of one sign over a 1M-entry chunk. The entries are standard normal in distribution (each a sum of a
  million random-phase cosines).
* ``rademacher_philox``: signs ±1 unpacked from 64-bit words of a Philox4x64 counter-based generator keyed by the
  chunk seed (numpy's; integer arithmetic only, so the same on every machine), 64 signs per word through a
  256-entry byte table.

Both hand out float32 windows; on an accelerator the table is copied there once, Philox signs are made on the CPU.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

TABLE_SEED = 0x5EED_7AB1E
TABLE_OFFSETS = 1 << 21  # the table's period (distinct windows per sign): a chunk's offset is its seed modulo this

_BUILD_BLOCK = 1 << 20  # random phases generated at a time while building the table
# Entries are rounded to multiples of 2**-12: FFT libraries differ in the last bits of a float64 result, and a
# grid that coarse makes two machines build the same table except with probability about 1e-4 (the replay's
# final-fingerprint check reports the rare mismatch). The rounding noise (variance 5e-9) changes no moment.
_GRID = 4096.0
_SIGN_BIT = 1
_OFFSET_SHIFT = 1


class GaussianTable:
    """``draw(seed, buffer)`` returns a window of the shared white-noise cycle and the sign to apply it with."""

    def __init__(self, chunk_numel: int, offsets: int = TABLE_OFFSETS, seed: int = TABLE_SEED) -> None:
        if offsets % 2 or offsets < chunk_numel:
            raise ValueError(f"offsets must be even and at least chunk_numel={chunk_numel} (got {offsets})")
        self.chunk_numel = chunk_numel
        self.offsets = offsets
        self.seed = seed
        self._tables: dict[torch.device, torch.Tensor] = {}
        self._lock = threading.Lock()

    def table(self, device: torch.device) -> torch.Tensor:
        """The cycle followed by its first ``chunk_numel`` entries again, so every window is one contiguous view."""
        with self._lock:
            if device not in self._tables:
                cpu = self._tables.get(torch.device("cpu"))
                if cpu is None:
                    cpu = self._tables[torch.device("cpu")] = self._build()
                self._tables[device] = cpu.to(device)
            return self._tables[device]

    def _build(self) -> torch.Tensor:
        """Unit power at every frequency, uniform random phases, one inverse real FFT (float64: 0.1-0.2 s and
        +71 MiB of peak RSS, once per process). The bins at frequencies 0 and T/2 of a real sequence are real: a
        random sign each."""
        period, half = self.offsets, self.offsets // 2
        generator = torch.Generator().manual_seed(self.seed)
        spectrum = torch.empty(half + 1, dtype=torch.complex128)
        parts = torch.view_as_real(spectrum)
        for start in range(0, half + 1, _BUILD_BLOCK):
            phase = torch.rand(min(_BUILD_BLOCK, half + 1 - start), generator=generator, dtype=torch.float64)
            phase.mul_(2 * math.pi)
            parts[start:start + phase.numel(), 0] = phase.cos()
            parts[start:start + phase.numel(), 1] = phase.sin_()
        ends = torch.randint(0, 2, (2,), generator=generator, dtype=torch.float64).mul_(2).sub_(1)
        spectrum[0], spectrum[half] = ends[0], ends[1]
        cycle = torch.fft.irfft(spectrum.mul_(math.sqrt(period)), n=period)  # irfft divides by the period
        del spectrum
        cycle.mul_(_GRID).round_().div_(_GRID)
        table = torch.empty(period + self.chunk_numel, dtype=torch.float32)
        table[:period] = cycle
        table[period:] = cycle[:self.chunk_numel]
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
