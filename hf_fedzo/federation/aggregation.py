"""Aggregating client scalars into the round's log records.

With shared seeds (the default) every sampled client evaluated the same direction z_t at local step t,
so the mean of the client updates is exactly Σ_t agg_k(g_kt)·z_t: one aggregated scalar per seed,
and robust rules (median, trimmed mean) apply per seed across clients. With per-client seeds each
client's directions are its own; the record carries every client's seeds and pre-weighted scalars,
and only the (weighted) mean is defined.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hf_fedzo.engine import SeedScope, ZOUpdate
from hf_fedzo.federation.protocol import ClientReport, LogRecord, RoundSettings
from hf_fedzo.registry import Registry

# (clients, ...) stacked scalars and normalised client weights → aggregated scalars.
Aggregator = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _weighted_mean(stacked: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    return np.tensordot(weights.astype(np.float64), stacked.astype(np.float64), axes=1).astype(np.float32)


def _median(stacked: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    return np.median(stacked.astype(np.float64), axis=0).astype(np.float32)


def _trimmed_mean(stacked: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    cut = int(trim * stacked.shape[0])
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


def client_weights(reports: Sequence[ClientReport], weighting: str) -> np.ndarray:
    if weighting == "uniform":
        return np.full(len(reports), 1.0 / len(reports))
    counts = np.array([r.num_examples for r in reports], dtype=np.float64)
    return counts / counts.sum()


def aggregate_round(round_id: int, reports: Sequence[ClientReport], settings: RoundSettings, scope_base: int,
                    *, shared_seeds: bool = True, aggregation: str = "mean", weighting: str = "examples",
                    trim_fraction: float = 0.1) -> list[LogRecord]:
    """One log record per local step; ``reports`` must be sorted by client id (the result is order-free then)."""
    if not reports:
        return []
    weights = client_weights(reports, weighting)
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
            scalars = per_client * scale
        nested = tuple(tuple(tuple(row) for row in matrix) for matrix in scalars.tolist())
        records.append(LogRecord(round_id, ZOUpdate(seeds, nested, settings.lr, settings.weight_decay)))
    return records
