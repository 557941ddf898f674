"""Splitting a dataset over clients: IID, Dirichlet(α) label skew, or one client group per domain.

Every partition is a pure function of (dataset, number of clients, seed), so each process of a
simulation and a resumed run compute the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hf_fedzo.registry import Registry

Partitioner = Callable[..., list[list[int]]]
PARTITIONERS: Registry[Partitioner] = Registry("partition")


def register_partitioner(name: str, *, overwrite: bool = False) -> Callable[[Partitioner], Partitioner]:
    """Decorator: ``function(dataset, num_clients, seed, **options)`` returns each client's row indices."""

    def decorator(function: Partitioner) -> Partitioner:
        return PARTITIONERS.register(name, function, overwrite=overwrite)

    return decorator


@register_partitioner("iid")
def iid_partition(dataset: Any, num_clients: int, seed: int, **_: Any) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(len(dataset))
    return [sorted(part.tolist()) for part in np.array_split(order, num_clients)]


@register_partitioner("dirichlet")
def dirichlet_partition(dataset: Any, num_clients: int, seed: int, *, alpha: float = 0.5, label_column: str = "label",
                        min_size: int = 2, **_: Any) -> list[list[int]]:
    """Label skew: each label's examples are spread over clients in Dirichlet(α) proportions.

    Small α gives clients dominated by one label. Draws are repeated (seeded) until every client has
    at least ``min_size`` examples, as is customary, so no client is empty.
    """
    if alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0 (got {alpha})")
    labels = np.asarray(dataset[label_column])
    rng = np.random.default_rng(seed)
    for _attempt in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise ValueError(f"dirichlet_alpha={alpha} with {num_clients} clients keeps leaving a client with fewer than "
                     f"{min_size} of {len(labels)} examples; use a larger alpha or fewer clients")


@register_partitioner("domain")
def domain_partition(dataset: Any, num_clients: int, seed: int, *, domain_column: str = "domain",
                     **_: Any) -> list[list[int]]:
    """Clients never mix domains: the clients are dealt to domains round-robin (in sorted domain order),
    then each domain's examples are split IID among its clients."""
    if domain_column not in dataset.column_names:
        raise ValueError(f"partition='domain' needs a {domain_column!r} column; the dataset has {dataset.column_names}")
    domains = np.asarray(dataset[domain_column])
    names = sorted(set(domains.tolist()))
    if num_clients < len(names):
        raise ValueError(f"num_clients={num_clients} is fewer than the {len(names)} domains {names}")
    owners: dict[str, list[int]] = {name: [] for name in names}
    for client in range(num_clients):
        owners[names[client % len(names)]].append(client)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    rng = np.random.default_rng(seed)
    for name in names:
        members = rng.permutation(np.flatnonzero(domains == name))
        for client, chunk in zip(owners[name], np.array_split(members, len(owners[name])), strict=True):
            parts[client] = sorted(chunk.tolist())
    return parts


def partition_dataset(dataset: Any, num_clients: int, method: str = "iid", seed: int = 0,
                      **options: Any) -> list[list[int]]:
    """Row indices of ``dataset`` for each client (disjoint, covering every row)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1 (got {num_clients})")
    if num_clients > len(dataset):
        raise ValueError(f"num_clients={num_clients} exceeds the {len(dataset)} training examples")
    PARTITIONERS.check(method)
    return PARTITIONERS[method](dataset, num_clients, seed, **options)


def describe_partition(parts: Sequence[Sequence[int]], labels: Sequence[int]) -> list[dict[str, int]]:
    """Per client: size and count per label (for logs and the results JSON)."""
    labels_array = np.asarray(labels)
    described = []
    for part in parts:
        values, counts = np.unique(labels_array[list(part)], return_counts=True)
        per_label = {f"label_{int(v)}": int(c) for v, c in zip(values, counts, strict=True)}
        described.append({"size": len(part), **per_label})
    return described
