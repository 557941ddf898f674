"""The ServerApp's strategy: a :class:`~hf_fedzo.federation.FederatedServer` run over a Flower Grid.

:class:`FlowerFederation` is the Flower :class:`~hf_fedzo.federation.Exchange` of the one round loop
(:func:`~hf_fedzo.federation.run_rounds`): node discovery, the train messages of a round with one resync
resend, and the optional server-side replica that replays the log for evaluation and the final model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from hf_fedzo.engine import WorkCounters
from hf_fedzo.federation import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Batch,
    ClientBudget,
    ClientRecord,
    Exchange,
    Exchanged,
    FederatedServer,
    FederationConfig,
    FederationResult,
    LogRecord,
    ProtocolError,
    RoundRecord,
    ZOClient,
    budget_from_mapping,
    encode,
    run_rounds,
)
from hf_fedzo.integrations.flower.config import (
    BUDGET_KEYS,
    DISCOVERY_GROUP,
    MESSAGE,
    RECORD,
    RESYNC,
    WORK,
    logger,
    payload,
)

Evaluate = Callable[[Any], Mapping[str, float]]


class GridLike(Protocol):
    """What the strategy uses of a Flower ``Grid`` (any Grid has it; tests pass an in-process stand-in)."""

    def get_node_ids(self) -> Iterable[int]: ...

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]: ...


class FlowerFederation(Exchange):
    """The strategy of a :func:`make_server_app` ServerApp: runs a :class:`FederatedServer` over a Flower Grid.

    A plain object (no Flower base class): it owns the federation's server, the node ↔ client map, and optionally
    a replica that replays the log for evaluation and the final model; its round records are the simulator's
    :class:`~hf_fedzo.federation.RoundRecord` (with ``unreachable``, ``unanswered``, ``failed`` and ``resynced``
    filled in).

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
                 on_round_end: Callable[[RoundRecord], None] | None = None) -> None:
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
        self.reported_budgets: dict[int, ClientBudget] = {}  # client id → the budget its node reported
        self.result = FederationResult()
        self.grid: GridLike | None = None

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
            elif not self._budget_accepted(node, client_id, record):
                self.ignored.add(node)
            elif client_id in self.nodes:
                # Not ignored for good: a restarted SuperNode gets a new node id while the SuperLink still lists
                # the old one for a while; it is asked again next round and takes over once the old one is gone.
                logger.warning("node %d: client %d is node %d for now", node, client_id, self.nodes[client_id])
            else:
                self.nodes[client_id] = node

    def _budget_accepted(self, node: int, client_id: int, record: ConfigRecord) -> bool:
        """Keep the budget a node reports (checked like a budgets file's entry; a malformed one ignores the node)."""
        values = {name: record[key] for key, name in BUDGET_KEYS.items() if key in record}
        if not values:
            return True
        try:
            self.reported_budgets[client_id] = budget_from_mapping(values, f"node {node} (client {client_id})")
        except ValueError as err:
            logger.warning("node %d ignored: %s", node, err)
            return False
        return True

    def start(self, server: FederatedServer) -> None:
        """Wait up to ``wait_for_nodes`` seconds for nodes covering ``min_nodes`` clients; a heterogeneous federation
        then measures the layer costs on the replica and takes the budgets the nodes reported."""
        assert self.grid is not None
        deadline = time.monotonic() + self.wait_for_nodes
        while True:
            self.discover(self.grid)  # the node list can be empty right after start: poll
            if len(self.nodes) >= self.min_nodes or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        logger.info("clients on nodes: %s", dict(sorted(self.nodes.items())))
        if len(self.nodes) < self.min_nodes:
            logger.warning("only %d of %d clients connected after %.0f s; the missing ones drop out of their rounds",
                           len(self.nodes), self.min_nodes, self.wait_for_nodes)
        if server.config.heterogeneous and server.costs is None:
            if self.replica is None or self.probe is None:
                raise ValueError("a heterogeneous federation (block_allocation / client_budgets) over Flower needs the "
                                 "server replica (replica=, probe=) to measure the model's layer costs")
            server.set_costs(self.replica.layer_costs(server.settings, self.probe), self.reported_budgets)

    # ------------------------------------------------------------------------------------------ rounds
    def exchange(self, server: FederatedServer, round_id: int, active: Sequence[int]) -> Exchanged:
        """Send the round's instructions and collect the reports, resending once to clients that resync."""
        assert self.grid is not None
        grid = self.grid
        self.discover(grid)
        out = Exchanged(unreachable=[k for k in active if k not in self.nodes])
        clients = {k: ClientRecord(k) for k in active if k in self.nodes}
        pending = {k: encode(server.instruction(k)) for k in clients}
        for attempt in range(2):
            messages = [Message(RecordDict({RECORD: ConfigRecord({MESSAGE: data})}), self.nodes[k], MessageType.TRAIN,
                                group_id=str(round_id), ttl=self.round_timeout) for k, data in pending.items()]
            replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=self.round_timeout)}
            resend: dict[int, bytes] = {}
            for k, data in pending.items():
                clients[k].bytes_down += len(data)
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
                        resend[k] = encode(server.instruction(k, replay_after=after))
                    except ProtocolError as err:
                        out.failed[k] = str(err)
                    continue
                try:
                    clients[k].report = payload(reply)
                    clients[k].bytes_up = len(clients[k].report)  # type: ignore[arg-type]
                except ProtocolError as err:
                    out.failed[k] = f"no report: {err}"
                    continue
                work = reply.content.get(WORK)
                try:  # accounting only, not protocol: a malformed record costs the round's FLOP count, no more
                    clients[k].work = WorkCounters.from_mapping(work)  # type: ignore[arg-type]
                    peak = work.get("peak_memory_mib")  # type: ignore[union-attr]
                    clients[k].peak_memory_mib = float(peak) if isinstance(peak, int | float) else None
                except (AttributeError, TypeError, ValueError):
                    logger.warning("round %d: client %d sent no usable work record", round_id, k)
            pending = resend
            if not pending:
                break
        out.clients = list(clients.values())
        return out

    def apply(self, records: Sequence[LogRecord], through_round: int) -> None:
        if self.replica is not None and self.probe is not None:
            self.replica.replay(records, through_round, self.server.settings, self.probe)

    def announce(self, line: str) -> None:
        logger.info(line)  # the simulator's per-round line, in Flower's log (`flwr run --stream`, SuperLink)

    def round_done(self, record: RoundRecord) -> None:
        # Which client did what: at INFO when something went wrong in the round, else only in a debug log.
        faults = (record.dropped or record.unreachable or record.unanswered or record.failed or record.rejected
                  or record.resynced)
        logger.log(logging.INFO if faults else logging.DEBUG,
                   "round %d: sampled %s, reports from %s, dropped %s, unreachable %s, unanswered %s, failed %s, "
                   "rejected %s, resynced %s", record.round, record.sampled, sorted(record.bytes_up),
                   record.dropped, record.unreachable, record.unanswered, sorted(record.failed),
                   sorted(record.rejected), record.resynced)

    def run(self, grid: GridLike) -> FederationResult:
        """Run the rounds left (resuming from ``output_dir``'s state file when it matches) and return the records."""
        self.grid = grid
        evaluate = self.evaluate
        model = self.replica.model if self.replica is not None else None
        self.result = run_rounds(self.server, self, evaluate=None if evaluate is None else lambda: evaluate(model),
                                 output_dir=self.output, resume=self.resume, run_info=self.run_info,
                                 on_round_end=self.on_round_end)
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
