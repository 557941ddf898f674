"""Serialized bytes per client per round: the seed+scalar protocol vs LoRA FedAvg vs full-model FedAvg.

Every number is the length of an actually serialized message: our ``ClientReport`` / ``RoundInstruction``
(``hf_fedzo.federation.protocol``) and safetensors payloads of the tensors FedAvg would move (the
trainable LoRA tensors, or the whole state dict), on the SmolLM2-135M shape.

    python benchmarks/communication.py
"""

from __future__ import annotations

import argparse

import numpy as np
from safetensors.torch import save as save_tensors

from benchmarks.smollm2_shape import smollm2_shaped
from hf_fedzo.engine import SeedScope, ZOUpdate
from hf_fedzo.federation import ClientReport, FederationConfig, LogRecord, RoundInstruction, encode


def zo_bytes(config: FederationConfig) -> tuple[int, int]:
    """(upload, download) of one client in one round, the client having synced the round before."""
    settings = config.round_settings()
    scalars = np.random.default_rng(0).normal(size=settings.scalar_shape).astype(np.float32)
    upload = encode(ClientReport(1, 0, 1000, scalars, 0.7, 0.6))
    records = tuple(LogRecord(0, ZOUpdate((SeedScope(config.seed, 0).step_seed(t),),
                                          (tuple(map(tuple, scalars[t].tolist())),), settings.lr, 0.0))
                    for t in range(settings.local_steps))
    download = encode(RoundInstruction(1, 0, config.seed, 0, settings, 0, records))
    return len(upload), len(download)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--local_steps", type=int, default=4)
    args = parser.parse_args()

    lora = smollm2_shaped(lora_r=args.lora_r)
    adapter = save_tensors({n: p.detach().contiguous() for n, p in lora.named_parameters() if p.requires_grad})
    full = save_tensors({n: p.detach().contiguous() for n, p in smollm2_shaped().state_dict().items()
                         if n != "lm_head.weight"})  # tied to the embeddings: sent once
    rows = {"FedSPZO P1=1 P2=4": FederationConfig(local_steps=args.local_steps, zo_p1=1, zo_p2=4),
            "federated MeZO": FederationConfig(method="mezo", local_steps=args.local_steps)}
    print(f"SmolLM2-135M shape, LoRA r={args.lora_r} on q_proj/v_proj, {args.local_steps} local steps per round\n")
    print(f"{'method':<22} {'up B':>12} {'down B':>12}")
    measured = {name: zo_bytes(config) for name, config in rows.items()}
    for name, (up, down) in measured.items():
        print(f"{name:<22} {up:>12,} {down:>12,}")
    print(f"{'LoRA FedAvg':<22} {len(adapter):>12,} {len(adapter):>12,}")
    print(f"{'full-model FedAvg':<22} {len(full):>12,} {len(full):>12,}")
    up, down = measured["FedSPZO P1=1 P2=4"]
    print(f"\nratio LoRA FedAvg / FedSPZO (up + down): {2 * len(adapter) / (up + down):,.0f}x")
    print(f"ratio full-model FedAvg / FedSPZO (up + down): {2 * len(full) / (up + down):,.0f}x")


if __name__ == "__main__":
    main()
