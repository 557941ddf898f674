"""One Byzantine client among 4, 5 or 8: how far each aggregation rule lets it move the weights.

Each round every sampled client reports the same kind of projected gradients (a shared true gradient plus
noise, seeded); the attacker multiplies its honest report by 1e6. The reports go through the real
``FederatedServer`` (validation, screening, aggregation) with default settings, and the resulting log
record is replayed onto a tiny Llama: the figure is the L2 norm of the change of the trainable weights,
for the honest round and for the attacked one. ``--no-screening`` sets ``max_norm_ratio=0`` to show what
each rule does on its own.

    python benchmarks/byzantine.py
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_fedzo.federation import ClientReport, FederatedServer, FederationConfig, ZOClient, encode

RULES = ("mean", "median", "trimmed_mean")
ATTACK = 1e6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


def displacement(clients: int, rule: str, attacked: bool, max_norm_ratio: float | None, seed: int = 0) -> float:
    """L2 norm of the weight change one aggregated round makes."""
    extra = {} if max_norm_ratio is None else {"max_norm_ratio": max_norm_ratio}
    config = FederationConfig(num_clients=clients, clients_per_round=clients, rounds=1, local_steps=1,
                              learning_rate=1e-3, zo_eps=1e-3, zo_p1=1, zo_p2=4, zo_split="none", partition="iid",
                              aggregation=rule, seed=seed, **extra)
    server = FederatedServer(config)
    sampled = server.start_round(0)
    rng = np.random.default_rng(seed)
    shape = server.settings.scalar_shape
    true_gradient = rng.normal(size=shape)
    for k in sampled:
        scalars = (true_gradient + 0.5 * rng.normal(size=shape)).astype(np.float32)
        if attacked and k == sampled[0]:
            scalars = scalars * np.float32(ATTACK)
        server.receive(encode(ClientReport(0, k, 100, scalars, 1.0, 1.0)))
    records = server.finish_round()

    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    batch = {"input_ids": torch.arange(1, 9)[None], "labels": torch.arange(1, 9)[None]}
    ZOClient(model, lambda m, b: m(**b).loss).replay(records, 0, server.settings, batch)
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before,
                                                                            strict=True))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-screening", action="store_true", help="max_norm_ratio=0: the rules alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("hf_fedzo").setLevel(logging.ERROR)  # the server logs every clipped report
    ratio = 0.0 if args.no_screening else None
    print(f"one x{ATTACK:g} attacker; {'screening off (max_norm_ratio=0)' if ratio == 0 else 'default settings'}")
    print("| clients per round | rule | honest displacement | with attacker | ratio |")
    print("|---|---|---|---|---|")
    for clients in (4, 5, 8):
        for rule in RULES:
            honest = displacement(clients, rule, False, ratio)
            attacked = displacement(clients, rule, True, ratio)
            print(f"| {clients} | {rule} | {honest:.3g} | {attacked:.3g} | {attacked / honest:.3g} |")


if __name__ == "__main__":
    main()
