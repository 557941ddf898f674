"""hf_fedzo: federated zeroth-order fine-tuning (FedSPZO) for transformers, PEFT and accelerate."""

__version__ = "0.1.0.dev0"
