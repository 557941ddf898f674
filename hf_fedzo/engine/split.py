"""Generic split execution: find the layer stack, assign parameters to blocks, re-run only a suffix.

Block 1 is everything the model executes before layer ``k`` (embeddings and layers ``0..k-1``), block 2
is layers ``k..N-1`` plus everything after them (final norm, pooler, head). Block 2 runs through the
model's own ``forward`` with layers ``0..k-1`` short-circuited and layer ``k``'s input replaced by a
cached activation, so attention masks, position ids and rotary embeddings are still built by the model
itself: nothing architecture-specific is re-implemented here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hf_fedzo.engine.flops import FlopCounter
from hf_fedzo.engine.perturbation import IndexedParameter

try:  # transformers >= 4.52: every decoder/encoder layer derives from it
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers
    GradientCheckpointingLayer = ()  # type: ignore[assignment,misc]


class UnsupportedModelError(ValueError):
    """The model's layer stack cannot be found or re-entered generically."""


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the needed activation is captured."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The innermost transformers model (through DDP and PEFT wrappers), for attributes like ``_no_split_modules``."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def find_layer_stack(model: nn.Module, layers_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Locate the transformer layer stack.

    With ``layers_path`` (e.g. ``"model.layers"``), that submodule is used. Otherwise the largest
    ``nn.ModuleList`` whose children are all ``GradientCheckpointingLayer`` is taken, cross-checked
    against the model's ``_no_split_modules`` (and used as a fallback when no list qualifies).
    """
    if layers_path is not None:
        candidates = [n for n, _ in model.named_modules() if n == layers_path or n.endswith("." + layers_path)]
        if not candidates:
            raise UnsupportedModelError(
                f"zo_layers_path={layers_path!r} does not name a submodule of {type(model).__name__}"
            )
        stack = model.get_submodule(candidates[0])
        if not isinstance(stack, nn.ModuleList) or len(stack) == 0:
            raise UnsupportedModelError(
                f"zo_layers_path={layers_path!r} is a {type(stack).__name__}, expected a non-empty nn.ModuleList"
            )
        return candidates[0], stack

    inner = _unwrap(model)
    if getattr(getattr(inner, "config", None), "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{type(inner).__name__} is an encoder-decoder model; split execution supports encoder-only and "
            "decoder-only stacks. Use zo_split='none'."
        )
    no_split = set(getattr(inner, "_no_split_modules", None) or [])
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    by_base_class = [(n, m) for n, m in lists if all(isinstance(c, GradientCheckpointingLayer) for c in m)]
    by_no_split = [(n, m) for n, m in lists if type(m[0]).__name__ in no_split]
    pool = by_base_class or by_no_split
    if pool:
        best = max(len(m) for _, m in pool)
        largest = [(n, m) for n, m in pool if len(m) == best]
        preferred = [(n, m) for n, m in largest if type(m[0]).__name__ in no_split] or largest
        return preferred[0]
    raise UnsupportedModelError(
        f"Could not find the layer stack of {type(inner).__name__}: no nn.ModuleList of "
        "GradientCheckpointingLayer and none matching _no_split_modules. Pass its path explicitly, e.g. "
        "ZOConfig(zo_layers_path='model.layers'), or train without a split (zo_split='none')."
    )


_NO_DECAY_NAME = re.compile(r"(bias|layernorm|layer_norm|rmsnorm|(^|\.)norm(\.|$)|_norm(\.|$)|ln_\w+)", re.I)


def _decays(name: str, module: nn.Module | None) -> bool:
    """MeZO/Trainer rule: no weight decay for biases and normalisation parameters."""
    if _NO_DECAY_NAME.search(name):
        return False
    return not (module is not None and "norm" in type(module).__name__.lower())


def trainable_parameters(model: nn.Module) -> list[IndexedParameter]:
    """Unique trainable tensors in ``named_parameters`` order; the index is their random-stream id."""
    owners = dict(model.named_modules())
    params: list[IndexedParameter] = []
    for name, tensor in model.named_parameters():
        if not tensor.requires_grad:
            continue
        owner = owners.get(name.rpartition(".")[0])
        params.append(IndexedParameter(len(params), name, tensor, _decays(name, owner)))
    return params


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The same tensors by name: what a transport saves, loads or averages (FedAvg, a Flower node's state)."""
    return {p.name: p.tensor for p in trainable_parameters(model)}


@dataclass
class SplitPlan:
    """Which parameters each block owns, and the cost of each block measured on a trace forward."""

    layers_path: str
    num_layers: int
    split_index: int | None
    block1: list[IndexedParameter]
    block2: list[IndexedParameter]
    tied: list[IndexedParameter] = field(default_factory=list)
    layer_flops: list[int] = field(default_factory=list)
    pre_flops: int = 0
    post_flops: int = 0
    # Where each trainable tensor (by index) sits: -1 before the stack, i in layer i, num_layers after it.
    positions: dict[int, int] = field(default_factory=dict)

    def first_layer(self, indices: Iterable[int] | None = None) -> int:
        """The first layer holding one of the trainable tensors ``indices`` (default: all): the layers below it
        are frozen. 0 when one of them sits before the stack."""
        chosen = self.positions.values() if indices is None else [self.positions.get(i, -1) for i in indices]
        return max(0, min(chosen, default=0))

    @property
    def first_trainable_layer(self) -> int:
        """Layers below it hold nothing trainable (a frozen prefix); 0 when there is none."""
        return self.first_layer()

    @property
    def parameters(self) -> list[IndexedParameter]:
        return sorted(self.block1 + self.block2, key=lambda p: p.index)

    def block_flops(self, split_index: int | None) -> tuple[int, int]:
        if split_index is None:
            return 0, self.pre_flops + sum(self.layer_flops) + self.post_flops
        c1 = self.pre_flops + sum(self.layer_flops[:split_index])
        return c1, sum(self.layer_flops[split_index:]) + self.post_flops


def choose_split(split: str | int | float, plan: SplitPlan, p2: int) -> int | None:
    """Resolve ``zo_split`` to a layer index (``None`` = no split).

    ``"auto"`` splits at the first layer holding a trainable tensor when the layers below it are frozen
    (e.g. LoRA on the top layers only): that prefix then runs once per step whatever P1 and P2 are, the
    cheapest split there is. Otherwise it balances the two blocks' total work per step: it picks the ``k``
    whose measured block costs make ``C1(k)`` closest to ``P2 · C2(k)``, so that neither the ``2·P1``
    block-1 forwards nor the ``2·P1·P2`` block-2 forwards dominate the step. With ``P2 = 1`` there is
    nothing to amortise and no split is made.
    """
    n = plan.num_layers
    if split == "none":
        return None
    if split == "auto":
        if 1 <= plan.first_trainable_layer < n:
            return plan.first_trainable_layer
        if p2 == 1 or n < 2:
            return None
        return min(range(1, n), key=lambda k: abs(plan.block_flops(k)[0] - p2 * plan.block_flops(k)[1]))
    if isinstance(split, float):
        return min(max(round(split * n), 1), n - 1)
    if not 1 <= split < n:
        raise ValueError(f"zo_split={split} is outside the layer stack: use an index in [1, {n - 1}]")
    return split


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def output_arity(output: Any) -> int | None:
    """How a layer returns its hidden state: ``0`` as a bare tensor, ``n`` as the first of an ``n``-tuple (Falcon,
    older layers: ``(hidden, attn_weights, …)``), ``None`` in any other form (which a split cannot re-enter)."""
    if isinstance(output, torch.Tensor):
        return 0
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return len(output)
    return None


def _passthrough_returning(arity: int) -> Callable[..., Any]:
    """A stand-in forward for a skipped layer: its input, in the form the real layer returns its output.

    The extra tuple slots (attention weights, a legacy cache) are ``None``: a skipped layer computes nothing, and a
    model asks for them only with ``output_attentions``/legacy caches, which a loss forward does not use.
    """
    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hidden = _hidden_of(args, kwargs)
        return hidden if arity == 0 else (hidden, *([None] * (arity - 1)))

    passthrough.zo_passthrough = True  # type: ignore[attr-defined]  # FlopCounter skips such layers
    return passthrough


class SplitExecutor:
    """Runs block 1 up to layer ``k`` (capturing its input) and block 2 from a cached activation.

    Skipped layers return their input in the form the real layers return their output (a tensor, or a tuple
    whose first item is the hidden state), which the executor learns from the first layer each span really runs.
    """

    def __init__(self, layers: nn.ModuleList, split_index: int) -> None:
        self.layers = layers
        self.k = split_index
        self.arity: int | None = None  # learned from the first span that runs layer 0 (see output_arity)

    def run_prefix(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self.run_span(loss_fn, stop=self.k)  # type: ignore[return-value]

    def run_suffix(self, loss_fn: Callable[[], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        return self.run_span(loss_fn, self.k, hidden)

    def run_span(self, loss_fn: Callable[[], torch.Tensor], start: int = 0, hidden: torch.Tensor | None = None,
                 stop: int | None = None) -> torch.Tensor:
        """Run the forward from layer ``start`` (layers before it skipped, its input replaced by ``hidden``) up to
        layer ``stop``, whose input is returned; with ``stop=None`` to the end, returning the loss."""
        if start and self.arity is None:
            raise UnsupportedModelError("a span starting above layer 0 must follow one that ran the stack's first "
                                        "layer (run_prefix first): the form of the layers' output is not known yet")
        captured: list[torch.Tensor] = []

        def substitute(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(_hidden_of(args, kwargs))
            raise _StopForward

        def learn_arity(module: nn.Module, args: Any, output: Any) -> None:
            self.arity = output_arity(output)

        handles = [self.layers[start].register_forward_pre_hook(substitute, with_kwargs=True)] if start else []
        if stop is None or stop > start:
            handles.append(self.layers[start].register_forward_hook(learn_arity))
        passthrough = _passthrough_returning(self.arity or 0)
        if stop is not None:
            handles.append(self.layers[stop].register_forward_pre_hook(capture, with_kwargs=True))
        # An instance attribute shadows the class forward (and GradientCheckpointingLayer's wrapper).
        for layer in self.layers[:start]:
            layer.forward = passthrough
        try:
            loss = loss_fn()
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
            for layer in self.layers[:start]:
                del layer.forward
        if stop is None:
            return loss
        if not captured:
            raise UnsupportedModelError(f"layer {stop} of the stack never ran: the forward does not use it")
        return captured[0]


def build_plan(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    split: str | int | float,
    p2: int,
    layers_path: str | None = None,
) -> SplitPlan:
    """Trace one forward to learn execution order and per-layer cost, then assign parameters to blocks.

    Modules that run before layer 0 (embeddings, input projections) belong to block 1; modules that
    are neither in the stack nor run before it (final norm, pooler, head) belong to block 2. A tensor
    used on both sides (a tied embedding/head weight) is perturbed once, with block 1, and recorded as
    ``tied`` so block-2 evaluations see it on the matching side.
    """
    params = trainable_parameters(model)
    path, layers = find_layer_stack(model, layers_path)
    layer_of: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for name, _ in layer.named_modules():
            layer_of[f"{path}.{i}" + (f".{name}" if name else "")] = i

    ran_before_stack: set[str] = set()
    stack_started = [False]
    handles = []
    for name, module in model.named_modules():
        if name in layer_of or name == path or not list(module.parameters(recurse=False)):
            continue

        def mark(mod: nn.Module, args: Any, name: str = name) -> None:
            if not stack_started[0]:
                ran_before_stack.add(name)

        handles.append(module.register_forward_pre_hook(mark))

    costs: dict[str | int, int] = {"pre": 0, "post": 0}
    current: list[str | int] = ["pre"]
    arities: list[int | None] = []
    counter: FlopCounter | None = None

    def flush_into(segment: str | int) -> None:
        assert counter is not None
        costs[current[0]] = costs.get(current[0], 0) + counter.take()
        current[0] = segment

    def enter_layer(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            stack_started[0] = True
            flush_into(i)

        return hook

    def leave_layer(module: nn.Module, args: Any, output: Any) -> None:
        arities.append(output_arity(output))
        flush_into("post")

    # The counter's post-hooks must run before leave_layer's so a layer's attention cost is flushed
    # into that layer: hooks run in registration order.
    counter = FlopCounter(model, layers)
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(enter_layer(i)))
        handles.append(layer.register_forward_hook(leave_layer))
    try:
        loss_fn()
        flush_into("post")
    finally:
        for h in handles:
            h.remove()
        counter.remove()
    if not arities:
        raise UnsupportedModelError(f"the layer stack {path!r} of {type(model).__name__} never ran in forward")
    split_ok = None not in arities and len(set(arities)) == 1
    layer_costs = [costs.get(i, 0) for i in range(len(layers))]

    aliases: dict[int, set[str]] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(tensor), set()).add(name.rpartition(".")[0])

    owners_of = {p.index: aliases[id(p.tensor)] for p in params}
    positions = {i: -1 if owners & ran_before_stack else min((layer_of[o] for o in owners if o in layer_of),
                                                              default=len(layers)) for i, owners in owners_of.items()}
    plan = SplitPlan(path, len(layers), None, [], [], layer_flops=layer_costs, pre_flops=costs["pre"],
                     post_flops=costs["post"], positions=positions)
    plan.split_index = choose_split(split, plan, p2)
    if plan.split_index is not None and not split_ok:
        raise UnsupportedModelError(
            f"layers of {type(model).__name__} return their hidden state neither as a tensor nor as the first item of "
            "a tuple of one fixed length, so a split cannot re-enter the stack. Use zo_split='none'."
        )
    k = plan.split_index
    for p in params:
        if k is None:
            plan.block2.append(p)
            continue
        owners = owners_of[p.index]
        layer_ids = {layer_of[o] for o in owners if o in layer_of}
        in_block1 = any(i < k for i in layer_ids) or bool(owners & ran_before_stack)
        after_stack = any(o not in layer_of and o not in ran_before_stack for o in owners)
        in_block2 = any(i >= k for i in layer_ids) or after_stack
        (plan.block1 if in_block1 else plan.block2).append(p)
        if in_block1 and in_block2:
            plan.tied.append(p)
    return plan


def parse_split(value: str | int | float) -> str | int | float:
    """``"auto"``, ``"none"``, a layer index (``"6"``) or a fraction of the stack (``"0.5"``)."""
    if isinstance(value, bool):
        raise ValueError(f"zo_split must be 'auto', 'none', a layer index or a fraction (got {value!r})")
    if isinstance(value, int | float):
        parsed: str | int | float = value
    elif value in ("auto", "none"):
        return value
    else:
        try:
            parsed = int(value)
        except ValueError:
            try:
                parsed = float(value)
            except ValueError:
                raise ValueError(
                    f"zo_split must be 'auto', 'none', a layer index or a fraction (got {value!r})"
                ) from None
    if isinstance(parsed, float) and not 0.0 < parsed < 1.0:
        raise ValueError(f"zo_split as a fraction must lie in (0, 1) (got {parsed})")
    if isinstance(parsed, int) and parsed < 1:
        raise ValueError(f"zo_split as a layer index must be >= 1 (got {parsed})")
    return parsed
