"""Why a step size collapses: replay a finished run of ``benchmarks.federated_accuracy`` (its federation log) or
of ``benchmarks.centralised_accuracy`` (the ZO trajectory of its last checkpoint) and print, a row per round (or
per 16 trainer steps, the client steps of one federated round), the size of the LoRA weights and of the
projected gradients beside the training loss and the validation accuracy.

No forward pass is needed beyond one that builds the block plan: the (seed, scalar) record alone rebuilds the
weights, as every party's replay does. The question it answers is whether a step size that is stable at the start
(LoRA's B = 0) becomes too large as the adapters grow, and whether their growth is movement along the gradient or
the accumulated noise of random directions ("‖B‖ noise": what ‖B‖ would be if every step were pure noise).

    python -m benchmarks.collapse_anatomy out/benchmarks/federated_accuracy/mezo/lr0.005/seed42
    python -m benchmarks.collapse_anatomy out/benchmarks/centralised_accuracy/mezo/lr0.002/seed42
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

STEPS_PER_ROW = 16  # centralised: the client steps of one federated round (4 clients × 4 local steps)
Group = tuple[dict[str, Any], list[Any]]  # (what the row shows besides the norms, the updates it applies)


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


def noise_walk(scalars: Sequence[float], lr: float, dimension: int, weight_decay: float = 0.0) -> float:
    """‖B‖ if every step were pure noise: B starts at 0 and each one-direction step first decays B by
    (1 − lr·weight_decay), then adds lr·g·z with a fresh unit-variance z, so squared norms add up:
    Σ (lr·g)²·d without decay (the part along the gradient is left out)."""
    squared = 0.0
    for g in scalars:
        squared = squared * (1 - lr * weight_decay) ** 2 + (lr * g) ** 2 * dimension
    return math.sqrt(squared)


def is_federated(run_dir: Path) -> bool:
    return (run_dir / "federation_state.json").is_file()


def finished_run(run_dir: Path) -> tuple[Setup, dict[str, Any]]:
    path = run_dir / "curve.json"
    if not path.is_file():
        raise SystemExit(f"run_dir {run_dir}: no curve.json (the accuracy benchmarks write it when a run finishes)")
    saved = json.loads(path.read_text())
    if saved["result"]["arm"] not in ARMS:
        raise SystemExit(f"run_dir {run_dir}: arm {saved['result']['arm']!r} is not one of benchmarks.accuracy_arms")
    return Setup(**{**saved["setup"], "label_words": tuple(saved["setup"]["label_words"])}), saved["result"]


def federated_groups(run_dir: Path) -> list[Group]:
    """One group per round: its loss, evaluation and FLOPs, and the log records it added."""
    from hf_fedzo.federation import LogRecord

    if not (run_dir / "federation_results.json").is_file():
        raise SystemExit(f"run_dir {run_dir}: no federation_results.json beside its federation_state.json")
    state = json.loads((run_dir / "federation_state.json").read_text())
    by_round: dict[int, list[Any]] = {}
    for data in state["server"]["log"]:
        record = LogRecord.from_json(data)
        by_round.setdefault(record.round, []).append(record.update)
    rounds = json.loads((run_dir / "federation_results.json").read_text())["rounds"]
    return [({"row": r["round"], "tflops": r["cumulative_flops"] / 1e12, "train_loss": r["train_loss"],
              "accuracy": (r.get("eval") or {}).get("accuracy")}, by_round.get(r["round"], []))
            for r in rounds]


def centralised_groups(run_dir: Path, run: dict[str, Any]) -> list[Group]:
    """One group per ``STEPS_PER_ROW`` trainer steps, from the trajectory and evaluations of the last checkpoint."""
    from hf_fedzo.trajectory import TRAJECTORY_NAME, load_trajectory

    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    if not checkpoints:
        raise SystemExit(f"run_dir {run_dir}: no checkpoint-* with a {TRAJECTORY_NAME}")
    updates = load_trajectory(checkpoints[-1] / TRAJECTORY_NAME).updates
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    accuracy_at = {entry["step"]: entry["validation_accuracy"] for entry in history if "validation_accuracy" in entry}
    tflops_per_step = run["total_tflops"] / run["steps"]
    groups = []
    for start in range(0, len(updates), STEPS_PER_ROW):
        end = min(start + STEPS_PER_ROW, len(updates))
        evaluated = [accuracy_at[s] for s in sorted(accuracy_at) if start < s <= end]
        groups.append(({"row": end, "tflops": end * tflops_per_step, "train_loss": None,
                        "accuracy": evaluated[-1] if evaluated else None}, updates[start:end]))
    return groups


def anatomy(run_dir: Path) -> list[dict[str, Any]]:
    """One row per group of updates: loss, validation where evaluated, |projected gradient| and adapter norms."""
    from transformers import AutoTokenizer

    from hf_fedzo.engine import ZOEstimator, apply_updates

    setup, run = finished_run(run_dir)
    arm = ARMS[run["arm"]]
    if arm.peft != "lora":
        raise SystemExit(f"run_dir {run_dir}: arm {arm.name} has no LoRA adapters to measure")
    groups = federated_groups(run_dir) if is_federated(run_dir) else centralised_groups(run_dir, run)
    model = build_model(setup, arm, run["seed"])
    estimator = ZOEstimator(model, federation_config(setup, arm, run["seed"], run["lr"]).round_settings().zo)
    tokenizer = AutoTokenizer.from_pretrained(setup.model)
    batch = tokenizer(["Review: a fine film\nSentiment: positive"], return_tensors="pt")
    estimator.prepare(lambda: model(**batch, labels=batch["input_ids"]).loss)  # the block plan only
    one_direction = arm.zo_p1 == 1 and arm.zo_p2 == 1  # else the scalars of a step move different blocks
    b_dimension = sum(b.numel() for _, b, _ in lora_pairs(model))
    applied: list[float] = []
    rows = []
    for shown, updates in groups:
        with torch.no_grad():
            apply_updates(estimator, updates)
        per_update = [torch.tensor(u.scalars) for u in updates]  # (micro-batch, P1, P2) each
        magnitudes = torch.cat([t.flatten() for t in per_update]).abs() if per_update else torch.full((1,), math.nan)
        applied += [float(t.mean()) for t in per_update]  # one direction: the mean over micro-batches moves θ
        rows.append({**shown, "mean_abs_scalar": float(magnitudes.mean()), "max_abs_scalar": float(magnitudes.max()),
                     "B_noise_walk": noise_walk(applied, run["lr"], b_dimension, arm.weight_decay)
                     if one_direction else None,
                     **lora_norms(model)})
    return rows


def print_rows(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    unit = "round" if is_federated(run_dir) else "step"
    print(f"\n{run_dir}\n{unit:>5} {'TFLOPs':>7} {'train loss':>10} {'val acc':>8} {'mean |g|':>9} {'max |g|':>9} "
          f"{'‖A‖':>8} {'‖B‖':>8} {'‖B‖ noise':>9} {'‖BA·s‖':>9}")
    for r in rows:
        loss = "" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        walk = "–" if r["B_noise_walk"] is None else f"{r['B_noise_walk']:.4f}"
        print(f"{r['row']:>5} {r['tflops']:>7.1f} {loss:>10} {accuracy:>8} {r['mean_abs_scalar']:>9.2f} "
              f"{r['max_abs_scalar']:>9.2f} {r['A']:>8.3f} {r['B']:>8.4f} {walk:>9} {r['delta_w']:>9.4f}")


def main(argv: Sequence[str] | None = None) -> list[list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished run folders (<arm>/lr<lr>/seed<k>)")
    args = parser.parse_args(argv)
    every = []
    for run_dir in args.run_dirs:
        rows = anatomy(run_dir)
        print_rows(run_dir, rows)
        every.append(rows)
    return every


if __name__ == "__main__":
    main()
