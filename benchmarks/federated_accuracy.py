"""Compute to accuracy, powered: tuned step sizes, several seeds, a held-out test set, a first-order ceiling.

Every run is a federation on real SmolLM2-135M-Instruct fine-tuned on the VADER movie sentences (the Rotten
Tomatoes sentences SST-2 comes from) with the prompt chosen zero-shot on validation data ("Review: <s>\\n
Sentiment:" scored by " negative" / " positive"; docs/benchmarks.md has the selection table): 8 clients with
a Dirichlet(0.5) label skew, 4 sampled per round, 4 local steps of 8 sentences, every run stopped once its
clients have spent ``--budget_tflops`` forward FLOPs. Curves are validation accuracy (``--eval_samples``
sentences) against cumulative forward FLOPs, starting at zero-shot (LoRA starts at B = 0).

1. **Tune** (first seed): every arm runs each step size of its grid; the one whose validation curve ends highest
   (mean of the last two evaluations) is the arm's step size. Every arm gets a grid of the same size.
2. **Seeds**: the LoRA arms run the other seeds at their chosen step size (same partition, sampling, data order
   and direction seeds across arms for a given seed). Full-weight arms run the first seed only.
3. **Test**: each chosen run's final model is rebuilt from its federation log (no training) and scored once on
   the held-out test sentences (all 1,057 by default): accuracy with its standard error, balanced accuracy and
   per-class prediction rates, beside the untrained model (the prompt's zero-shot) on the same sentences.
4. **Report**: FLOPs to reach 50/75/90% of the best arm's validation gain over zero-shot (mean ± std over
   seeds), and FLOPs to reach MeZO's final accuracy, whose ratio is the last line.

Runs live in ``--output_dir/<arm>/lr<lr>/seed<k>/`` (the federation's own resumable state): an interrupted
benchmark continues, a finished run is reused, and ``--report_only`` prints and plots from them. The same
comparison without federation (ZOSplitTrainer on the pooled training sentences, at the same FLOP budget) is
``benchmarks/centralised_accuracy.py``; both share ``benchmarks/accuracy_runs.py``
(stages and run store), ``accuracy_arms.py`` and ``accuracy_report.py``.

    hf-fedzo prepare-assets
    python -m benchmarks.federated_accuracy --workers 2
    python -m benchmarks.federated_accuracy --report_only --figures_dir docs/figures
    python -m benchmarks.federated_accuracy --arms mezo-wd2 --lrs 0.005 --seeds 42 --tune_only  # tuning runs only
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.accuracy_arms import ARMS, FULL_ARMS, HEADLINE, LABEL_WORDS, LORA_ARMS, PROMPT, Arm, Setup
from benchmarks.accuracy_runs import (
    add_arguments,
    build_model,
    check_arguments,
    run_benchmark,
    save_final_trainable,
    setup_key,
    shared_task,
    validation_rows,
)

__all__ = ["ARMS", "FULL_ARMS", "HEADLINE", "LABEL_WORDS", "LORA_ARMS", "PROMPT", "Arm", "Setup",
           "federation_config", "main", "run_arm"]


# ---------------------------------------------------------------- one federation (in a worker process)

def federation_config(setup: Setup, arm: Arm, seed: int, lr: float) -> Any:
    """The federation of ``arm`` at ``lr`` on ``seed``; its ``round_settings().zo`` are the ZO settings every
    party runs (the centralised benchmark trains with exactly these)."""
    from hf_fedzo.federation import FederationConfig

    return FederationConfig(
        method=arm.method, num_clients=setup.num_clients, clients_per_round=setup.clients_per_round,
        rounds=100_000, local_steps=setup.local_steps, batch_size=setup.batch_size, learning_rate=lr, fedavg_lr=lr,
        weight_decay=arm.weight_decay, zo_eps=arm.zo_eps or setup.zo_eps, zo_p1=arm.zo_p1, zo_p2=arm.zo_p2,
        zo_split=arm.zo_split,
        partition="dirichlet", dirichlet_alpha=setup.dirichlet_alpha, seed=seed,
        flop_budget=setup.budget_tflops * 1e12)


def _round_tflops(arm: Arm, config: Any, model: Any, batch_loss: Any, probe: Any) -> float:
    """Nominal forward TFLOPs of one round, from one traced forward of a client batch (sets the evaluation
    cadence only: the runs count the FLOPs they actually spend)."""
    import torch

    from hf_fedzo.engine import ZOEstimator

    settings = config.round_settings().zo
    estimator = ZOEstimator(model, settings)
    with torch.no_grad():
        estimator.prepare(lambda: batch_loss(model, probe))
    c1, c2 = estimator.plan.block_flops(estimator.plan.split_index)
    if arm.method == "fedavg":
        step = c1 + c2
    elif estimator.plan.split_index is not None and estimator.plan.first_trainable_layer >= estimator.plan.split_index:
        step = c1 + 2 * settings.p1 * settings.p2 * c2  # the frozen prefix runs once
    else:
        step = 2 * settings.p1 * (c1 + settings.p2 * c2)
    return step * config.local_steps * config.clients_per_round / 1e12


def run_arm(setup: Setup, arm: Arm, seed: int, lr: float, output_dir: str, zero_shot: float) -> dict[str, Any]:
    """One federation of ``arm`` at ``lr`` on ``seed`` until the FLOP budget is spent: its validation curve.
    The final trainable tensors are kept (``final_trainable.pt``) for the test stage."""
    from hf_fedzo.federation import RoundPlot, simulate_federation, task_batch_loss, task_clients
    from hf_fedzo.tasks import majority_rate

    started = time.perf_counter()
    task, raw = shared_task(setup)
    validation = validation_rows(setup)
    config = federation_config(setup, arm, seed, lr)
    clients, _ = task_clients(task, raw["train"], config)
    model, batch_loss = build_model(setup, arm, seed), task_batch_loss(task)
    probe = clients[0].round_batches(seed, 0, 0, 1, setup.batch_size)[0]
    eval_every = max(1, round(setup.eval_every_tflops / _round_tflops(arm, config, model, batch_loss, probe)))
    # The run's plots start at round 0 and carry the lines a reader needs to judge the curve.
    plot = RoundPlot(label=f"{arm.label}, lr {lr:g}, seed {seed}", start=zero_shot,
                     references=[("zero-shot", zero_shot), ("majority class", majority_rate(validation["label"]))],
                     ylabel=f"validation accuracy ({len(validation)} sentences)")
    result = simulate_federation(model, batch_loss, clients, dataclasses.replace(config, eval_every=eval_every),
                                 output_dir=Path(output_dir),
                                 evaluate=lambda m: task.evaluate(m, validation, batch_size=32),
                                 run_info={"benchmark": "federated_accuracy", "setup": setup_key(setup),
                                           "arm": dataclasses.asdict(arm)}, plot=plot)
    save_final_trainable(model, output_dir)
    evaluated = [r for r in result.rounds if r.eval is not None]
    return {
        "arm": arm.name, "seed": seed, "lr": lr, "rounds": len(result.rounds),
        "total_tflops": result.total_flops / 1e12, "eval_every": eval_every,
        "curve": [[0.0, zero_shot], *([r.cumulative_flops / 1e12, r.eval["accuracy"]] for r in evaluated)],
        "final_accuracy": evaluated[-1].eval["accuracy"], "wall_s": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "out/benchmarks/federated_accuracy", ARMS, [*LORA_ARMS, *FULL_ARMS])
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return run_benchmark(args, run_arm, headline="compute to accuracy",
                         xlabel="cumulative forward TFLOPs (all clients)")


if __name__ == "__main__":
    main()
