"""Frozen layers at a smaller dtype: the memory a client saves by not training part of the model.

A layer a client does not train this round only runs forwards, so its frozen linear weights (the base weights
under an adapter) can be held in bfloat16 or float16 while the layers it trains stay at training precision.
Only ``nn.Linear`` modules whose weight and bias are floating point, not trainable and wider than the target
dtype are lowered: they are nearly all of a transformer layer's weights, trainable tensors (adapters) keep their
precision so replaying the log stays exact, and norms stay as they are. Each lowered linear casts its input to
the smaller dtype and its output back, so everything between modules (the split executor's cached hidden
states included) keeps the model's dtype.

``keep_originals=True`` keeps the full-precision tensors aside and :meth:`LoweredLinears.restore` puts the very
same tensors back (bit-exact: what a simulator needs, where one replica plays every client);
``keep_originals=False`` drops them, which is where the memory is saved (a standalone client). Weights that
``from_pretrained`` left as pages of an mmap'ed checkpoint stay mapped after they are dropped: the kernel frees
those pages only under memory pressure, so resident memory shows the saving only for weights the process owns.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

LOWER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def lower_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``frozen_dtype`` name; raises ``ValueError`` naming it."""
    if not isinstance(name, str) or name not in LOWER_DTYPES:
        raise ValueError(f"frozen_dtype must be one of {sorted(LOWER_DTYPES)} (got {name!r})")
    return LOWER_DTYPES[name]


def _lowerable(tensor: torch.Tensor | None, dtype: torch.dtype) -> bool:
    return (tensor is not None and tensor.is_floating_point() and not tensor.requires_grad
            and tensor.element_size() > dtype.itemsize)


def _lowerable_linear(linear: nn.Linear, dtype: torch.dtype) -> bool:
    return _lowerable(linear.weight, dtype) and (linear.bias is None or _lowerable(linear.bias, dtype))


def lowerable_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """The bytes :class:`LoweredLinears` would free in ``module`` (its frozen linears held at ``dtype``)."""
    return sum(t.numel() * (t.element_size() - dtype.itemsize)
               for m in module.modules() if isinstance(m, nn.Linear) and _lowerable_linear(m, dtype)
               for t in (m.weight, m.bias) if t is not None)


def release_freed_memory() -> None:
    """Hand memory freed by dropped tensors back to the OS (glibc keeps freed heap pages resident otherwise);
    a no-op where ``malloc_trim`` does not exist."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


class LoweredLinears:
    """The frozen linears of some modules held at ``dtype`` until :meth:`restore` (see the module docstring)."""

    def __init__(self, modules: Iterable[nn.Module], dtype: torch.dtype, keep_originals: bool = True) -> None:
        self.dtype = dtype
        self.keep_originals = keep_originals
        self._originals: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._hooks: list[Any] = []
        self.saved_bytes = 0  # freed once the full-precision tensors are dropped
        for module in modules:
            for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
                freed = lowerable_bytes(linear, dtype)  # 0: trainable, not floating or already that narrow
                if freed:
                    self.saved_bytes += freed
                    self._lower(linear)
        if not keep_originals and self.saved_bytes:
            release_freed_memory()

    def _lower(self, linear: nn.Linear) -> None:
        wide = linear.weight.dtype
        for tensor in (linear.weight, linear.bias):
            if tensor is None:
                continue
            if self.keep_originals:
                self._originals.append((tensor, tensor.data))
            tensor.data = tensor.data.to(self.dtype)
        self._hooks.append(linear.register_forward_pre_hook(
            lambda _, args: tuple(_cast_floating(a, self.dtype) for a in args)))
        self._hooks.append(linear.register_forward_hook(lambda _, __, output: _cast_floating(output, wide)))

    def restore(self) -> None:
        """Put the full-precision tensors back (the same storage: bit-exact) and remove the casts."""
        if not self.keep_originals:
            raise RuntimeError("these linears were lowered without keeping their full-precision tensors")
        for tensor, original in self._originals:
            tensor.data = original
        for hook in self._hooks:
            hook.remove()
        self._originals.clear()
        self._hooks.clear()
