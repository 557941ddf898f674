"""Do the direction laws give the same ZO estimates? Their moments against a real model's true gradient.

To first order in ε a central-difference scalar is g·z, so an estimate is (g·z)·z and what a law changes is
only the moments of z seen through g. For each law this script draws K directions exactly as training does
(``DirectionApplier`` on zero-initialised copies of the trainable tensors, from the same step seeds) on real
SmolLM2-135M with LoRA and with full weights, against the autograd gradient g of one VADER batch, and prints:

* E[(g·z)²] / ‖g‖²: 1 for every law with E[zzᵀ] = I (the scale of the projected gradients the step size meets);
* E[(g·z)²‖z‖²] / (d‖g‖²): the estimate's second moment E‖ĝ‖², which sets its noise per FLOP
  (1 + 2/d for i.i.d. Gaussian z, exactly 1 for Rademacher signs).

Each with its standard error over the K directions. No forward is run after the gradient: this isolates the law.

    python -m benchmarks.direction_laws
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence

import torch

from benchmarks.estimator_quality import load_params, load_setup, true_gradient
from benchmarks.laws import laws_default_first
from hf_fedzo.engine import PERTURBATIONS, DirectionApplier, IndexedParameter, SeedScope, trainable_parameters

LAWS = tuple(laws_default_first(("gaussian", "gaussian_table", "rademacher_philox", "rademacher")))


def moments(params: Sequence[IndexedParameter], grad: Mapping[int, torch.Tensor], law: str, directions: int,
            seed: int) -> dict[str, float]:
    """Mean and standard error of (g·z)²/‖g‖² and (g·z)²‖z‖²/(d‖g‖²) over ``directions`` seeded directions."""
    applier = DirectionApplier(law)
    shadows = [IndexedParameter(p.index, p.name, torch.zeros(p.tensor.shape), p.decay) for p in params]
    d = sum(p.tensor.numel() for p in params)
    gsq = sum(float(grad[p.index].square().sum()) for p in params)
    # float32 dot products (float64 sums would dominate the run): rounding far below the χ² spread measured here.
    g32 = {p.index: grad[p.index].float().reshape(-1) for p in params}
    projected, second = [], []
    for k in range(directions):
        for shadow in shadows:
            shadow.tensor.zero_()
        applier.add_(shadows, [(SeedScope(seed).step_seed(k), 1.0)])
        dot = math.fsum(float(shadow.tensor.reshape(-1) @ g32[shadow.index]) for shadow in shadows)
        zsq = math.fsum(float(shadow.tensor.reshape(-1) @ shadow.tensor.reshape(-1)) for shadow in shadows)
        projected.append(dot * dot / gsq)
        second.append(dot * dot * zsq / (d * gsq))

    def mean_se(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))

    (m2, m2_se), (v, v_se) = mean_se(projected), mean_se(second)
    return {"projected": m2, "projected_se": m2_se, "second": v, "second_se": v_se, "d": d}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="default: the offline SmolLM2-135M asset")
    parser.add_argument("--laws", nargs="+", choices=sorted(PERTURBATIONS), default=list(LAWS))
    parser.add_argument("--lora_directions", type=int, default=2000)
    parser.add_argument("--full_directions", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("lora_directions", "full_directions", "batch_size", "threads"):
        if getattr(args, name) < (2 if name.endswith("directions") else 1):
            parser.error(f"--{name} is too small (got {getattr(args, name)})")

    from hf_fedzo.data import smollm2_path

    torch.set_num_threads(args.threads)
    model_path = args.model_name_or_path or str(smollm2_path())
    task, batch_loss, train = load_setup(model_path, "review", 64)
    rows = random.Random(args.seed).sample(range(len(train)), args.batch_size)
    batch = task.collator([task.preprocess(train[i]) for i in rows])
    print(f"direction laws against the true gradient of one batch of {args.batch_size} VADER sentences, "
          f"seed {args.seed}, {args.threads} threads; expected: E[(g·z)²]/‖g‖² = 1, E[(g·z)²‖z‖²]/(d‖g‖²) = 1 + 2/d "
          "(Gaussian) or 1 (signs)")
    worst = 0.0
    for param_set, directions in (("lora", args.lora_directions), ("full", args.full_directions)):
        model = load_params(model_path, param_set, args.seed)
        grad = true_gradient(model, lambda model=model: batch_loss(model, batch))
        params = trainable_parameters(model)
        for law in args.laws:
            started = time.perf_counter()
            m = moments(params, grad, law, directions, args.seed)
            worst = max(worst, abs(m["projected"] - 1) / m["projected_se"], abs(m["second"] - 1) / m["second_se"])
            print(f"  {param_set:<4} d={m['d']:>11,}  {law:<18} K={directions:<5} "
                  f"E[(g·z)²]/‖g‖² {m['projected']:.3f} ± {m['projected_se']:.3f}   "
                  f"E[(g·z)²‖z‖²]/(d‖g‖²) {m['second']:.3f} ± {m['second_se']:.3f}   "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        del model, grad
    print(f"direction laws: largest deviation from the i.i.d. value {worst:.1f} standard errors")


if __name__ == "__main__":
    main()
