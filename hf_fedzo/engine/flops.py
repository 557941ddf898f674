"""Forward-FLOP accounting: hooks that count matrix products as they run, and a per-shape cache of them.

Counting hooks change a module's hooks on every forward, which a ``torch.compile``-d model treats as a new
program (it recompiles until dynamo's recompile limit, then falls back to eager). :class:`ShapeFlops`
therefore measures each (block, input shape) once, in a forward run eagerly (``torch.compiler`` stance
``force_eager``) with hooks, and reuses the count for every later forward of that shape, which runs with
no hook at all. For dense transformers a forward's FLOPs depend on the input shape only (every linear
layer sees B·T rows or B rows; attention costs 4·B·T²·d), so the cached counts equal live ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import nn


def is_passthrough(module: nn.Module) -> bool:
    """A layer short-circuited by split execution (its forward returns its input): it did no work."""
    return getattr(module.__dict__.get("forward"), "zo_passthrough", False)


class FlopCounter:
    """Counts forward FLOPs of matrix products as they run: 2·in·out per row of every linear layer,
    plus 4·B·T²·d for attention scores and mixing in each layer of the stack."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList) -> None:
        self.total = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, nn.Linear):
                hook = self._linear(module.in_features, module.out_features)
                self._handles.append(module.register_forward_hook(hook))
            elif type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
                self._handles.append(module.register_forward_hook(self._linear(weight.shape[0], weight.shape[1])))
        for layer in layers:
            self._handles.append(layer.register_forward_hook(self._attention))

    def _linear(self, fan_in: int, fan_out: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self.total += 2 * fan_out * (args[0].numel() // fan_in) * fan_in

        return hook

    def _attention(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # A post-hook: a layer interrupted by a capture hook, or short-circuited in block 2, did no work.
        if is_passthrough(module):
            return
        hidden = output[0] if isinstance(output, tuple | list) and output else output
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:  # other outputs: the linears are counted alone
            b, t, d = hidden.shape
            self.total += 4 * b * t * t * d

    def take(self) -> int:
        total, self.total = self.total, 0
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def eager() -> contextlib.AbstractContextManager[Any]:
    """Run a ``torch.compile``-d model as plain Python for a while (hooks added meanwhile cause no recompile)."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


class ShapeFlops:
    """Forward FLOPs per (block, input shape): measured on the first forward of each, reused afterwards.

    ``shape=None`` measures every forward (for callers that cannot name their input's shape).
    """

    def __init__(self, model: nn.Module, layers: nn.ModuleList) -> None:
        self.model = model
        self.layers = layers
        self.known: dict[tuple[Hashable, Hashable], int] = {}

    @contextlib.contextmanager
    def forward(self, block: Hashable, shape: Hashable | None) -> Iterator[list[int]]:
        """Wrap one forward of ``block`` (a key naming what runs, e.g. a span of layers); the yielded one-item list
        holds its FLOPs once the block exits."""
        spent = [0]
        key = (block, shape)
        if shape is not None and key in self.known:
            yield spent
            spent[0] = self.known[key]
            return
        counter = FlopCounter(self.model, self.layers)
        try:
            with eager():
                yield spent
        finally:
            counter.remove()
        spent[0] = counter.take()
        if shape is not None:
            self.known[key] = spent[0]


def input_shape(inputs: Any) -> Hashable:
    """The shape signature of a batch (a mapping of tensors, or a tensor): what a forward's FLOPs depend on."""
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape)
    return tuple(sorted((str(k), tuple(v.shape)) for k, v in inputs.items() if isinstance(v, torch.Tensor)))
