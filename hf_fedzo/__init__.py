"""hf_fedzo: federated zeroth-order fine-tuning (FedSPZO) for transformers, PEFT and accelerate.

Federated: ``simulate_federation(model, batch_loss, clients, FederationConfig(...))`` (clients from
``task_clients``); central: ``ZOSplitTrainer(model, ZOConfig(...), ...)``. See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from hf_fedzo.known_warnings import install_log_filters

# OpenMP threads that finish a parallel region early spin while they wait for the others. On a core shared with
# another busy process the spinning steals the time slices the slow thread needs: the demo's step with 2 threads
# took 4.6 s alone either way, and beside one busy loop 10.2 s by default, 7.1 s with passive waits
# (`python -m benchmarks.threads`; README "Threads and progress"). OpenMP reads this once, when torch
# loads it, so it only takes effect when hf_fedzo is imported before torch (the recipes and the CLI do); an
# explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0.dev0"

# Before anything imports peft (and with it bitsandbytes, which logs a harmless warning on import).
install_log_filters()

# Imported lazily so `hf-fedzo --help` and `python -m hf_fedzo` start without loading torch.
_EXPORTS = {
    "FederatedServer": "hf_fedzo.federation",
    "FederationConfig": "hf_fedzo.federation",
    "FederationResult": "hf_fedzo.federation",
    "RoundRecord": "hf_fedzo.federation",
    "ZOClient": "hf_fedzo.federation",
    "run_rounds": "hf_fedzo.federation",
    "simulate_fedavg": "hf_fedzo.federation",
    "simulate_federation": "hf_fedzo.federation",
    "task_batch_loss": "hf_fedzo.federation",
    "task_clients": "hf_fedzo.federation",
    "ZOArguments": "hf_fedzo.engine",
    "ZOConfig": "hf_fedzo.config",
    "ZOSplitTrainer": "hf_fedzo.trainer",
    "SeedScope": "hf_fedzo.engine",
    "ZOEstimator": "hf_fedzo.engine",
    "ZOOptimizer": "hf_fedzo.engine",
    "ZOSettings": "hf_fedzo.engine",
    "ZOUpdate": "hf_fedzo.engine",
    "push_run": "hf_fedzo.hub",
    "from_trajectory": "hf_fedzo.trajectory",
    "load_trajectory": "hf_fedzo.trajectory",
    "save_trajectory": "hf_fedzo.trajectory",
}

__all__ = [
    "FederatedServer",
    "FederationConfig",
    "FederationResult",
    "RoundRecord",
    "SeedScope",
    "ZOArguments",
    "ZOClient",
    "ZOConfig",
    "ZOEstimator",
    "ZOOptimizer",
    "ZOSettings",
    "ZOSplitTrainer",
    "ZOUpdate",
    "from_trajectory",
    "load_trajectory",
    "push_run",
    "run_rounds",
    "save_trajectory",
    "simulate_fedavg",
    "simulate_federation",
    "task_batch_loss",
    "task_clients",
]

if TYPE_CHECKING:
    from hf_fedzo.config import ZOConfig
    from hf_fedzo.engine import SeedScope, ZOArguments, ZOEstimator, ZOOptimizer, ZOSettings, ZOUpdate
    from hf_fedzo.federation import (
        FederatedServer,
        FederationConfig,
        FederationResult,
        RoundRecord,
        ZOClient,
        run_rounds,
        simulate_fedavg,
        simulate_federation,
        task_batch_loss,
        task_clients,
    )
    from hf_fedzo.hub import push_run
    from hf_fedzo.trainer import ZOSplitTrainer
    from hf_fedzo.trajectory import from_trajectory, load_trajectory, save_trajectory


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hf_fedzo' has no attribute {name!r}")
