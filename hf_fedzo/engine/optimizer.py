"""``ZOOptimizer``: a ``torch.optim.Optimizer`` whose step replays (seed, scalar) estimates.

Its ``param_groups`` carry ``lr`` and ``weight_decay`` like any optimizer, so every transformers
scheduler, warm-up and ``optimizer.pt`` checkpoint works unchanged. ``step()`` applies the estimates
recorded since the last step (gradient-accumulation micro-batches are averaged) and appends one
``ZOUpdate`` to ``history``: the whole fine-tune is the initial weights plus that log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hf_fedzo.engine.estimator import ZOEstimate, ZOEstimator
from hf_fedzo.engine.stability import clip_scalars, history_threshold


@dataclass(frozen=True)
class ZOUpdate:
    """One optimizer step as replayable data: the seeds and scalars of its micro-batches, lr and decay."""

    step_seeds: tuple[int, ...]
    scalars: tuple[tuple[tuple[float, ...], ...], ...]  # (micro-batch, P1, P2)
    lr: float
    weight_decay: float

    @classmethod
    def from_estimates(cls, estimates: Iterable[ZOEstimate], lr: float, weight_decay: float) -> ZOUpdate:
        estimates = list(estimates)
        return cls(
            tuple(e.step_seed for e in estimates),
            cls.nest(torch.stack([e.scalars for e in estimates])),
            float(lr),
            float(weight_decay),
        )

    @staticmethod
    def nest(scalars: Any) -> tuple[tuple[tuple[float, ...], ...], ...]:
        """A `(estimates, P1, P2)` array or tensor as the nested tuples a record holds."""
        if scalars.ndim != 3:
            raise ValueError(f"scalars must be (estimates, P1, P2), got shape {tuple(scalars.shape)}")
        return tuple(tuple(tuple(row) for row in matrix) for matrix in scalars.tolist())

    def pairs(self) -> list[tuple[int, torch.Tensor]]:
        pairs = zip(self.step_seeds, self.scalars, strict=True)
        return [(seed, torch.tensor(s, dtype=torch.float32)) for seed, s in pairs]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZOUpdate:
        return cls(
            tuple(int(s) for s in data["step_seeds"]),
            tuple(tuple(tuple(float(x) for x in row) for row in m) for m in data["scalars"]),
            float(data["lr"]),
            float(data["weight_decay"]),
        )


def apply_updates(estimator: ZOEstimator, updates: Iterable[ZOUpdate], retrace: bool = False) -> None:
    """Replay logged updates in order (a resumed client, a server, or a trajectory checkpoint).

    ``retrace=True`` first repeats each estimate's in-place perturb/restore arithmetic (no forwards):
    restoring leaves floating-point residue, so only a retraced replay equals the trained weights bit for
    bit (on the device type the run used). Without it the result differs by rounding noise (~1e-8).
    """
    for update in updates:
        if retrace:
            for step_seed in update.step_seeds:
                estimator.retrace(step_seed)
        estimator.apply_update(update.pairs(), update.lr, update.weight_decay)


class ZOOptimizer(torch.optim.Optimizer):
    """Applies ZO estimates in ``step()``; holds no per-parameter state (memory stays at inference level).

    ``clip_factor > 0`` clips every scalar to ± that many times the RMS of the last applied ones
    (``hf_fedzo.engine.stability``); the history records the clipped values, so replays need nothing else.
    """

    def __init__(self, params: Iterable[Any], estimator: ZOEstimator, lr: float = 1e-6, weight_decay: float = 0.0,
                 clip_factor: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        if len(self.param_groups) != 1:
            raise ValueError("ZOOptimizer takes one parameter group: a direction spans every trainable tensor")
        if clip_factor < 0 or not math.isfinite(clip_factor):
            raise ValueError(f"clip_factor must be a finite number >= 0 (got {clip_factor})")
        self.estimator = estimator
        self.clip_factor = clip_factor
        self.clipped_scalars = 0  # scalars cut by clipping so far (the trainer logs it)
        self.pending: list[ZOEstimate] = []
        self.history: list[ZOUpdate] = []
        # What the history starts from (e.g. an adapter's random initial values): saved with the history so a
        # resumed run still knows the original starting point, not the checkpoint it resumed from.
        self.trajectory_start: dict[str, Any] = {}

    def accumulate(self, estimate: ZOEstimate) -> None:
        self.pending.append(estimate)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        if not self.pending:
            return loss
        group = self.param_groups[0]
        if self.clip_factor > 0:
            threshold = history_threshold([u.scalars for u in self.history], self.clip_factor)
            for estimate in self.pending:
                estimate.scalars, count = clip_scalars(estimate.scalars, threshold)
                self.clipped_scalars += count
        update = ZOUpdate.from_estimates(self.pending, group["lr"], group["weight_decay"])
        self.estimator.apply_update(update.pairs(), update.lr, update.weight_decay)
        self.pending.clear()
        self.history.append(update)  # the trajectory: a few scalars per step, so always kept
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """No gradients exist; kept for API compatibility."""

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["zo_history"] = [u.to_dict() for u in self.history]
        state["zo_trajectory_start"] = self.trajectory_start
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        history = state_dict.pop("zo_history", [])
        start = state_dict.pop("zo_trajectory_start", None)
        super().load_state_dict(state_dict)
        self.history = [ZOUpdate.from_dict(u) for u in history]
        if start is not None:
            self.trajectory_start = start
