"""The ClientApp: each SuperNode is one federation client (its ``partition-id``) answering round instructions.

Between rounds a client keeps only its last synced trainable tensors and the round they are synced through, in
Flower's per-node ``context.state``; each process keeps one model replica and loads the client's tensors into
it (the module-level cache below), so a simulation holds one model per Ray actor, not one per client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from hf_fedzo.engine import trainable_tensors
from hf_fedzo.federation import (
    PROTOCOL_VERSION,
    BatchLoss,
    ClientData,
    ProtocolError,
    RoundInstruction,
    ZOClient,
    decode,
    encode,
)
from hf_fedzo.integrations.flower.config import (
    BUDGET_KEYS,
    KEEP_FULL_PRECISION,
    MESSAGE,
    RECORD,
    RESYNC,
    WORK,
    logger,
    payload,
)

ModelFn = Callable[[Context], tuple[nn.Module, BatchLoss]]
DataFn = Callable[[Context, int], ClientData]


def client_id_of(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) of this SuperNode: its client id and the federation's size."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError("this SuperNode has no partition: start it with --node-config "
                         "'partition-id=K num-partitions=N' (N = num-clients, 0 <= K < N)") from err


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


def reset_process_cache() -> None:
    """Forget this process's replica and client data, as a fresh ``flwr-clientapp`` process would start."""
    _REPLICA.clear()
    _DATA.clear()


def _replica(context: Context, model_fn: ModelFn) -> _Replica:
    if _REPLICA and _REPLICA[0].run_id == context.run_id:
        return _REPLICA[0]
    reset_process_cache()  # a new run: free the old model before loading the next one
    keep = context.node_config.get(KEEP_FULL_PRECISION, True)
    if not isinstance(keep, bool):
        raise ValueError(f"node config {KEEP_FULL_PRECISION} must be true or false (got {keep!r})")
    model, batch_loss = model_fn(context)
    initial = {name: t.detach().to("cpu", copy=True) for name, t in trainable_tensors(model).items()}
    _REPLICA.append(_Replica(context.run_id, ZOClient(model, batch_loss, keep_full_precision=keep), initial))
    return _REPLICA[0]


@torch.no_grad()
def _load_client(replica: _Replica, context: Context, client_id: int) -> int:
    """Put ``client_id``'s synced tensors in the replica; return the round they are synced through."""
    record = context.state.get(RECORD)
    held = int(record["round"]) if isinstance(record, ConfigRecord) and "round" in record else -1
    if replica.holds != (client_id, held):
        tensors = load_tensors(record["weights"]) if held >= 0 else replica.initial  # type: ignore[index,arg-type]
        for name, parameter in trainable_tensors(replica.client.model).items():
            parameter.copy_(tensors[name])
        replica.holds = (client_id, held)
    replica.client.synced_round = held
    return held


def _save_client(replica: _Replica, context: Context, client_id: int) -> None:
    held = replica.client.synced_round
    tensors = trainable_tensors(replica.client.model)
    weights = save_tensors({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()})
    context.state[RECORD] = ConfigRecord({"round": held, "weights": weights})
    replica.holds = (client_id, held)


def _query(message: Message, context: Context) -> Message:
    client_id, num_clients = client_id_of(context)
    budget = {key: float(context.node_config[key]) for key in BUDGET_KEYS if key in context.node_config}
    return Message(RecordDict({RECORD: ConfigRecord({"partition-id": client_id, "num-partitions": num_clients,
                                                     "protocol-version": PROTOCOL_VERSION, **budget})}),
                   reply_to=message)


def _train(message: Message, context: Context, model_fn: ModelFn, data_fn: DataFn) -> Message:
    client_id, _ = client_id_of(context)
    instruction = decode(payload(message), expect=RoundInstruction)
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
    peak = {} if replica.client.peak_memory_mib is None else {"peak_memory_mib": replica.client.peak_memory_mib}
    return Message(RecordDict({RECORD: ConfigRecord({MESSAGE: encode(report)}),
                               WORK: MetricRecord(work.to_dict() | peak)}), reply_to=message)


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
