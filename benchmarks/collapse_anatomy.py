"""Why a step size collapses: replay a finished run of ``benchmarks.federated_accuracy`` from its log and print,
round by round, the size of the LoRA weights and of the projected gradients beside the training loss.

No forward pass is needed beyond one that builds the block plan: the aggregated (seed, scalar) log alone
rebuilds the weights after every round, which is the federation's own replay. The question it answers is whether
a step size that is stable at the start (LoRA's B = 0: the loss is flat in A) becomes too large as the adapters
grow, which would show as projected gradients growing with ‖B‖ before the loss turns.

    python -m benchmarks.collapse_anatomy out/benchmarks/federated_accuracy/mezo/lr0.005/seed42
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.accuracy_arms import ARMS, Setup
from benchmarks.accuracy_runs import build_model
from benchmarks.federated_accuracy import federation_config


def lora_pairs(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Every adapted linear's (A, B, scaling) of the default adapter."""
    return [(m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"])
            for m in model.modules() if "default" in getattr(m, "lora_A", {})]


@torch.no_grad()
def lora_norms(model: torch.nn.Module) -> dict[str, float]:
    """Frobenius norms over all adapters: A, B, and the weight change B·A·scaling they add."""
    pairs = lora_pairs(model)
    return {"A": math.sqrt(sum(float(a.pow(2).sum()) for a, _, _ in pairs)),
            "B": math.sqrt(sum(float(b.pow(2).sum()) for _, b, _ in pairs)),
            "delta_w": math.sqrt(sum(float((b @ a * s).pow(2).sum()) for a, b, s in pairs))}


def noise_walk(scalars: Sequence[float], lr: float, dimension: int) -> float:
    """‖B‖ if every step were pure noise: B starts at 0 and each one-direction step adds lr·g·z with independent
    unit-variance z, so the squared norms add up, Σ (lr·g)²·d (the part along the gradient is left out)."""
    return math.sqrt(sum((lr * g) ** 2 for g in scalars) * dimension)


def load_run(run_dir: Path) -> tuple[Setup, dict[str, Any], list[Any], list[dict[str, Any]]]:
    from hf_fedzo.federation import LogRecord

    missing = [name for name in ("curve.json", "federation_state.json", "federation_results.json")
               if not (run_dir / name).is_file()]
    if missing:
        raise SystemExit(f"run_dir {run_dir}: no {', '.join(missing)} (a finished federated_accuracy run has them)")
    saved = json.loads((run_dir / "curve.json").read_text())
    setup = Setup(**{**saved["setup"], "label_words": tuple(saved["setup"]["label_words"])})
    log = [LogRecord.from_json(r) for r in json.loads((run_dir / "federation_state.json").read_text())["server"]["log"]]
    rounds = json.loads((run_dir / "federation_results.json").read_text())["rounds"]
    return setup, saved["result"], log, rounds


def anatomy(run_dir: Path) -> list[dict[str, Any]]:
    """One row per round: loss, validation accuracy where evaluated, |projected gradient| and adapter norms."""
    from transformers import AutoTokenizer

    from hf_fedzo.engine import ZOEstimator, apply_updates

    setup, run, log, rounds = load_run(run_dir)
    arm = ARMS[run["arm"]]
    if arm.peft != "lora":
        raise SystemExit(f"run_dir {run_dir}: arm {arm.name} has no LoRA adapters to measure")
    model = build_model(setup, arm, run["seed"])
    estimator = ZOEstimator(model, federation_config(setup, arm, run["seed"], run["lr"]).round_settings().zo)
    tokenizer = AutoTokenizer.from_pretrained(setup.model)
    batch = tokenizer(["Review: a fine film\nSentiment: positive"], return_tensors="pt")
    estimator.prepare(lambda: model(**batch, labels=batch["input_ids"]).loss)  # the block plan only
    one_direction = arm.zo_p1 == 1 and arm.zo_p2 == 1  # else the scalars of a step move different blocks
    b_dimension = sum(b.numel() for _, b, _ in lora_pairs(model))
    applied: list[float] = []
    rows = []
    for record in rounds:
        updates = [r.update for r in log if r.round == record["round"]]
        with torch.no_grad():
            apply_updates(estimator, updates)
        scalars = torch.tensor([s for u in updates for step in u.scalars for row in step for s in row])
        applied += [float(torch.tensor(u.scalars).mean()) for u in updates]  # the mean over micro-batches moves θ
        rows.append({"round": record["round"], "tflops": record["cumulative_flops"] / 1e12,
                     "train_loss": record["train_loss"], "accuracy": (record.get("eval") or {}).get("accuracy"),
                     "mean_abs_scalar": float(scalars.abs().mean()), "max_abs_scalar": float(scalars.abs().max()),
                     "B_noise_walk": noise_walk(applied, run["lr"], b_dimension) if one_direction else None,
                     **lora_norms(model)})
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished run folders (<arm>/lr<lr>/seed<k>)")
    args = parser.parse_args(argv)
    every = []
    for run_dir in args.run_dirs:
        rows = anatomy(run_dir)
        print(f"\n{run_dir}\n{'round':>5} {'TFLOPs':>7} {'train loss':>10} {'val acc':>8} {'mean |g|':>9} "
              f"{'max |g|':>9} {'‖A‖':>8} {'‖B‖':>8} {'‖B‖ noise':>9} {'‖BA·s‖':>8}")
        for r in rows:
            accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            walk = "–" if r["B_noise_walk"] is None else f"{r['B_noise_walk']:.4f}"
            print(f"{r['round']:>5} {r['tflops']:>7.1f} {r['train_loss']:>10.4f} {accuracy:>8} "
                  f"{r['mean_abs_scalar']:>9.2f} {r['max_abs_scalar']:>9.2f} {r['A']:>8.3f} {r['B']:>8.4f} "
                  f"{walk:>9} {r['delta_w']:>8.4f}")
        every.append(rows)
    return every


if __name__ == "__main__":
    main()
