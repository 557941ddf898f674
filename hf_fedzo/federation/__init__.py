"""Federated zeroth-order fine-tuning: clients exchange (seed, scalar) pairs, never weights.

Layers: :mod:`protocol` (typed messages, wire format) ← :mod:`aggregation` / :mod:`server` /
:mod:`client` (which runs the engine's ``ZOEstimator``) ← :mod:`simulation` (accelerate). Nothing here
imports ``transformers.Trainer``.
"""

from hf_fedzo.federation.aggregation import AGGREGATORS, aggregate_round
from hf_fedzo.federation.client import LocalWork, ZOClient
from hf_fedzo.federation.config import METHODS, FederationConfig
from hf_fedzo.federation.partition import PARTITIONERS, describe_partition, partition_dataset, register_partitioner
from hf_fedzo.federation.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ClientReport,
    LogRecord,
    ProtocolError,
    RoundInstruction,
    RoundSettings,
    decode,
    encode,
)
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.federation.simulation import ClientData, SimulationResult, simulate_federation

__all__ = [
    "AGGREGATORS",
    "MAX_MESSAGE_BYTES",
    "METHODS",
    "PARTITIONERS",
    "PROTOCOL_VERSION",
    "ClientData",
    "ClientReport",
    "FederatedServer",
    "FederationConfig",
    "LocalWork",
    "LogRecord",
    "ProtocolError",
    "RoundInstruction",
    "RoundSettings",
    "SimulationResult",
    "ZOClient",
    "aggregate_round",
    "decode",
    "describe_partition",
    "encode",
    "partition_dataset",
    "register_partitioner",
    "simulate_federation",
]
