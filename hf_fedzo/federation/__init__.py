"""Federated zeroth-order fine-tuning: clients exchange (seed, scalar) pairs, never weights.

Layers: :mod:`protocol` (typed messages, wire format) ← :mod:`aggregation` / :mod:`server` / :mod:`client`
(which runs the engine's ``ZOEstimator``) ← :mod:`rounds` (the one round loop; :mod:`records` its typed
records, :mod:`results` its only writer) ← the exchanges of :mod:`simulation` (accelerate) and :mod:`fedavg`
(first-order baseline); Flower's is ``hf_fedzo.integrations.flower``. Nothing here imports
``transformers.Trainer``.
"""

from hf_fedzo.federation.aggregation import AGGREGATORS, aggregate_round, register_aggregator
from hf_fedzo.federation.allocation import ALLOCATIONS, AllocationError, allocate, register_allocation
from hf_fedzo.federation.budgets import (
    BUDGET_PROFILES,
    ActiveSet,
    ClientBudget,
    LayerCosts,
    budget_from_mapping,
    resolve_budgets,
)
from hf_fedzo.federation.client import Batch, BatchLoss, ZOClient
from hf_fedzo.federation.client_lr import CLIENT_LR_POLICIES, register_client_lr_policy
from hf_fedzo.federation.clients import ClientData, task_batch_loss, task_clients
from hf_fedzo.federation.config import METHODS, FederationConfig, Method
from hf_fedzo.federation.fedavg import simulate_fedavg
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
from hf_fedzo.federation.records import ClientRecord, Exchanged, FederationResult, RoundRecord
from hf_fedzo.federation.results import RESULTS_FILE, RoundPlot, federation_figures, plot_rounds, write_results
from hf_fedzo.federation.rounds import STATE_FILE, Exchange, accept_reports, run_fingerprint, run_rounds
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.federation.simulation import AccelerateExchange, simulate_federation

__all__ = [
    "AGGREGATORS",
    "ALLOCATIONS",
    "BUDGET_PROFILES",
    "CLIENT_LR_POLICIES",
    "MAX_MESSAGE_BYTES",
    "METHODS",
    "PARTITIONERS",
    "PROTOCOL_VERSION",
    "RESULTS_FILE",
    "STATE_FILE",
    "AccelerateExchange",
    "ActiveSet",
    "AllocationError",
    "Batch",
    "BatchLoss",
    "ClientBudget",
    "ClientData",
    "ClientRecord",
    "ClientReport",
    "Exchange",
    "Exchanged",
    "FederatedServer",
    "FederationConfig",
    "FederationResult",
    "LayerCosts",
    "LogRecord",
    "Method",
    "ProtocolError",
    "RoundInstruction",
    "RoundPlot",
    "RoundRecord",
    "RoundSettings",
    "ZOClient",
    "accept_reports",
    "aggregate_round",
    "allocate",
    "budget_from_mapping",
    "decode",
    "describe_partition",
    "encode",
    "federation_figures",
    "partition_dataset",
    "plot_rounds",
    "register_aggregator",
    "register_allocation",
    "register_client_lr_policy",
    "register_partitioner",
    "resolve_budgets",
    "run_fingerprint",
    "run_rounds",
    "simulate_fedavg",
    "simulate_federation",
    "task_batch_loss",
    "task_clients",
    "write_results",
]
