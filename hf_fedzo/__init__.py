"""hf_fedzo: federated zeroth-order fine-tuning (FedSPZO) for transformers, PEFT and accelerate."""

from hf_fedzo.config import ZOConfig
from hf_fedzo.engine import SeedScope, ZOEstimator, ZOOptimizer, ZOSettings, ZOUpdate
from hf_fedzo.trainer import ZOSplitTrainer

__version__ = "0.1.0.dev0"

__all__ = ["SeedScope", "ZOConfig", "ZOEstimator", "ZOOptimizer", "ZOSettings", "ZOSplitTrainer", "ZOUpdate"]
