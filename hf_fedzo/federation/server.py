"""The federation server: sampling, instructions, validation, aggregation and the append-only log.

A plain object (like a Flower strategy) holding no model: every party — server, clients, every process
of a simulation — reaches the global weights by replaying the same log with the engine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hf_fedzo.engine import ZOUpdate, clip_scalars, history_threshold, mix_seed
from hf_fedzo.federation.aggregation import aggregate_round, screen_reports
from hf_fedzo.federation.allocation import allocate, check_budgets
from hf_fedzo.federation.budgets import ActiveSet, ClientBudget, LayerCosts, positions_label, resolve_budgets
from hf_fedzo.federation.client_lr import CLIENT_LR_POLICIES, report_statistics
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.protocol import (
    MAX_MESSAGE_BYTES,
    ClientReport,
    LogRecord,
    ProtocolError,
    RoundInstruction,
    decode,
)
from hf_fedzo.federation.records import ClientRecord

logger = logging.getLogger(__name__)

_SAMPLING = 0x5A4D
_DROPOUT = 0xD40F


@dataclass
class RoundState:
    """The round being run: who was asked and what has been accepted so far."""

    round: int
    sampled: list[int]
    reports: dict[int, ClientReport] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    active: dict[int, ActiveSet] | None = None  # heterogeneous rounds: what each sampled client trains
    client_lr: dict[int, float] | None = None  # a client-wise lr policy: each sampled client's lr


class FederatedServer:
    """Seeded client sampling, per-round instructions, report validation and aggregation.

    Args:
        config: the federation's settings.
        max_message_bytes: reports larger than this are refused before parsing.
    """

    def __init__(self, config: FederationConfig, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.config = config
        self.settings = config.round_settings()
        self.max_message_bytes = max_message_bytes
        self.log: list[LogRecord] = []
        self.completed_round = -1
        self.synced: dict[int, int] = {}  # client id → last round it replayed through
        self.current: RoundState | None = None
        self.last_round: RoundState | None = None
        self.clipped: dict[int, str] = {}  # what screening did to the last finished round's reports, per client
        self.clipped_scalars = 0  # aggregated scalars cut by --zo_clip so far
        self.costs: LayerCosts | None = None  # the model's per-layer costs (heterogeneous federations)
        self.budgets: list[ClientBudget] | None = None
        self.client_stats: dict[int, dict[str, float]] = {}  # each client's latest report statistics

    def set_costs(self, costs: LayerCosts, reported: dict[int, ClientBudget] | None = None) -> None:
        """Give the server the model's layer costs (measured by a replica) and resolve every client's budget;
        ``reported`` budgets (a Flower node's own, already validated) replace the configured ones."""
        self.costs = costs
        self.budgets = resolve_budgets(self.config.client_budgets, self.config.num_clients, costs)
        for client_id, budget in (reported or {}).items():
            self.budgets[client_id] = budget
        check_budgets(self.config.block_allocation, self.budgets, costs, self.config.zorba_min_coverage)

    # ---------------------------------------------------------------------------------------- rounds
    def sample_clients(self, round_id: int) -> list[int]:
        rng = random.Random(mix_seed(self.config.seed, round_id, _SAMPLING))
        return sorted(rng.sample(range(self.config.num_clients), self.config.clients_per_round))

    def dropped_clients(self, round_id: int, sampled: list[int]) -> list[int]:
        """The sampled clients a simulation makes fail this round (``config.dropout`` of them, seeded)."""
        count = math.floor(self.config.dropout * len(sampled))
        rng = random.Random(mix_seed(self.config.seed, round_id, _DROPOUT))
        return sorted(rng.sample(sampled, count))

    def start_round(self, round_id: int) -> list[int]:
        if round_id != self.completed_round + 1:
            raise ValueError(f"round {round_id} cannot start: the last completed round is {self.completed_round}")
        state = RoundState(round_id, self.sample_clients(round_id))
        if self.config.heterogeneous:
            if self.costs is None or self.budgets is None:
                raise ValueError("a heterogeneous federation needs the model's layer costs: the transport calls "
                                 "server.set_costs(...) before the first round")
            state.active = allocate(self.config.block_allocation, state.sampled, self.budgets, self.costs,
                                    self.config.zorba_min_coverage)
        if self.config.client_lr_policy != "none":
            policy = CLIENT_LR_POLICIES[self.config.client_lr_policy]
            state.client_lr = {k: policy(k, self.settings.lr, self.client_stats) for k in state.sampled}
        self.current = state
        return state.sampled

    def open_round(self, round_id: int) -> tuple[list[int], list[int]]:
        """Start ``round_id``; return the sampled clients and, for a simulation, the seeded drop-outs."""
        sampled = self.start_round(round_id)
        return sampled, self.dropped_clients(round_id, sampled)

    def instruction(self, client_id: int, replay_after: int | None = None) -> RoundInstruction:
        """The round's instruction for ``client_id``, with the log records it has not replayed.

        ``replay_after`` overrides the round the server believes the client holds: a real client can lose
        its state (a fresh process, a restarted device) or miss an instruction it was sent, and then says
        which round it really holds (-1: the initial weights) so the replay starts there.
        """
        state = self._state()
        if client_id not in state.sampled:
            raise ValueError(f"client {client_id} is not sampled in round {state.round}")
        if replay_after is not None and not -1 <= replay_after < state.round:
            raise ProtocolError(f"client {client_id} asks for the log after round {replay_after}; in round "
                                f"{state.round} that must be in [-1, {state.round - 1}]")
        after = self.synced.get(client_id, -1) if replay_after is None else replay_after
        replay = tuple(r for r in self.log if r.round > after)
        self.synced[client_id] = state.round - 1
        seed_client = client_id + 1 if self.config.per_client_seeds else 0
        active = None if state.active is None else state.active[client_id].id
        lr = None if state.client_lr is None else state.client_lr[client_id]
        return RoundInstruction(state.round, client_id, self.config.seed, seed_client, self.settings, after, replay,
                                active, lr)

    # -------------------------------------------------------------------------------------- reports
    def receive(self, data: bytes) -> ClientReport:
        """Validate one serialized report and hold it for aggregation; a bad one raises and is not kept."""
        state = self._state()
        report = decode(data, expect=ClientReport, max_bytes=self.max_message_bytes)
        assert isinstance(report, ClientReport)
        try:
            self._validate(report, state)
        except ProtocolError as err:
            logger.warning("round %d: rejected %s", state.round, err)
            if report.client_id in state.sampled:
                state.rejected[report.client_id] = str(err)
            raise
        state.reports[report.client_id] = report
        return report

    def _validate(self, report: ClientReport, state: RoundState) -> None:
        who = f"report of client {report.client_id}"
        if report.round != state.round:
            raise ProtocolError(f"{who} is for round {report.round}; the current round is {state.round}")
        if not 0 <= report.client_id < self.config.num_clients:
            raise ProtocolError(f"{who}: unknown client (the federation has {self.config.num_clients})")
        if report.client_id not in state.sampled:
            raise ProtocolError(f"{who}: the client was not sampled in round {state.round}")
        if report.client_id in state.reports:
            raise ProtocolError(f"{who}: a report was already accepted this round")
        if report.scalars.shape != self.settings.scalar_shape:
            raise ProtocolError(f"{who}: scalars have shape {report.scalars.shape}; the round needs "
                                f"(local_steps, P1, P2) = {self.settings.scalar_shape}")
        if not np.isfinite(report.scalars).all():
            raise ProtocolError(f"{who}: scalars contain NaN or infinity")
        if report.num_examples < 1:
            raise ProtocolError(f"{who}: num_examples must be >= 1 (got {report.num_examples})")
        if not (math.isfinite(report.loss_mean) and math.isfinite(report.loss_last)):
            raise ProtocolError(f"{who}: loss statistics are not finite")

    def accepted_reports(self) -> list[ClientReport]:
        """The reports accepted so far in the current round, by client id."""
        state = self._state()
        return [state.reports[k] for k in sorted(state.reports)]

    def finish_round(self) -> list[LogRecord]:
        """Aggregate the accepted reports (none: an empty round) and append the result to the log."""
        state = self._state()
        weight_ratio = self.config.max_weight_ratio if self.config.weighting == "examples" else 0.0
        reports, self.clipped = screen_reports(self.accepted_reports(), self.config.max_norm_ratio, weight_ratio)
        for client_id, note in self.clipped.items():
            logger.warning("round %d, client %d: %s", state.round, client_id, note)
        records = aggregate_round(state.round, reports, self.settings, self.config.seed,
                                  shared_seeds=not self.config.per_client_seeds,
                                  aggregation=self.config.aggregation, weighting=self.config.weighting,
                                  trim_fraction=self.config.trim_fraction, max_weight_ratio=weight_ratio,
                                  active=state.active, client_lr=state.client_lr, server_lr=self.config.server_lr)
        for report in self.accepted_reports():
            self.client_stats[report.client_id] = report_statistics(report.scalars, report.loss_mean)
        if self.config.zo_clip:
            records = [self._clipped(record) for record in records]
        self.log.extend(records)
        self.completed_round = state.round
        self.current, self.last_round = None, state
        return records

    def accounting(self, clients: Sequence[ClientRecord]) -> dict[int, dict[str, Any]]:
        """Per client of the round just finished (heterogeneous federations only): its active positions, the lr
        it ran with, its forwards and FLOPs per block and its measured peak memory."""
        state = self.last_round
        if state is None or not self.config.heterogeneous or self.costs is None:
            return {}
        rows = {}
        for client in clients:
            active = state.active[client.client_id] if state.active else None
            lr = state.client_lr[client.client_id] if state.client_lr else self.settings.lr
            rows[client.client_id] = {
                "active": None if active is None else positions_label(active.positions, self.costs.num_layers),
                "active_id": None if active is None else active.id, "lr": lr, **client.work.to_dict(),
                "peak_memory_mib": client.peak_memory_mib}
        return rows

    def _clipped(self, record: LogRecord) -> LogRecord:
        """``record`` with its scalars clipped against the log so far (the threshold is a function of the log,
        so a resumed server clips exactly as the first one did)."""
        threshold = history_threshold([r.update.scalars for r in self.log], self.config.zo_clip)
        if threshold is None:
            return record
        scalars, count = clip_scalars(torch.tensor(record.update.scalars, dtype=torch.float32), threshold)
        self.clipped_scalars += count
        return dataclasses.replace(record, update=dataclasses.replace(record.update, scalars=ZOUpdate.nest(scalars)))

    def _state(self) -> RoundState:
        if self.current is None:
            raise ValueError("no round is in progress: call start_round() first")
        return self.current

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state = {"completed_round": self.completed_round, "synced": {str(k): v for k, v in self.synced.items()},
                 "log": [r.to_json() for r in self.log]}
        if self.config.client_lr_policy != "none":  # what the next rounds' client rates are computed from
            state["client_stats"] = {str(k): v for k, v in self.client_stats.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.completed_round = int(state["completed_round"])
        self.synced = {int(k): int(v) for k, v in state["synced"].items()}
        self.log = [LogRecord.from_json(r) for r in state["log"]]
        stats = state.get("client_stats", {})
        self.client_stats = {int(k): {n: float(x) for n, x in v.items()} for k, v in stats.items()}
        self.current = None
