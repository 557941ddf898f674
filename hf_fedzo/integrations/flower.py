"""Real federations on Flower, speaking the same seed+scalar protocol as the accelerate simulator.

The transport is Flower's; everything else is ours and shared with :func:`~hf_fedzo.federation.simulate_federation`:
the server side is a :class:`~hf_fedzo.federation.FederatedServer` (sampling, simulated drop-outs, validation,
aggregation, the append-only log), the client side a :class:`~hf_fedzo.federation.ZOClient` (replay, local ZO
steps), and every message is our versioned :func:`~hf_fedzo.federation.encode` bytes carried as one ``bytes``
value of a ``ConfigRecord``. With the same config and seeds a Flower federation therefore produces the same log,
and every replica that replays it — the server's, each client's, the simulator's — the same weights, bit for bit.

What travels (``RecordDict`` key ``"hf_fedzo"``):

* ``query`` (once per new node): the node answers its ``partition-id`` (its client id), ``num-partitions`` and
  protocol version, so the server knows which node holds which client's data.
* ``train``: server → client ``{"message": RoundInstruction bytes}``; client → server ``{"message": ClientReport
  bytes}`` plus a ``MetricRecord`` with the local work (forwards, FLOPs), or ``{"resync-after": round}`` when the
  client does not hold the state the instruction's replay starts from (see below).

Client state: between rounds a client keeps only its last synced trainable tensors and the round they are synced
through, in Flower's per-node ``context.state`` (never sent to the server; a SuperNode keeps it across the
fresh ``flwr-clientapp`` process it starts for every message). Each process keeps one model replica and loads
the client's tensors into it, so a simulation holds one model per Ray actor, not one per client. A client with
no state (a new or restarted SuperNode) starts from the initial weights (round -1).

Handshake: an instruction replays the log after ``replay_after``, the round the server believes the client holds.
When the client holds another round it answers ``resync-after`` with the round it does hold (-1 after losing its
state; a client ahead of the server, e.g. after the server restarted from an older state file, cannot go back and
restarts from the initial weights), and the server resends the instruction with the log from there, once per round.

Drop-outs: ``config.dropout`` drops the same seeded clients as the simulator; besides, a sampled client whose node
is unknown, that does not answer within ``round_timeout`` or whose ClientApp fails is dropped for the round, and
the round completes with the rest. A report that fails validation is rejected with the server's
:class:`~hf_fedzo.federation.ProtocolError` and nothing of it is kept.
"""

from __future__ import annotations

try:
    from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError as err:  # the core install has no flwr; say how to get it
    raise ImportError("hf_fedzo.integrations.flower needs Flower (flwr 1.41): pip install 'hf-fedzo[flower]'") from err

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from hf_fedzo.federation.client import Batch, BatchLoss, ZOClient
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.integrity import read_state, restore_server, write_state
from hf_fedzo.federation.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ClientReport,
    LogRecord,
    ProtocolError,
    RoundInstruction,
    decode,
    encode,
)
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.federation.simulation import (
    STATE_FILE,
    ClientData,
    Evaluate,
    SimulationResult,
    _fingerprint,
    write_results,
)

RECORD = "hf_fedzo"  # the RecordDict key of our ConfigRecord in every message (and of the client's state)
WORK = "hf_fedzo.work"  # the MetricRecord with a client's local work (not part of the protocol)
MESSAGE = "message"
RESYNC = "resync-after"
DISCOVERY_GROUP = "hf_fedzo-discovery"

# Flower's own logger, so our lines show up in `flwr run --stream` and the SuperLink logs.
logger = logging.getLogger("flwr.hf_fedzo")

ModelFn = Callable[[Context], tuple[nn.Module, BatchLoss]]


class GridLike(Protocol):
    """What the strategy uses of a Flower ``Grid`` (any Grid has it; tests pass an in-process stand-in)."""

    def get_node_ids(self) -> Iterable[int]: ...

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]: ...
DataFn = Callable[[Context, int], ClientData]


# ------------------------------------------------------------------------------------------------ run config
def federation_config(run_config: Mapping[str, Any], app_keys: Iterable[str] = ()) -> FederationConfig:
    """A :class:`FederationConfig` from a Flower run config (``[tool.flwr.app.config]`` plus ``--run-config``).

    Keys are the config's field names with ``-`` for ``_`` (``clients-per-round``, ``zo-p2``, …); ``flop-budget =
    0`` means none (TOML has no null). Any other key must be in ``app_keys``, so a typo fails instead of being ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(FederationConfig)}
    values: dict[str, Any] = {}
    unknown = []
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name not in fields:
            if key not in set(app_keys):
                unknown.append(key)
            continue
        kind = str(fields[name].type)
        if name == "flop_budget":
            values[name] = float(value) if value else None
        elif kind == "int":
            values[name] = int(value)
        elif kind == "float":
            values[name] = float(value)
        elif kind == "bool":
            values[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        else:
            values[name] = str(value)
    if unknown:
        raise ValueError(f"run config: unknown keys {sorted(unknown)}; FederationConfig takes "
                         f"{sorted(k.replace('_', '-') for k in fields)}")
    return FederationConfig(**values)


# ---------------------------------------------------------------------------------------------------- client
def client_id_of(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) of this SuperNode: its client id and the federation's size."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError("this SuperNode has no partition: start it with --node-config "
                         "'partition-id=K num-partitions=N' (N = num-clients, 0 <= K < N)") from err


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    # Exactly what the engine perturbs and updates: every other tensor stays at its initial value on all parties.
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@dataclass
class _Replica:
    """This process's one model replica; each message loads its client's synced trainable tensors into it."""

    run_id: int
    client: ZOClient
    initial: dict[str, torch.Tensor]  # trainable tensors at the initial weights: a client with no state
    holds: tuple[int, int] | None = None  # (client id, round) whose tensors are loaded now


# Module globals, not closure state: the simulation pickles the ClientApp with every message it sends to a Ray
# actor, so only what lives in an importable module survives from one message to the next in the same process.
_REPLICA: list[_Replica] = []
_DATA: dict[tuple[int, int], ClientData] = {}


def _replica(context: Context, model_fn: ModelFn) -> _Replica:
    if _REPLICA and _REPLICA[0].run_id == context.run_id:
        return _REPLICA[0]
    _REPLICA.clear()  # a new run: free the old model before loading the next one
    _DATA.clear()
    model, batch_loss = model_fn(context)
    initial = {name: t.detach().to("cpu", copy=True) for name, t in _trainable(model).items()}
    _REPLICA.append(_Replica(context.run_id, ZOClient(model, batch_loss), initial))
    return _REPLICA[0]


@torch.no_grad()
def _load_client(replica: _Replica, context: Context, client_id: int) -> int:
    """Put ``client_id``'s synced tensors in the replica; return the round they are synced through."""
    record = context.state.get(RECORD)
    held = int(record["round"]) if isinstance(record, ConfigRecord) and "round" in record else -1
    if replica.holds != (client_id, held):
        tensors = load_tensors(record["weights"]) if held >= 0 else replica.initial  # type: ignore[index,arg-type]
        for name, parameter in _trainable(replica.client.model).items():
            parameter.copy_(tensors[name])
        replica.holds = (client_id, held)
    replica.client.synced_round = held
    return held


def _save_client(replica: _Replica, context: Context, client_id: int) -> None:
    held = replica.client.synced_round
    weights = save_tensors({n: t.detach().to("cpu").contiguous() for n, t in _trainable(replica.client.model).items()})
    context.state[RECORD] = ConfigRecord({"round": held, "weights": weights})
    replica.holds = (client_id, held)


def _payload(message: Message) -> bytes:
    record = message.content.get(RECORD) if message.has_content() else None
    data = record.get(MESSAGE) if isinstance(record, ConfigRecord) else None
    if not isinstance(data, bytes):
        raise ProtocolError(f"the message carries no '{RECORD}' ConfigRecord with '{MESSAGE}' bytes")
    return data


def _query(message: Message, context: Context) -> Message:
    client_id, num_clients = client_id_of(context)
    return Message(RecordDict({RECORD: ConfigRecord({"partition-id": client_id, "num-partitions": num_clients,
                                                     "protocol-version": PROTOCOL_VERSION})}), reply_to=message)


def _train(message: Message, context: Context, model_fn: ModelFn, data_fn: DataFn) -> Message:
    client_id, _ = client_id_of(context)
    instruction = decode(_payload(message), expect=RoundInstruction)
    assert isinstance(instruction, RoundInstruction)
    if instruction.client_id != client_id:
        raise ProtocolError(f"an instruction for client {instruction.client_id} reached client {client_id}")
    replica = _replica(context, model_fn)
    held = _load_client(replica, context, client_id)
    if held > instruction.replay_after:
        # Replicas only move forward: start over from the initial weights and ask for the whole log.
        context.state.pop(RECORD, None)
        held = _load_client(replica, context, client_id)
    if held != instruction.replay_after:
        logger.info("client %d holds round %d, the replay starts after %d: asking for a resync", client_id, held,
                    instruction.replay_after)
        return Message(RecordDict({RECORD: ConfigRecord({RESYNC: held})}), reply_to=message)

    key = (context.run_id, client_id)
    if key not in _DATA:
        _DATA[key] = data_fn(context, client_id)
    data = _DATA[key]
    settings = instruction.settings
    # The same draw as the simulator's: a pure function of (seed, round, client).
    batches = data.round_batches(instruction.seed_base, instruction.round, client_id, settings.local_steps,
                                 settings.batch_size)
    replica.holds = None  # the replay moves the tensors: if it fails half-way they belong to no synced round
    report, work = replica.client.handle(instruction, batches, len(data.examples))
    _save_client(replica, context, client_id)
    return Message(RecordDict({RECORD: ConfigRecord({MESSAGE: encode(report)}),
                               WORK: MetricRecord(dict(vars(work)))}), reply_to=message)


def make_client_app(model_fn: ModelFn, data_fn: DataFn) -> ClientApp:
    """A ClientApp whose nodes are federation clients (client id = the node's ``partition-id``).

    Args:
        model_fn: ``model_fn(context) -> (model, batch_loss)``: the model at the federation's initial weights (the
            same on every party: seed any random adapter initialisation) and ``batch_loss(model, batch)``, the loss
            of one collated batch. Called once per process and run.
        data_fn: ``data_fn(context, client_id)`` returns that client's :class:`ClientData` (cached per process).

    Both are pickled with the app by the simulation engine: use module-level functions, not closures over
    large objects.
    """
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return _query(message, context)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _train(message, context, model_fn, data_fn)

    return app


# ---------------------------------------------------------------------------------------------------- server
@dataclass
class _Exchange:
    """What one round's train messages brought back, per client id."""

    bytes_down: dict[int, int] = field(default_factory=dict)
    reports: dict[int, bytes] = field(default_factory=dict)
    work: dict[int, dict[str, int]] = field(default_factory=dict)
    unanswered: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    resynced: dict[int, int] = field(default_factory=dict)


class FlowerFederation:
    """The strategy of a :func:`make_server_app` ServerApp: runs a :class:`FederatedServer` over a Flower Grid.

    A plain object (no Flower base class): it owns the federation's server, the node ↔ client map, and optionally
    a replica that replays the log for evaluation and the final model; its round records are the simulator's
    (same keys and meaning, plus ``unreachable``, ``unanswered``, ``failed`` and ``resynced``).

    Args:
        config: the federation's settings (the clients build theirs from the same run config).
        replica: a :class:`ZOClient` at the initial weights that replays every round's records (needed for
            ``evaluate`` and to hold the final model); ``probe`` is one collated batch for its first replay.
        evaluate: ``evaluate(model) -> metrics`` on the replica, every ``config.eval_every`` rounds and at the end.
        output_dir: where ``federation_state.json`` (every round; a restarted server resumes from it) and
            ``federation_results.json`` go.
        round_timeout: seconds to wait for the sampled clients' replies (None: wait for all); late ones are dropped.
        wait_for_nodes: seconds to wait at the start for nodes covering ``min_nodes`` clients (default: all).
        on_round_end: called with each round's record.
    """

    def __init__(self, config: FederationConfig, *, replica: ZOClient | None = None, probe: Batch | None = None,
                 evaluate: Evaluate | None = None, output_dir: str | Path | None = None,
                 run_info: Mapping[str, Any] | None = None, resume: bool = True, round_timeout: float | None = None,
                 wait_for_nodes: float = 120.0, min_nodes: int | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 on_round_end: Callable[[dict[str, Any]], None] | None = None) -> None:
        if (replica is None) != (probe is None):
            raise ValueError("replica and probe go together: the replica's first replay traces the probe batch")
        if evaluate is not None and replica is None:
            raise ValueError("evaluate needs a replica: the server holds no model otherwise")
        self.config = config
        self.server = FederatedServer(config, max_message_bytes)
        self.replica, self.probe, self.evaluate = replica, probe, evaluate
        self.output = Path(output_dir) if output_dir is not None else None
        self.run_info = dict(run_info or {})
        self.resume = resume
        self.round_timeout = round_timeout
        self.wait_for_nodes = wait_for_nodes
        self.min_nodes = config.num_clients if min_nodes is None else min_nodes
        self.on_round_end = on_round_end
        self.nodes: dict[int, int] = {}  # client id → node id
        self.ignored: set[int] = set()  # nodes of another federation size or protocol version
        self.result = SimulationResult()

    # ------------------------------------------------------------------------------------------ nodes
    def discover(self, grid: GridLike) -> None:
        """Map new nodes to client ids (one query message each) and forget nodes that left."""
        alive = set(grid.get_node_ids())
        self.nodes = {k: n for k, n in self.nodes.items() if n in alive}
        new = sorted(alive - set(self.nodes.values()) - self.ignored)
        if not new:
            return
        queries = [Message(RecordDict(), node, MessageType.QUERY, group_id=DISCOVERY_GROUP) for node in new]
        for reply in grid.send_and_receive(queries, timeout=self.round_timeout or 60.0):
            node = reply.metadata.src_node_id
            record = reply.content.get(RECORD) if reply.has_content() else None
            if not isinstance(record, ConfigRecord):
                continue  # it failed or is not ours yet: asked again next round
            try:
                client_id, size = int(record["partition-id"]), int(record["num-partitions"])  # type: ignore[arg-type]
                version = int(record["protocol-version"])  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError) as err:
                logger.warning("node %d ignored: its answer to the query is malformed (%r)", node, err)
                self.ignored.add(node)
                continue
            if version != PROTOCOL_VERSION or size != self.config.num_clients or not 0 <= client_id < size:
                logger.warning("node %d ignored: partition %d of %d, protocol %d (this federation: %d clients, "
                               "protocol %d)", node, client_id, size, version, self.config.num_clients,
                               PROTOCOL_VERSION)
                self.ignored.add(node)
            elif client_id in self.nodes:
                # Not ignored for good: a restarted SuperNode gets a new node id while the SuperLink still lists
                # the old one for a while; it is asked again next round and takes over once the old one is gone.
                logger.warning("node %d: client %d is node %d for now", node, client_id, self.nodes[client_id])
            else:
                self.nodes[client_id] = node

    def _wait_for_nodes(self, grid: GridLike) -> None:
        deadline = time.monotonic() + self.wait_for_nodes
        while True:
            self.discover(grid)  # the node list can be empty right after start: poll
            if len(self.nodes) >= self.min_nodes or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        logger.info("clients on nodes: %s", dict(sorted(self.nodes.items())))
        if len(self.nodes) < self.min_nodes:
            logger.warning("only %d of %d clients connected after %.0f s; the missing ones drop out of their rounds",
                           len(self.nodes), self.min_nodes, self.wait_for_nodes)

    # ------------------------------------------------------------------------------------------ rounds
    def _exchange(self, grid: GridLike, round_id: int, active: list[int]) -> _Exchange:
        """Send the round's instructions and collect the reports, resending once to clients that resync."""
        out = _Exchange()
        pending = {k: encode(self.server.instruction(k)) for k in active}
        for attempt in range(2):
            messages = [Message(RecordDict({RECORD: ConfigRecord({MESSAGE: data})}), self.nodes[k], MessageType.TRAIN,
                                group_id=str(round_id), ttl=self.round_timeout) for k, data in pending.items()]
            replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=self.round_timeout)}
            resend: dict[int, bytes] = {}
            for k, data in pending.items():
                out.bytes_down[k] = out.bytes_down.get(k, 0) + len(data)
                reply = replies.get(self.nodes[k])
                if reply is None:
                    out.unanswered.append(k)
                    continue
                if reply.has_error():
                    out.failed[k] = reply.error.reason
                    continue
                record = reply.content.get(RECORD)
                if isinstance(record, ConfigRecord) and RESYNC in record and attempt == 0:
                    after = int(record[RESYNC])  # type: ignore[arg-type]
                    out.resynced[k] = after
                    try:
                        resend[k] = encode(self.server.instruction(k, replay_after=after))
                    except ProtocolError as err:
                        out.failed[k] = str(err)
                    continue
                try:
                    out.reports[k] = _payload(reply)
                except ProtocolError as err:
                    out.failed[k] = f"no report: {err}"
                    continue
                work = reply.content.get(WORK)
                try:  # accounting only, not protocol: a malformed record costs the round's FLOP count, no more
                    out.work[k] = {name: int(v) for name, v in work.items()}  # type: ignore[union-attr,call-overload]
                except (AttributeError, TypeError, ValueError):
                    logger.warning("round %d: client %d sent no usable work record", round_id, k)
            pending = resend
            if not pending:
                break
        return out

    def _accept(self, exchange: _Exchange, round_id: int) -> dict[int, str]:
        """Hand the reports to the server in client order; return the rejected ones and why."""
        rejected: dict[int, str] = {}
        for k in sorted(exchange.reports):
            data = exchange.reports[k]
            try:
                # The server checks the report; only the transport knows which node sent it.
                claimed = decode(data, expect=ClientReport, max_bytes=self.server.max_message_bytes)
                if claimed.client_id != k:
                    raise ProtocolError(f"node {self.nodes[k]} (client {k}) sent a report for client "
                                        f"{claimed.client_id}")
                self.server.receive(data)
            except ProtocolError as err:
                rejected[k] = str(err)
                logger.warning("round %d: report of client %d rejected: %s", round_id, k, err)
        return rejected

    def _replay(self, records: list[LogRecord], through_round: int) -> None:
        if self.replica is not None and self.probe is not None:
            self.replica.replay(records, through_round, self.server.settings, self.probe)

    def run_round(self, grid: GridLike, round_id: int, spent: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.discover(grid)
        sampled, dropped = self.server.open_round(round_id)
        unreachable = [k for k in sampled if k not in dropped and k not in self.nodes]
        active = [k for k in sampled if k not in dropped and k in self.nodes]
        exchange = self._exchange(grid, round_id, active)
        rejected = self._accept(exchange, round_id)
        accepted = self.server.accepted_reports()
        self._replay(self.server.finish_round(), round_id)

        work = exchange.work.values()
        round_flops = sum(w.get("flops_block1", 0) + w.get("flops_block2", 0) for w in work)
        record: dict[str, Any] = {
            "round": round_id, "sampled": sampled, "dropped": dropped, "rejected": rejected,
            "unreachable": unreachable, "unanswered": exchange.unanswered, "failed": exchange.failed,
            "resynced": {str(k): v for k, v in exchange.resynced.items()},
            "bytes_down": {str(k): n for k, n in exchange.bytes_down.items()},
            "bytes_up": {str(k): len(b) for k, b in exchange.reports.items()},
            "forwards_block1": sum(w.get("forwards_block1", 0) for w in work),
            "forwards_block2": sum(w.get("forwards_block2", 0) for w in work),
            "flops": round_flops, "cumulative_flops": spent + round_flops,
            "train_loss": sum(r.loss_mean for r in accepted) / len(accepted) if accepted else None,
            "seconds": time.perf_counter() - started,
        }
        if self.server.clipped:  # outlier reports scaled down or counts capped, as in the simulation
            record["clipped"] = {str(k): v for k, v in self.server.clipped.items()}
        return record

    def run(self, grid: GridLike) -> SimulationResult:
        """Run the rounds left (resuming from ``output_dir``'s state file when it matches) and return the records."""
        config, server = self.config, self.server
        fingerprint = _fingerprint(config, self.run_info)
        if self.output is not None and self.resume and (self.output / STATE_FILE).is_file():
            saved = read_state(self.output / STATE_FILE)  # verifies the checksum chain first
            if saved["fingerprint"] != fingerprint:
                raise ValueError(f"{self.output / STATE_FILE} belongs to a different run; use another output dir")
            restore_server(server, saved, self.output / STATE_FILE)
            self.result.rounds = saved["rounds"]
            self._replay(server.log, server.completed_round)
        self._wait_for_nodes(grid)

        spent = self.result.total_flops
        for round_id in range(server.completed_round + 1, config.rounds):
            if config.budget_spent(spent):
                break
            record = self.run_round(grid, round_id, spent)
            spent = record["cumulative_flops"]
            if self.evaluate is not None and config.evaluation_due(round_id, spent):
                record["eval"] = dict(self.evaluate(self.replica.model))  # type: ignore[union-attr]
            self.result.rounds.append(record)
            logger.info("round %d: sampled %s, reports from %s, dropped %s, unreachable %s, unanswered %s, failed %s, "
                        "rejected %s, resynced %s, train loss %s%s", round_id, record["sampled"],
                        sorted(int(k) for k in record["bytes_up"]), record["dropped"], record["unreachable"],
                        record["unanswered"], sorted(record["failed"]), sorted(record["rejected"]),
                        record["resynced"], record["train_loss"],
                        f", eval {record['eval']}" if "eval" in record else "")
            if self.output is not None:
                write_state(self.output / STATE_FILE, fingerprint, server.state_dict(), self.result.rounds)
            if self.on_round_end is not None:
                self.on_round_end(record)

        evaluated = [r for r in self.result.rounds if "eval" in r]
        self.result.final_metrics = dict(evaluated[-1]["eval"]) if evaluated else {}
        if self.output is not None:
            write_results(self.output, config, self.result, self.run_info)
        return self.result


def make_server_app(build: Callable[[Context], FlowerFederation],
                    on_done: Callable[[FlowerFederation, Context], None] | None = None) -> ServerApp:
    """A ServerApp that runs ``build(context)`` (typically from ``context.run_config``) over the grid.

    ``on_done(federation, context)`` runs after the last round (save the replica, print checksums, …).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        federation = build(context)
        federation.run(grid)
        if on_done is not None:
            on_done(federation, context)

    return app


__all__ = [
    "RECORD",
    "FlowerFederation",
    "GridLike",
    "client_id_of",
    "federation_config",
    "make_client_app",
    "make_server_app",
]
