"""The typed records of a federation: what each client's exchange gave back, each round, the whole run.

Written by :func:`~hf_fedzo.federation.rounds.run_rounds` only; read by the results writer, the recipes and
the transports' callers. ``RoundRecord.to_dict`` is the JSON of ``federation_state.json`` and
``federation_results.json`` (per-client maps keyed by the client id as a string).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_fedzo.engine import WorkCounters


@dataclass
class ClientRecord:
    """What one active client's exchange gave back in a round.

    ``report`` is the serialized :class:`~hf_fedzo.federation.ClientReport` handed to the server (None: no
    report came back, or the method's uploads bypass the server, as FedAvg's tensors do); ``bytes_up`` is
    what the client uploaded (None: nothing arrived).
    """

    client_id: int
    bytes_down: int = 0
    report: bytes | None = None
    bytes_up: int | None = None
    work: WorkCounters = field(default_factory=WorkCounters)
    peak_memory_mib: float | None = None  # measured by the client (see ZOClient.peak_memory_mib)

    def __post_init__(self) -> None:
        if self.report is not None and self.bytes_up is None:
            self.bytes_up = len(self.report)


@dataclass
class Exchanged:
    """One round's exchange: a :class:`ClientRecord` per client contacted, and what went wrong on the way."""

    clients: list[ClientRecord] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)  # no known node for the client
    unanswered: list[int] = field(default_factory=list)  # no reply within the round timeout
    failed: dict[int, str] = field(default_factory=dict)  # the client's app failed; why
    resynced: dict[int, int] = field(default_factory=dict)  # the round a client really held, when it asked
    train_loss: float | None = None  # set only by exchanges whose losses do not travel in reports (FedAvg)


@dataclass
class RoundRecord:
    """One round as every transport records it (``to_dict`` is the JSON of the state and results files)."""

    round: int
    sampled: list[int]
    dropped: list[int]
    rejected: dict[int, str]
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]
    work: WorkCounters
    cumulative_flops: int
    train_loss: float | None
    seconds: float
    unreachable: list[int] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    resynced: dict[int, int] = field(default_factory=dict)
    clipped: dict[int, str] = field(default_factory=dict)  # what the server's screening did to a client's report
    zo_clipped: int = 0  # aggregated scalars this round that --zo_clip cut to its bound
    eval: dict[str, float] | None = None
    # Heterogeneous rounds: per client, its active positions, lr, work per block and measured peak memory.
    accounting: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return self.work.flops

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items()
                if k not in ("work", "eval", "clipped", "zo_clipped", "accounting")}
        for name in ("rejected", "bytes_down", "bytes_up", "failed", "resynced"):
            data[name] = {str(k): v for k, v in data[name].items()}
        if self.clipped:  # only rounds where screening acted carry it
            data["clipped"] = {str(k): v for k, v in self.clipped.items()}
        if self.zo_clipped:  # only with --zo_clip, and only in rounds where it cut something
            data["zo_clipped"] = self.zo_clipped
        data |= self.work.to_dict() | {"flops": self.flops}
        if self.accounting:
            data["accounting"] = {str(k): v for k, v in self.accounting.items()}
        return data if self.eval is None else data | {"eval": dict(self.eval)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        def by_client(name: str) -> dict[int, Any]:
            return {int(k): v for k, v in data.get(name, {}).items()}

        work = WorkCounters.from_mapping(data)
        if "flops_block1" not in data and "flops_block2" not in data:  # written before per-block FLOPs were kept
            work.flops_block2 = int(data["flops"])
        return cls(round=int(data["round"]), sampled=list(data["sampled"]), dropped=list(data["dropped"]),
                   rejected=by_client("rejected"), bytes_down=by_client("bytes_down"), bytes_up=by_client("bytes_up"),
                   work=work, cumulative_flops=int(data["cumulative_flops"]), train_loss=data["train_loss"],
                   seconds=float(data["seconds"]), unreachable=list(data.get("unreachable", [])),
                   unanswered=list(data.get("unanswered", [])), failed=by_client("failed"),
                   resynced=by_client("resynced"), clipped=by_client("clipped"),
                   zo_clipped=int(data.get("zo_clipped", 0)), eval=data.get("eval"),
                   accounting=by_client("accounting"))


@dataclass
class FederationResult:
    """Every round's record and the last evaluation's metrics."""

    rounds: list[RoundRecord] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.rounds)
