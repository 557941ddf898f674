"""Time for a client to replay one round's aggregated log, against one forward pass of the same model.

A round of FedSPZO with shared seeds adds ``local_steps`` log records of P1 block-1 and P1·P2 block-2
directions; replaying it regenerates each direction once, whatever the number of clients (per-client
seeds multiply it by the clients). Measured on the SmolLM2-135M shape, with LoRA and with full weights.

    python -m benchmarks.replay
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.laws import law_label, laws_default_first
from benchmarks.smollm2_shape import smollm2_shaped, token_batch
from hf_fedzo.engine import SeedScope, ZOEstimator, ZOSettings, ZOUpdate, apply_updates


def best_of(repeats: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(lora_r: int | None, local_steps: int, p1: int, p2: int, batch: dict[str, torch.Tensor],
            repeats: int, perturbation: str) -> tuple[float, float]:
    model = smollm2_shaped(lora_r=lora_r)
    estimator = ZOEstimator(model, ZOSettings(eps=1e-3, p1=p1, p2=p2, split="auto", perturbation=perturbation))
    with torch.inference_mode():
        estimator.prepare(lambda: model(**batch).loss)
    scalars = tuple(tuple(0.1 for _ in range(p2)) for _ in range(p1))
    round_log = [ZOUpdate((SeedScope(0, 0).step_seed(t),), (scalars,), 1e-6, 0.0) for t in range(local_steps)]

    def forward() -> None:
        with torch.inference_mode():
            model(**batch)

    forward()
    return best_of(repeats, lambda: apply_updates(estimator, round_log)), best_of(repeats, forward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local_steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = token_batch(args.batch, args.seq)
    print(f"SmolLM2-135M shape, one round = {args.local_steps} log records (P1=1, P2=4, split auto), forward on "
          f"{args.batch}x{args.seq} tokens, {torch.get_num_threads()} threads\n")
    results = {}
    laws = laws_default_first()
    arms = [(f"LoRA r=8, {law_label(laws[0])}", 8, laws[0]),
            *((f"full weights, {law_label(law)}", None, law) for law in laws)]
    for name, lora_r, perturbation in arms:
        results[name] = measure(lora_r, args.local_steps, 1, 4, batch, args.repeats, perturbation)
        replay, forward = results[name]
        print(f"{name:<40} replay {replay * 1e3:9.1f} ms   forward {forward * 1e3:8.1f} ms")
    print()
    for name, (replay, forward) in results.items():
        print(f"ratio replay of one round / one forward, {name}: {replay / forward:.3f}")


if __name__ == "__main__":
    main()
