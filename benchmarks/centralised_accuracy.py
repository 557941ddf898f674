"""Compute to accuracy without federation: the ZO arms of ``federated_accuracy`` trained by ``ZOSplitTrainer``.

The same comparison as ``benchmarks/federated_accuracy.py`` (same model, prompt, validation and test sentences,
step-size grids, seeds, forward-FLOP budget and report), but every run is one ``ZOSplitTrainer`` (``ZOConfig``)
on the pooled training sentences: batches of 8 in the trainer's own shuffled order, a constant step size, and
exactly the ZO settings each party of the federated run uses (``federation_config(...).round_settings().zo``). A
callback reads the forward FLOPs the trainer has run (``trainer.zo_work``, the same engine counters as a
federation's), evaluates on validation every ``--eval_every_tflops`` and stops training at the step that spends
``--budget_tflops``, as a federation stops after the round that does. At equal FLOPs a run here takes as many
ZO steps as the federation's clients together; each one updates the model, where a federation averages the
steps of the clients of a round.

Runs live in ``--output_dir/<arm>/lr<lr>/seed<k>/``; a checkpoint is saved at every evaluation (its
``trainer_state.json`` keeps the curve), so an interrupted run resumes there and a finished one is reused.
``--quick`` is a smoke run: one seed, a tenth of the budget, 64 validation and 128 test sentences. The last
line is ``centralised compute to accuracy: FLOPs ratio MeZO/FedSPZO to MeZO's final accuracy X.XX ± S.SS over
N seeds``.

    hf-fedzo prepare-assets
    python -m benchmarks.centralised_accuracy --workers 2
    python -m benchmarks.centralised_accuracy --report_only --figures_dir docs/figures/centralised
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from benchmarks import accuracy_runs as runs
from benchmarks.accuracy_arms import ARMS, Arm, Setup
from benchmarks.federated_accuracy import federation_config

ZO_ARMS = tuple(name for name, arm in ARMS.items() if arm.method != "fedavg")
DEFAULT_ARMS = ("mezo", "nspsa", "fedspzo", "fedspzo-p2-2", "mezo-top8", "fedspzo-top8")
EVALUATION = "validation_accuracy"  # the key of an evaluation in the trainer's log history
QUICK = {"seeds": [42], "budget_fraction": 0.1, "eval_samples": 64, "test_samples": 128}


class FlopBudget(TrainerCallback):
    """Evaluates every ``every`` forward FLOPs and stops training at the step that spends ``budget``.

    ``spent()`` is the trainer's forward FLOPs so far. Each evaluation is appended to the trainer's log history
    (saved with every checkpoint, so a resumed run keeps its curve) and asks for a checkpoint.
    """

    def __init__(self, spent: Callable[[], int], budget: float, every: float,
                 evaluate: Callable[[Any], float]) -> None:
        self.spent, self.budget, self.every, self.evaluate = spent, budget, every, evaluate

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        spent = self.spent()
        last = max((entry["forward_flops"] for entry in curve_entries(state.log_history)), default=0)
        if spent >= self.budget or spent // self.every > last // self.every:
            state.log_history.append({"step": state.global_step, "forward_flops": spent,
                                      EVALUATION: self.evaluate(model)})
            control.should_save = True
        if spent >= self.budget:
            control.should_training_stop = True


def curve_entries(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in log_history if EVALUATION in entry]


def zo_config(setup: Setup, arm: Arm, seed: int, lr: float, output_dir: str) -> Any:
    """The trainer's arguments: the federated run's ZO settings, batch size and step size, a constant schedule,
    no scheduled evaluation or checkpoint (``FlopBudget`` asks for them) and no logging."""
    import torch

    from hf_fedzo import ZOConfig

    federation = federation_config(setup, arm, seed, lr)
    zo = federation.round_settings().zo
    return ZOConfig(output_dir=output_dir, learning_rate=lr, weight_decay=federation.weight_decay,
                    lr_scheduler_type="constant", max_steps=10**9, per_device_train_batch_size=setup.batch_size,
                    seed=seed, zo_eps=zo.eps, zo_p1=zo.p1, zo_p2=zo.p2, zo_split=zo.split,
                    zo_perturbation=zo.perturbation, zo_difference=zo.difference,
                    zo_layers_path=zo.layers_path, eval_strategy="no", save_strategy="no", save_total_limit=1,
                    logging_strategy="no", report_to="none", disable_tqdm=True,
                    dataloader_pin_memory=torch.cuda.is_available())  # no warning per run on a CPU machine


def run_arm(setup: Setup, arm: Arm, seed: int, lr: float, output_dir: str, zero_shot: float) -> dict[str, Any]:
    """One ``ZOSplitTrainer`` run of ``arm`` at ``lr`` on ``seed`` until the FLOP budget is spent: its validation
    curve. A run that diverges (``DivergenceError``) ends there, its last point scored on the broken model."""
    from transformers import PrinterCallback

    from hf_fedzo import ZOSplitTrainer
    from hf_fedzo.engine import DivergenceError
    from hf_fedzo.trainer import last_complete_checkpoint

    started = time.perf_counter()
    task, raw = runs.shared_task(setup)
    validation = runs.validation_rows(setup)

    def evaluate(model: Any) -> float:
        return float(task.evaluate(model, validation, batch_size=32)["accuracy"])

    trainer = ZOSplitTrainer(model=runs.build_model(setup, arm, seed), args=zo_config(setup, arm, seed, lr, output_dir),
                             train_dataset=task.preprocess_dataset(raw["train"]), **task.trainer_kwargs())
    trainer.remove_callback(PrinterCallback)  # no dict per log line in the queue's output
    trainer.add_callback(FlopBudget(lambda: trainer.zo_work.flops, setup.budget_tflops * 1e12,
                                    setup.eval_every_tflops * 1e12, evaluate))
    diverged = None
    try:
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir))
    except DivergenceError as err:
        diverged = str(err)
        trainer.state.log_history.append({"step": trainer.state.global_step, "forward_flops": trainer.zo_work.flops,
                                          EVALUATION: evaluate(trainer.model)})
    runs.save_final_trainable(trainer.model, output_dir)
    evaluated = curve_entries(trainer.state.log_history)
    return {
        "arm": arm.name, "seed": seed, "lr": lr, "steps": trainer.state.global_step,
        "total_tflops": trainer.zo_work.flops / 1e12, "diverged": diverged,
        "curve": [[0.0, zero_shot], *([e["forward_flops"] / 1e12, e[EVALUATION]] for e in evaluated)],
        "final_accuracy": evaluated[-1][EVALUATION], "wall_s": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_arguments(parser, "out/benchmarks/centralised_accuracy", ZO_ARMS, DEFAULT_ARMS)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: seeds {QUICK['seeds']}, {QUICK['budget_fraction']:g} of the budget and of "
                             f"the evaluation interval, {QUICK['eval_samples']} validation and "
                             f"{QUICK['test_samples']} test sentences")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.eval_samples, args.test_samples = QUICK["seeds"], QUICK["eval_samples"], QUICK["test_samples"]
        args.budget_tflops *= QUICK["budget_fraction"]
        args.eval_every_tflops *= QUICK["budget_fraction"]
        if args.output_dir == parser.get_default("output_dir"):
            args.output_dir = str(Path(args.output_dir) / "quick")
    runs.check_arguments(parser, args)
    return runs.run_benchmark(args, run_arm, headline="centralised compute to accuracy",
                         xlabel="cumulative forward TFLOPs (one trainer, pooled data)")


if __name__ == "__main__":
    main()
