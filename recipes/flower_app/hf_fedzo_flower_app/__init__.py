"""hf_fedzo on Flower: a ServerApp and a ClientApp that fine-tune a causal LM with federated ZO (FedSPZO)."""
