"""Aggregating client scalars into the round's log records.

With shared seeds (the default) every sampled client evaluated the same direction z_t at local step t,
so the mean of the client updates is exactly Σ_t agg_k(g_kt)·z_t: one aggregated scalar per seed,
and robust rules (median, trimmed mean) apply per seed across clients. With per-client seeds each
client's directions are its own; the record carries every client's seeds and pre-weighted scalars,
and only the (weighted) mean is defined.

Untrusted clients (see ``screen_reports``, which the server runs before aggregating):

* weight cap: under ``weighting="examples"`` a client's ``num_examples`` counts at most
  ``max_weight_ratio`` times the round's median count, so one inflated count cannot take over the mean;
* scalar bound: a report whose scalars have an L2 norm over ``max_norm_ratio`` times the round's median
  norm is scaled down to that bound (needs at least 3 reports: with two, the median is their mean);
* ``trimmed_mean`` cuts at least one value per side whenever there are 3 or more reports.

Both only act on outliers: reports inside the bounds are aggregated by exactly the same arithmetic.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hf_fedzo.engine import SeedScope, ZOUpdate
from hf_fedzo.federation.budgets import ActiveSet
from hf_fedzo.federation.protocol import ClientReport, LogRecord, RoundSettings
from hf_fedzo.registry import Registry

logger = logging.getLogger(__name__)
ROBUST_MIN_CLIENTS = 3  # below this, a median or trimmed mean cannot outvote one bad report

# (clients, ...) stacked scalars and normalised client weights → aggregated scalars.
Aggregator = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _weighted_mean(stacked: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    return np.tensordot(weights.astype(np.float64), stacked.astype(np.float64), axes=1).astype(np.float32)


def _median(stacked: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    return np.median(stacked.astype(np.float64), axis=0).astype(np.float32)


def trim_count(clients: int, trim: float) -> int:
    """Values cut at each end: ``int(trim·n)``, but at least one from 3 clients on (else 10% trims nothing
    below 10 clients), and never so many that nothing is left."""
    cut = int(trim * clients)
    if trim > 0 and clients >= ROBUST_MIN_CLIENTS:
        cut = max(cut, 1)
    return min(cut, (clients - 1) // 2)


def _trimmed_mean(stacked: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    cut = trim_count(stacked.shape[0], trim)
    kept = np.sort(stacked.astype(np.float64), axis=0)[cut : stacked.shape[0] - cut]
    return kept.mean(axis=0).astype(np.float32)


AGGREGATORS: Registry[Aggregator] = Registry("aggregation", {"mean": _weighted_mean, "median": _median,
                                                            "trimmed_mean": _trimmed_mean})


def register_aggregator(name: str, aggregator: Aggregator, *, overwrite: bool = False) -> Aggregator:
    """Add a per-seed rule: ``aggregator(stacked, weights, trim_fraction)`` maps the (clients, P1, P2) scalars and
    the normalised client weights to (P1, P2). Rules other than ``mean`` need shared seeds."""
    return AGGREGATORS.register(name, aggregator, overwrite=overwrite)
WEIGHTINGS = ("examples", "uniform")


def check_aggregation(aggregation: str, weighting: str, trim_fraction: float, shared_seeds: bool) -> None:
    AGGREGATORS.check(aggregation)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {list(WEIGHTINGS)} (got {weighting!r})")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5) (got {trim_fraction})")
    if aggregation != "mean" and not shared_seeds:
        raise ValueError(f"aggregation={aggregation!r} works per seed across clients, which needs shared seeds; "
                         "use aggregation='mean' with per_client_seeds")


def client_weights(reports: Sequence[ClientReport], weighting: str, max_weight_ratio: float = 0.0) -> np.ndarray:
    """Normalised weights; with ``max_weight_ratio`` > 0 each count is capped at that many times the median."""
    if weighting == "uniform":
        return np.full(len(reports), 1.0 / len(reports))
    counts = np.array([r.num_examples for r in reports], dtype=np.float64)
    if max_weight_ratio > 0:
        counts = np.minimum(counts, max_weight_ratio * np.median(counts))  # equal values stay bit-identical
    return counts / counts.sum()


def capped_counts(reports: Sequence[ClientReport], max_weight_ratio: float) -> dict[int, str]:
    """The clients whose ``num_examples`` the weight cap lowers, with why (for the round's log)."""
    if max_weight_ratio <= 0 or not reports:
        return {}
    cap = max_weight_ratio * float(np.median([r.num_examples for r in reports]))
    return {r.client_id: f"num_examples {r.num_examples} counted as {cap:g} ({max_weight_ratio:g} x the median)"
            for r in reports if r.num_examples > cap}


def screen_reports(reports: Sequence[ClientReport], max_norm_ratio: float,
                   max_weight_ratio: float = 0.0) -> tuple[list[ClientReport], dict[int, str]]:
    """Scale down reports whose scalar norm exceeds ``max_norm_ratio`` × the round's median norm.

    Returns the reports to aggregate (the others unchanged, same objects) and, per clipped or capped
    client, what was done.
    """
    notes = capped_counts(reports, max_weight_ratio)
    if max_norm_ratio <= 0 or len(reports) < ROBUST_MIN_CLIENTS:
        return list(reports), notes
    norms = [float(np.linalg.norm(r.scalars.astype(np.float64))) for r in reports]
    bound = max_norm_ratio * float(np.median(norms))
    screened = []
    for report, norm in zip(reports, norms, strict=True):
        if norm > bound:
            scaled = (report.scalars.astype(np.float64) * (bound / norm)).astype(np.float32)
            report = dataclasses.replace(report, scalars=scaled)
            notes[report.client_id] = "; ".join(filter(None, [notes.get(report.client_id), (
                f"scalar norm {norm:.3g} clipped to {bound:.3g} ({max_norm_ratio:g} x the round's median)")]))
        screened.append(report)
    return screened, notes


def aggregate_round(round_id: int, reports: Sequence[ClientReport], settings: RoundSettings, scope_base: int,
                    *, shared_seeds: bool = True, aggregation: str = "mean", weighting: str = "examples",
                    trim_fraction: float = 0.1, max_weight_ratio: float = 0.0,
                    active: Mapping[int, ActiveSet] | None = None,
                    client_lr: Mapping[int, float] | None = None, server_lr: float = 1.0) -> list[LogRecord]:
    """One log record per local step; ``reports`` must be sorted by client id (the result is order-free then).

    With ``active`` (each client's active set; shared seeds only) the positions are grouped by the clients that
    trained them, and each group gets its own record per step: the rule applied over those clients only, with
    their weights renormalised. With ``client_lr`` a client's scalars count ``lr_k / lr`` times, so the record
    (applied with the round's lr) moves the model by the mean of the clients' own steps. ``server_lr`` scales
    the whole aggregated step (FedOpt's server learning rate): each record is applied with ``lr * server_lr``.
    """
    if not reports:
        return []
    if client_lr is not None:
        reports = [dataclasses.replace(r, scalars=(r.scalars.astype(np.float64) * (client_lr[r.client_id] / settings.lr)
                                                   ).astype(np.float32)) if client_lr[r.client_id] != settings.lr else r
                   for r in reports]
    if server_lr != 1.0:
        settings = dataclasses.replace(settings, lr=settings.lr * server_lr)
    if active is not None:
        return _aggregate_groups(round_id, reports, settings, scope_base, aggregation, weighting, trim_fraction,
                                 max_weight_ratio, active)
    if aggregation != "mean" and len(reports) < ROBUST_MIN_CLIENTS:
        logger.warning("round %d: aggregation=%r over %d report(s) cannot outvote a bad one (needs >= %d)",
                       round_id, aggregation, len(reports), ROBUST_MIN_CLIENTS)
    weights = client_weights(reports, weighting, max_weight_ratio)
    records = []
    for step in range(settings.local_steps):
        per_client = np.stack([r.scalars[step] for r in reports])  # (clients, P1, P2)
        if shared_seeds:
            seeds: tuple[int, ...] = (SeedScope(scope_base, round_id, 0).step_seed(step),)
            scalars = AGGREGATORS[aggregation](per_client, weights, trim_fraction)[None]
        else:
            # apply_update averages its estimates, so pre-scaling by K·w_k gives Σ_k w_k g_k z_k.
            seeds = tuple(SeedScope(scope_base, round_id, r.client_id + 1).step_seed(step) for r in reports)
            scale = (len(reports) * weights).astype(np.float32)[:, None, None]
            # float32 x float32 is exact in float64, so rounding once gives the float32 product bit for bit;
            # only a product beyond float32's range changes: it saturates instead of becoming inf.
            limit = float(np.finfo(np.float32).max)
            scalars = np.clip(per_client.astype(np.float64) * scale, -limit, limit).astype(np.float32)
        records.append(LogRecord(round_id, ZOUpdate(seeds, ZOUpdate.nest(scalars), settings.lr, settings.weight_decay)))
    return records


def position_groups(active: Mapping[int, ActiveSet], clients: Sequence[int]) -> list[tuple[ActiveSet, list[int]]]:
    """The positions trained by ``clients``, grouped by exactly which of them trained each (lowest position first)."""
    by_clients: dict[tuple[int, ...], set[int]] = {}
    for position in sorted(set().union(*(active[k].positions for k in clients))):
        covering = tuple(k for k in clients if position in active[k].positions)
        by_clients.setdefault(covering, set()).add(position)
    groups = [(ActiveSet(frozenset(p)), list(c)) for c, p in by_clients.items()]
    return sorted(groups, key=lambda g: min(g[0].positions))


def _aggregate_groups(round_id: int, reports: Sequence[ClientReport], settings: RoundSettings, scope_base: int,
                      aggregation: str, weighting: str, trim_fraction: float, max_weight_ratio: float,
                      active: Mapping[int, ActiveSet]) -> list[LogRecord]:
    weights = client_weights(reports, weighting, max_weight_ratio)
    row = {r.client_id: i for i, r in enumerate(reports)}
    groups = position_groups(active, [r.client_id for r in reports])
    records = []
    for step in range(settings.local_steps):
        seeds = (SeedScope(scope_base, round_id, 0).step_seed(step),)
        for positions, clients in groups:
            rows = [row[k] for k in clients]
            per_client = np.stack([reports[i].scalars[step] for i in rows])
            group_weights = weights[rows] / weights[rows].sum()
            scalars = AGGREGATORS[aggregation](per_client, group_weights, trim_fraction)[None]
            update = ZOUpdate(seeds, ZOUpdate.nest(scalars), settings.lr, settings.weight_decay)
            records.append(LogRecord(round_id, update, positions.id))
    return records
