"""hf_fedzo: federated zeroth-order fine-tuning (FedSPZO) for transformers, PEFT and accelerate."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# Imported lazily so `hf-fedzo --help` and `python -m hf_fedzo` start without loading torch.
_EXPORTS = {
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
    "SeedScope",
    "ZOConfig",
    "ZOEstimator",
    "ZOOptimizer",
    "ZOSettings",
    "ZOSplitTrainer",
    "ZOUpdate",
    "from_trajectory",
    "load_trajectory",
    "push_run",
    "save_trajectory",
]

if TYPE_CHECKING:
    from hf_fedzo.config import ZOConfig
    from hf_fedzo.engine import SeedScope, ZOEstimator, ZOOptimizer, ZOSettings, ZOUpdate
    from hf_fedzo.hub import push_run
    from hf_fedzo.trainer import ZOSplitTrainer
    from hf_fedzo.trajectory import from_trajectory, load_trajectory, save_trajectory


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hf_fedzo' has no attribute {name!r}")
