"""Client-wise learning rates (``--client_lr_policy``): the server sets each sampled client's lr every round.

A policy maps (client id, the round's lr, the statistics of the clients' last reports) to that client's lr. The
statistics are what already travels in a :class:`~hf_fedzo.federation.ClientReport`: the RMS of its projected
gradients (scalars) and its mean loss, kept per client by the server (and in its state file, so a resumed
server sets the same rates).

``fedmezo``. FedMeZO (Ling et al., KDD 2024, arXiv 2402.05926) customises the client-wise lr from its
convergence analysis, where a client's contribution to the bound grows with the magnitude of its ZO gradient
estimate (dimension and heterogeneity terms); its code exposes ``train_strategy`` ∈ {frozen, random,
round-wise, five-round, model-diff}, but the exact rule could not be recovered offline. This policy is the
stated idea on the statistic that travels: a client whose last projected gradients were larger than the
federation's typical ones takes a proportionally smaller step, so every client's step
``lr_k · rms_k`` is the same, ``lr_k = lr · clip(median_j rms_j / rms_k, 1/4, 4)`` (the median over every client
that has reported, each with its latest report; a client that has never reported gets ``lr``). The clip
bounds what one outlying report can do to a client's rate. The aggregation then counts each client's scalars
``lr_k / lr`` times, so the log (applied with ``lr``) moves the model by the mean of the clients' own steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from hf_fedzo.registry import Registry

ClientStats = Mapping[int, Mapping[str, float]]  # client → {"scalar_rms": …, "loss_mean": …}
ClientLR = Callable[[int, float, ClientStats], float]
FEDMEZO_CLIP = 4.0


def _shared(client: int, lr: float, stats: ClientStats) -> float:
    return lr


def _fedmezo(client: int, lr: float, stats: ClientStats) -> float:
    mine = stats.get(client, {}).get("scalar_rms")
    rms = [s["scalar_rms"] for s in stats.values() if s.get("scalar_rms", 0) > 0]
    if not mine or not rms or not math.isfinite(mine):
        return lr
    ratio = float(np.median(rms)) / mine
    return lr * min(max(ratio, 1 / FEDMEZO_CLIP), FEDMEZO_CLIP)


CLIENT_LR_POLICIES: Registry[ClientLR] = Registry("client_lr_policy", {"none": _shared, "fedmezo": _fedmezo})


def register_client_lr_policy(name: str, policy: ClientLR, *, overwrite: bool = False) -> ClientLR:
    """Add a policy: ``policy(client_id, lr, stats) -> lr_k`` (``stats``: each client's latest report statistics)."""
    return CLIENT_LR_POLICIES.register(name, policy, overwrite=overwrite)


def report_statistics(scalars: np.ndarray, loss_mean: float) -> dict[str, float]:
    """What a policy may use from one report: the RMS of its scalars and its mean loss."""
    return {"scalar_rms": float(np.sqrt(np.mean(np.square(scalars.astype(np.float64))))), "loss_mean": float(loss_mean)}
