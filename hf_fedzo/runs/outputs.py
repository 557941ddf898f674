"""What a recipe leaves in `output_dir` besides the model: `metrics.json` and `<metric>_vs_flops.png`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import Trainer

from hf_fedzo.reporting import draw_curves, write_json
from hf_fedzo.runs.history import MetricHistory
from hf_fedzo.tasks import PromptSelection, majority_rate, save_task
from hf_fedzo.trainer import ZOSplitTrainer

METRICS_FILE = "metrics.json"

# A short, stable subset of TrainingArguments: enough to tell runs apart (training_args.bin has the rest).
_TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "weight_decay", "max_steps", "num_train_epochs",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "bf16")


def write_run_outputs(trainer: Trainer, history: MetricHistory, *, recipe: str, metric: str, wall_time_s: float,
                      arguments: tuple[Any, ...] = (), task: Any = None,
                      prompt_selection: PromptSelection | None = None, validation_rows: Any = None) -> dict[str, Any]:
    """Summarize the run, and on the main process write it as JSON plus a metric-vs-FLOPs plot.

    Args:
        trainer: the trainer after `train()` and the final evaluation.
        history: the callback that recorded every evaluation (zero-shot first, final last).
        recipe: the recipe's name, recorded in the JSON.
        metric: the plotted metric without `eval_` prefix (`accuracy`, `f1`).
        wall_time_s: wall time of the whole run, loading and evaluations included.
        arguments: the recipe's argument dataclasses (besides the training arguments), recorded as given.
        task: the task trained on; its alignment is saved as `task.json` beside the weights (see
            `hf_fedzo.tasks.load_task`), with `prompt_selection` when --prompt auto chose it.
        validation_rows: the raw evaluation rows; for a classification task their majority-class rate is drawn
            as a reference line beside the zero-shot score.

    Returns:
        The summary written to `metrics.json` (returned on every process).
    """
    if not history.points:
        raise ValueError("history has no evaluation: call history.evaluate(trainer) before and after training")
    key = f"eval_{metric}"
    zero_order = isinstance(trainer, ZOSplitTrainer)
    args = trainer.args
    summary: dict[str, Any] = {
        "recipe": recipe,
        "trainer": type(trainer).__name__,
        "metric": metric,
        "zero_shot": {metric: history.points[0].get(key), **history.points[0]},
        "final": {metric: history.points[-1].get(key), **history.points[-1]},
        "total_flos": float(trainer.state.total_flos),
        "flos_counted": ("forward passes actually run" if zero_order
                         else "transformers' 6·params·tokens estimate (forward + backward)"),
        "global_step": trainer.state.global_step,
        "wall_time_s": wall_time_s,
        "train_samples": _length(trainer.train_dataset),
        "eval_samples": _length(trainer.eval_dataset),
        "world_size": args.world_size,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "loaded_in_4bit": bool(getattr(trainer.model, "is_loaded_in_4bit", False)),
        "arguments": {
            **{type(a).__name__: dataclasses.asdict(a) for a in arguments},
            "training": {k: getattr(args, k) for k in _TRAINING_KEYS},
            "zo": {k: v for k, v in args.to_dict().items() if k.startswith("zo_")} if zero_order else None,
        },
        "history": history.points,
    }
    if trainer.is_world_process_zero():
        output_dir = Path(args.output_dir)
        write_json(output_dir / METRICS_FILE, summary)
        if task is not None:
            save_task(task, output_dir, prompt_selection.as_dict() if prompt_selection else None)
        xlabel = "cumulative forward FLOPs" if zero_order else "cumulative training FLOPs (estimate)"
        label = "zeroth-order" if zero_order else "first-order (Trainer)"
        examples = summary["eval_samples"]
        references = [(name, y) for name, y in (("zero-shot (same prompt)", summary["zero_shot"][metric]),
                                                ("majority class", _majority(task, validation_rows)))
                      if y is not None]
        draw_curves(output_dir / f"{metric}_vs_flops.png", {label: history.curve(key)}, xlabel=xlabel,
                    ylabel=f"{metric} on {examples} validation examples" if examples else f"validation {metric}",
                    title=f"{recipe}: {metric} vs FLOPs (step 0 = zero-shot)", reference=references, min_yspan=0.1,
                    y_bounds=(0.0, 1.0))
    return summary


def _majority(task: Any, rows: Any) -> float | None:
    """The majority-class rate of a classification task's raw rows (None for generation tasks or without rows)."""
    if rows is None or getattr(task, "label_words", None) is None:
        return None
    column = (task.columns or {}).get(task.target, task.target)
    return majority_rate(rows[column]) if column in rows.column_names else None


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def comparison_table(summary: Mapping[str, Any]) -> str:
    """What a federated recipe prints last: every method's held-out accuracy beside zero-shot and the majority
    rate, with its standard error, balanced accuracy, per-class prediction rates, compute, bytes and time.

    A method that gives one class to 95% or more of the held-out examples is flagged: that is a collapse, and
    its accuracy is the class frequency, not something it learned.
    """
    n = summary["held_out_examples"]
    rows = [("zero-shot", summary["zero_shot"], None), *((name, m["held_out"], m)
                                                        for name, m in summary["methods"].items())]
    lines = [f"held-out split: {n} examples (standard error of an accuracy near 0.85: ±{_stderr(0.85, n):.3f}); "
             f"always answering the majority class scores {summary['majority_rate']:.4f}",
             f"{'':<10} {'accuracy':>8} {'± SE':>6} {'balanced':>8} {'predicted classes':>17} {'rounds':>6} "
             f"{'fwd TFLOPs':>10} {'up B/client':>11} {'down B/client':>13} {'wall s':>7}"]
    warnings = []
    for name, metrics, method in rows:
        rates = [v for k, v in metrics.items() if k.startswith("prediction_rate_")]
        extra = ("" if method is None else f" {method['rounds']:>6} {method['forward_tflops']:>10.2f} "
                 f"{method['bytes_up_per_client_round']:>11.0f} {method['bytes_down_per_client_round']:>13.0f} "
                 f"{method['wall_time_s']:>7.0f}")
        lines.append(f"{name:<10} {metrics['accuracy']:>8.4f} {_stderr(metrics['accuracy'], n):>6.3f} "
                     f"{metrics['balanced_accuracy']:>8.4f} {' / '.join(f'{r:.2f}' for r in rates):>17}{extra}")
        if rates and max(rates) >= 0.95:
            warnings.append(f"warning: {name} predicts class {rates.index(max(rates))} for {max(rates):.0%} of the "
                            "examples: a collapse, not a score")
    return "\n".join(lines + warnings)


def _stderr(accuracy: float, n: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1))
