"""Block allocation: which positions of the model each sampled client trains in a round (``--block_allocation``).

A policy maps the round's sampled clients, their budgets and the model's :class:`LayerCosts` to one
:class:`ActiveSet` per client; register one with :func:`register_allocation`. Every policy's result is checked
against every budget (:func:`check_allocation`), and a budget no allocation can meet raises one line naming
the client.

* ``none``: everyone trains everything (today's federation; a budget that cannot afford it is an error).
* ``top``: each client trains the deepest suffix (head first, then layers top-down, embeddings last) its
  budget affords. With the split executor this is the cheapest set of a given size: the frozen layers below
  it run once per step and are cached, only the active suffix re-runs for every perturbation.
* ``zorba``: ZorBA's ε-constraint allocation (arXiv 2603.04436; no public code, so recovered from the paper's
  description, see docs): every trainable position covered by at least ``zorba_min_coverage`` clients in the
  round, every client within its budget, and, first, the convergence proxy; memory second. The proxy is the
  variance of the round's per-position update under a ZO estimator whose per-coordinate variance grows with
  the client's dimension d_k (Σ over positions of size_p · Σ_{k covering p} d_k / n_p²). Starting from every
  client's largest affordable suffix, the greedy drops the top position of a client's window while that lowers
  the proxy and keeps the coverage; a client's FLOPs depend only on its lowest position, so a trim never
  costs compute, and it lowers the memory of the client's copy of its active tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hf_fedzo.federation.budgets import ActiveSet, ClientBudget, LayerCosts
from hf_fedzo.registry import Registry

# (sampled clients, their budgets, costs, min coverage) → active set per client
Allocation = Callable[[Sequence[int], Mapping[int, ClientBudget], LayerCosts, int], dict[int, ActiveSet]]


class AllocationError(ValueError):
    """Budgets that no allocation can meet; the message names the client (or the uncovered position)."""


def full_set(costs: LayerCosts) -> ActiveSet:
    return ActiveSet.window(-1, costs.num_layers)


def largest_suffix(client: int, budget: ClientBudget, costs: LayerCosts) -> ActiveSet:
    """The deepest suffix ``budget`` affords: head, then layers top-down, then embeddings."""
    n = costs.num_layers
    best: ActiveSet | None = None
    for low in range(n, -2, -1):
        candidate = ActiveSet.window(low, n)
        if not costs.dimension(candidate):
            continue  # nothing trainable yet (e.g. no trainable head): not a set worth running
        if not budget.affords(costs, candidate):
            break  # the cost only grows as the suffix deepens
        best = candidate
    if best is None:
        smallest = next((ActiveSet.window(low, n) for low in range(n, -2, -1)
                         if costs.dimension(ActiveSet.window(low, n))), full_set(costs))
        raise AllocationError(
            f"client {client}: budget ({budget.describe()}) cannot afford even the smallest trainable suffix "
            f"(positions {smallest.id}: {costs.step_flops(smallest):.3g} FLOPs per step, "
            f"{costs.memory_mib(smallest):.1f} MiB)")
    return best


def _none(clients: Sequence[int], budgets: Mapping[int, ClientBudget], costs: LayerCosts,
          min_coverage: int) -> dict[int, ActiveSet]:
    full = full_set(costs)
    for k in clients:
        if not budgets[k].affords(costs, full):
            raise AllocationError(f"client {k}: budget ({budgets[k].describe()}) cannot afford the full model "
                                  f"({costs.step_flops(full):.3g} FLOPs per step, {costs.memory_mib(full):.1f} MiB) "
                                  "under block_allocation=none; use top or zorba")
    return {k: full for k in clients}


def _top(clients: Sequence[int], budgets: Mapping[int, ClientBudget], costs: LayerCosts,
         min_coverage: int) -> dict[int, ActiveSet]:
    return {k: largest_suffix(k, budgets[k], costs) for k in clients}


def coverage(allocation: Mapping[int, ActiveSet], position: int) -> int:
    return sum(position in a.positions for a in allocation.values())


def variance_proxy(allocation: Mapping[int, ActiveSet], costs: LayerCosts) -> float:
    """Σ_p size_p · Σ_{k covering p} d_k / n_p² over trainable positions (uncovered ones count as lost: +size_p·D)."""
    dims = {k: costs.dimension(a) for k, a in allocation.items()}
    total_dim = max(costs.dimension(full_set(costs)), 1)
    proxy = 0.0
    for p in costs.trainable_positions():
        covering = [k for k, a in allocation.items() if p in a.positions]
        size = costs.trainable[p + 1]
        proxy += size * (sum(dims[k] for k in covering) / len(covering) ** 2 if covering else total_dim)
    return proxy


def _zorba(clients: Sequence[int], budgets: Mapping[int, ClientBudget], costs: LayerCosts,
           min_coverage: int) -> dict[int, ActiveSet]:
    allocation = _top(clients, budgets, costs, min_coverage)
    # A sample of weak clients may not reach every position: the round keeps what it can (the federation-wide
    # reach is checked once, by check_budgets); trims never take a position below min(min_coverage, reach).
    needed = {p: min(min_coverage, coverage(allocation, p)) for p in range(-1, costs.num_layers + 1)}
    proxy = variance_proxy(allocation, costs)
    while True:
        best: tuple[float, int, ActiveSet] | None = None
        for k, active in sorted(allocation.items()):
            trainable = [p for p in active.positions if costs.trainable[p + 1]]
            if len(trainable) < 2:
                continue
            top = max(trainable)  # dropped with the untrainable positions above it (a LoRA model's head)
            trimmed = ActiveSet(frozenset(p for p in active.positions if p < top))
            if coverage(allocation, top) <= needed[top]:
                continue
            candidate = variance_proxy({**allocation, k: trimmed}, costs)
            if candidate < proxy and (best is None or candidate < best[0]):
                best = (candidate, k, trimmed)
        if best is None:
            return allocation
        proxy, k, trimmed = best
        allocation[k] = trimmed


ALLOCATIONS: Registry[Allocation] = Registry("block_allocation", {"none": _none, "top": _top, "zorba": _zorba})


def register_allocation(name: str, allocation: Allocation, *, overwrite: bool = False) -> Allocation:
    """Add a policy: ``allocation(clients, budgets, costs, min_coverage) -> {client: ActiveSet}``."""
    return ALLOCATIONS.register(name, allocation, overwrite=overwrite)


def check_allocation(allocation: Mapping[int, ActiveSet], budgets: Mapping[int, ClientBudget],
                     costs: LayerCosts) -> None:
    """Every client's set is within its budget and trains something; raises naming the client."""
    for k, active in sorted(allocation.items()):
        if not costs.dimension(active):
            raise AllocationError(f"client {k}: the allocation gives it nothing trainable (positions {active.id})")
        if not budgets[k].affords(costs, active):
            raise AllocationError(f"client {k}: positions {active.id} need {costs.step_flops(active):.3g} FLOPs per "
                                  f"step and {costs.memory_mib(active):.1f} MiB, over its budget "
                                  f"({budgets[k].describe()})")


def check_budgets(policy: str, budgets: Sequence[ClientBudget], costs: LayerCosts, min_coverage: int = 1) -> None:
    """Before the first round: every client can be given something within its budget under ``policy`` (else the
    error names the client), and under ``zorba`` every trainable position is within reach of at least
    ``min_coverage`` clients of the federation (else the error names the position and who can reach it)."""
    clients = list(range(len(budgets)))
    allocate(policy, clients, budgets, costs, min_coverage)
    if policy != "zorba":
        return
    reach = {k: largest_suffix(k, budgets[k], costs) for k in clients}
    needed = min(min_coverage, len(clients))
    for p in costs.trainable_positions():
        able = [k for k in clients if p in reach[k].positions]
        if len(able) < needed:
            raise AllocationError(
                f"position {p} is within the budget of {len(able)} client(s) {able}, below zorba_min_coverage="
                f"{needed}: no allocation of these budgets trains it")


def allocate(policy: str, clients: Sequence[int], budgets: Sequence[ClientBudget], costs: LayerCosts,
             min_coverage: int = 1) -> dict[int, ActiveSet]:
    """The round's active sets under ``policy``, checked against every budget."""
    by_client = {k: budgets[k] for k in clients}
    allocation = ALLOCATIONS[policy](list(clients), by_client, costs, min_coverage)
    check_allocation(allocation, by_client, costs)
    return allocation
