"""Real federations on Flower, speaking the same seed+scalar protocol as the accelerate simulator.

The transport is Flower's; everything else is ours and shared with :func:`~hf_fedzo.federation.simulate_federation`:
the server side is a :class:`~hf_fedzo.federation.FederatedServer` (sampling, simulated drop-outs, validation,
aggregation, the append-only log), the client side a :class:`~hf_fedzo.federation.ZOClient` (replay, local ZO
steps), and every message is our versioned :func:`~hf_fedzo.federation.encode` bytes carried as one ``bytes``
value of a ``ConfigRecord``. With the same config and seeds a Flower federation therefore produces the same log,
and every replica that replays it — the server's, each client's, the simulator's — the same weights, bit for bit.

Modules: :mod:`.config` (run config → ``FederationConfig``, message keys), :mod:`.client` (the ClientApp and its
per-process replica), :mod:`.server` (the strategy: an :class:`~hf_fedzo.federation.Exchange` for
:func:`~hf_fedzo.federation.run_rounds`, node discovery, resync).

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
no state (a new or restarted SuperNode) starts from the initial weights (round -1). A node whose process plays
only its own client may set ``keep-full-precision = false`` in its node config: with the run's ``frozen-dtype`` it
then drops the full-precision weights of the layers it does not train (and fails a later round that would train
them).

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
    import flwr.app  # noqa: F401
except ImportError as err:  # the core install has no flwr; say how to get it
    raise ImportError("hf_fedzo.integrations.flower needs Flower (flwr 1.41): pip install 'hf-fedzo[flower]'") from err

from hf_fedzo.integrations.flower.client import client_id_of, make_client_app, reset_process_cache
from hf_fedzo.integrations.flower.config import (
    KEEP_FULL_PRECISION,
    MESSAGE,
    RECORD,
    RESYNC,
    WORK,
    federation_config,
    logger,
)
from hf_fedzo.integrations.flower.server import FlowerFederation, GridLike, make_server_app

__all__ = [
    "KEEP_FULL_PRECISION",
    "MESSAGE",
    "RECORD",
    "RESYNC",
    "WORK",
    "FlowerFederation",
    "GridLike",
    "client_id_of",
    "federation_config",
    "logger",
    "make_client_app",
    "make_server_app",
    "reset_process_cache",
]
