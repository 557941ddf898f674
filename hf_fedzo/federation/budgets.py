"""Heterogeneous clients: what a client can afford (:class:`ClientBudget`), which parts of the model it trains in a
round (:class:`ActiveSet`) and what that costs (:class:`LayerCosts`).

Positions name the units of the model an allocation hands out: ``-1`` the modules before the layer stack
(embeddings; a head tied to them counts here), ``0 … N-1`` the layers, ``N`` the modules after it (final norm,
head). A client perturbs and updates only the trainable tensors at its active positions (the engine's active
subset); the layers below its lowest active position are frozen, run once per step and are cached, which is
where a smaller active set saves forwards. Budgets come from a JSON file or a named profile
(``BUDGET_PROFILES``); on Flower a node reports its own in its first reply and the server checks it here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hf_fedzo.engine import find_layer_stack, lower_dtype, lowerable_bytes
from hf_fedzo.registry import Registry

MIB = 1024 * 1024


@dataclass(frozen=True)
class ActiveSet:
    """The positions a client trains this round; ``id`` is its canonical text (what a log record carries)."""

    positions: frozenset[int]

    @classmethod
    def window(cls, low: int, high: int) -> ActiveSet:
        """Positions ``low … high`` inclusive (``-1`` embeddings, ``N`` head)."""
        return cls(frozenset(range(low, high + 1)))

    @property
    def id(self) -> str:
        runs: list[str] = []
        for p in sorted(self.positions):
            if runs and runs[-1][1] == p - 1:
                runs[-1] = (runs[-1][0], p)  # type: ignore[assignment]
            else:
                runs.append((p, p))  # type: ignore[arg-type]
        return ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in runs) or "none"  # type: ignore[misc]

    @classmethod
    def parse(cls, text: str, num_layers: int | None = None) -> ActiveSet:
        """The inverse of :attr:`id`; raises ``ValueError`` naming the text."""
        if text == "none":
            return cls(frozenset())
        positions: set[int] = set()
        try:
            for part in text.split(","):
                low, _, high = part.partition(":")
                a, b = int(low), int(high or low)
                if b < a:
                    raise ValueError
                positions.update(range(a, b + 1))
        except ValueError:
            raise ValueError(f"active set {text!r} is not a list of positions like '-1,3:5,8'") from None
        if positions and (min(positions) < -1 or (num_layers is not None and max(positions) > num_layers)):
            raise ValueError(f"active set {text!r} names a position outside [-1, {num_layers}]")
        return cls(frozenset(positions))

    def parameter_indices(self, positions: Mapping[int, int]) -> list[int]:
        """The engine's active subset: trainable tensor indices whose position is active."""
        return sorted(i for i, p in positions.items() if p in self.positions)

    @property
    def lowest(self) -> int:
        return min(self.positions)


@dataclass(frozen=True)
class LayerCosts:
    """What each position costs, measured on one traced batch of the federation's batch size.

    ``flops`` and ``weights_mib`` have one entry per position ``-1 … N`` (``N + 2`` entries); ``trainable`` is the
    number of trainable values at each position (the ZO dimension a client perturbs there).
    """

    num_layers: int
    split_index: int | None
    flops: tuple[int, ...]
    weights_mib: tuple[float, ...]
    trainable: tuple[int, ...]
    trainable_mib: tuple[float, ...]
    p1: int
    p2: int
    sides: int  # 2 for central differences, 1 for forward ones (plus one baseline forward)
    lowered_saving_mib: tuple[float, ...] | None = None  # per position, what frozen_dtype frees when it is frozen

    def __post_init__(self) -> None:
        for name in ("flops", "weights_mib", "trainable", "trainable_mib", "lowered_saving_mib"):
            if getattr(self, name) is not None and len(getattr(self, name)) != self.num_layers + 2:
                raise ValueError(f"layer costs: {name} needs {self.num_layers + 2} entries (positions -1 … N)")

    def _span(self, low: int, high: int) -> int:
        """FLOPs of positions ``low … high - 1`` (positions -1 … N)."""
        return sum(self.flops[low + 1:high + 1])

    def step_flops(self, active: ActiveSet) -> int:
        """Forward FLOPs of one local step with ``active`` (the estimator's caching, see ``ZOEstimator.estimate``)."""
        n, k = self.num_layers, self.split_index
        frozen = max(0, min(active.lowest, n - 1)) if active.positions else 0
        cut = k if k is not None and frozen < k else (frozen or None)
        block1_active = cut is not None and active.lowest < cut
        stem = self._span(-1, frozen) if frozen and cut == k else 0
        block1 = 0 if cut is None else self._span(frozen if stem else -1, cut)
        block1_runs = self.sides * self.p1 if block1_active else 1
        block2 = self._span(-1 if cut is None else cut, n + 1)
        extra = 0 if self.sides == 2 else block1 + block2
        return stem + block1 * block1_runs + block2 * self.sides * self.p1 * self.p2 + extra

    def memory_mib(self, active: ActiveSet) -> float:
        """The weights (at training precision, less what ``frozen_dtype`` frees in the layers ``active`` leaves
        frozen) plus the client's copy of its active trainable tensors (to restore them after its local steps);
        activations are measured, not modelled (see the accounting)."""
        saved = 0.0
        if self.lowered_saving_mib is not None:
            saved = sum(self.lowered_saving_mib[p + 1] for p in range(self.num_layers) if p not in active.positions)
        return sum(self.weights_mib) - saved + sum(self.trainable_mib[p + 1] for p in active.positions)

    def dimension(self, active: ActiveSet) -> int:
        return sum(self.trainable[p + 1] for p in active.positions)

    def trainable_positions(self) -> list[int]:
        return [p for p in range(-1, self.num_layers + 1) if self.trainable[p + 1]]

    def top(self, fraction: float) -> ActiveSet:
        """The deepest ``fraction`` of the layers, with the head."""
        n = self.num_layers
        return ActiveSet.window(n - max(1, math.ceil(fraction * n)), n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClientBudget:
    """What one client can afford per local step; ``None`` is unbounded. ``deadline_s`` is recorded and compared
    with the measured round time in the accounting (the simulator has no timing model to allocate by)."""

    memory_mib: float | None = None
    flops_per_step: float | None = None
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("memory_mib", "flops_per_step", "deadline_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a finite number > 0 (got {value!r})")

    def affords(self, costs: LayerCosts, active: ActiveSet) -> bool:
        return ((self.flops_per_step is None or costs.step_flops(active) <= self.flops_per_step)
                and (self.memory_mib is None or costs.memory_mib(active) <= self.memory_mib))

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in asdict(self).items() if v is not None) or "unbounded"


BudgetRule = Callable[[int, LayerCosts], list[ClientBudget]]


def _weak_half(layer_fraction: float) -> BudgetRule:
    """Clients ``num_clients // 2 …`` (the second half) afford the top ``layer_fraction`` of the layers, the others
    everything."""

    def rule(num_clients: int, costs: LayerCosts) -> list[ClientBudget]:
        weak = ClientBudget(flops_per_step=costs.step_flops(costs.top(layer_fraction)))
        return [ClientBudget() if k < num_clients // 2 else weak for k in range(num_clients)]

    return rule


BUDGET_PROFILES: Registry[BudgetRule] = Registry("client_budgets profile", {
    "half-quarter": _weak_half(0.25), "half-half": _weak_half(0.5),
    "all-quarter": lambda n, costs: [ClientBudget(flops_per_step=costs.step_flops(costs.top(0.25)))] * n,
})


def _budget_entry(entry: Any, costs: LayerCosts, where: str) -> ClientBudget:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a budget must be a JSON object, got {type(entry).__name__}")
    entry = dict(entry)
    unknown = set(entry) - {"memory_mib", "flops_per_step", "deadline_s", "layer_fraction"}
    if unknown:
        raise ValueError(f"{where}: unknown budget field {sorted(unknown)[0]!r}")
    fraction = entry.pop("layer_fraction", None)
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ValueError(f"{where}: layer_fraction must be in (0, 1] (got {fraction!r})")
        entry.setdefault("flops_per_step", costs.step_flops(costs.top(fraction)))
    try:
        return ClientBudget(**entry)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def resolve_budgets(spec: str | Mapping[str, Any] | None, num_clients: int, costs: LayerCosts) -> list[ClientBudget]:
    """Every client's budget from a profile name, a JSON file path or its parsed content.

    The file: ``{"default": {...}, "clients": {"3": {"flops_per_step": 2e9, "memory_mib": 800}}}`` where a
    budget has ``memory_mib``, ``flops_per_step``, ``deadline_s`` and/or ``layer_fraction`` (the FLOPs of
    training the top fraction of the layers).
    """
    if spec is None or spec == "":
        return [ClientBudget()] * num_clients
    if isinstance(spec, str) and spec in BUDGET_PROFILES:
        return BUDGET_PROFILES[spec](num_clients, costs)
    where = "client_budgets"
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"client_budgets={spec!r} is neither a file nor a profile ({sorted(BUDGET_PROFILES)})")
        where = str(path)
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(spec, Mapping) or set(spec) - {"default", "clients"}:
        raise ValueError(f"{where}: expected an object with 'default' and/or 'clients'")
    default = _budget_entry(spec.get("default", {}), costs, f"{where} default")
    budgets = [default] * num_clients
    clients = spec.get("clients", {})
    if not isinstance(clients, Mapping):
        raise ValueError(f"{where}: 'clients' must map client ids to budgets")
    for key, entry in clients.items():
        if not str(key).isdigit() or not 0 <= int(key) < num_clients:
            raise ValueError(f"{where}: client {key!r} is not a client id in [0, {num_clients - 1}]")
        budgets[int(key)] = _budget_entry(entry, costs, f"{where} client {key}")
    return budgets


def measure_costs(estimator: Any, model: Any, frozen_dtype: str | None = None) -> LayerCosts:
    """Per-position costs from a prepared engine estimator (its traced plan) and the model's parameters; with
    ``frozen_dtype``, what holding each layer's frozen linears in it would free."""
    plan = estimator.plan
    n = plan.num_layers
    flops = [plan.pre_flops, *plan.layer_flops, plan.post_flops]
    weights = [0.0] * (n + 2)
    prefix = plan.layers_path + "."
    for name, tensor in model.named_parameters():
        position = n  # outside the stack (embeddings too): only the total of the weights is used
        if name.startswith(prefix) or f".{prefix}" in name:
            tail = name.split(prefix, 1)[1]
            position = int(tail.split(".", 1)[0])
        weights[position + 1] += tensor.numel() * tensor.element_size() / MIB
    trainable = [0] * (n + 2)
    trainable_mib = [0.0] * (n + 2)
    for p in plan.parameters:
        position = plan.positions.get(p.index, n)
        trainable[position + 1] += p.tensor.numel()
        trainable_mib[position + 1] += p.tensor.numel() * p.tensor.element_size() / MIB
    saving = None
    if frozen_dtype is not None:
        _, layers = find_layer_stack(model, plan.layers_path)
        dtype = lower_dtype(frozen_dtype)
        saving = (0.0, *(lowerable_bytes(layer, dtype) / MIB for layer in layers), 0.0)
    s = estimator.settings
    return LayerCosts(n, plan.split_index, tuple(int(f) for f in flops), tuple(weights), tuple(trainable),
                      tuple(trainable_mib), s.p1, s.p2, 2 if s.difference == "central" else 1, saving)


def describe_budgets(budgets: Sequence[ClientBudget]) -> dict[str, dict[str, float]]:
    return {str(k): {n: v for n, v in asdict(b).items() if v is not None} for k, b in enumerate(budgets)}


def budget_from_mapping(values: Mapping[str, Any], where: str) -> ClientBudget:
    """A budget a node reported (Flower node config), checked like a file's entry (never trusted beyond that)."""
    known = {k: values[k] for k in ("memory_mib", "flops_per_step", "deadline_s") if k in values}
    try:
        return ClientBudget(**{k: float(v) for k, v in known.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def positions_label(active: Iterable[int], num_layers: int) -> list[str]:
    """Readable names of positions for the results file: 'embeddings', 'layer 3', 'head'."""
    return ["embeddings" if p == -1 else "head" if p == num_layers else f"layer {p}" for p in sorted(active)]
