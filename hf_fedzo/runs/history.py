"""`MetricHistory`: evaluation metrics against the FLOPs spent so far, one point per evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

ExtraMetrics = Callable[[nn.Module], Mapping[str, float]]


class MetricHistory(TrainerCallback):
    """Records `(global step, state.total_flos, eval metrics)` at every `Trainer` evaluation.

    With `ZOSplitTrainer`, `total_flos` counts the forward passes actually run; with plain `Trainer` it is
    transformers' 6·params·tokens estimate (forward and backward).

    Args:
        extra_metrics: called with the model at each evaluation, for metrics the Trainer's evaluation loop
            cannot produce (generated answers); its results are added as `eval_<name>` to the point and to the
            dict `trainer.evaluate()` returns. It runs on every process; use it for metrics over a small set.
    """

    def __init__(self, extra_metrics: ExtraMetrics | None = None) -> None:
        self.extra_metrics = extra_metrics
        self.points: list[dict[str, Any]] = []
        self._start = time.perf_counter()

    def _log_before_evaluating(self, control: TrainerControl) -> TrainerControl:
        # Trainer folds the FLOPs of recent steps into state.total_flos only when it logs; logging whenever it is
        # about to evaluate keeps every point's FLOPs current. Every process runs this, so collectives match.
        if control.should_evaluate:
            control.should_log = True
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        return self._log_before_evaluating(control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl:
        return self._log_before_evaluating(control)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, model: nn.Module | None = None,
                    **kwargs: Any) -> None:
        metrics = metrics if metrics is not None else {}
        if self.extra_metrics is not None and model is not None:
            metrics.update({f"eval_{name}": float(value) for name, value in self.extra_metrics(model).items()})
        self.points.append({"step": state.global_step, "total_flos": float(state.total_flos),
                            "elapsed_s": time.perf_counter() - self._start, **metrics})

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        """Evaluate now (zero-shot before `train()`, final after) unless this step was just evaluated."""
        last = self.points[-1] if self.points else None
        reloaded = trainer.args.load_best_model_at_end and trainer.state.global_step > 0
        if last is None or last["step"] != trainer.state.global_step or reloaded:
            trainer.evaluate()
        return self.points[-1]

    def curve(self, key: str) -> tuple[list[float], list[float]]:
        """`(total_flos, metric)` pairs of the points that carry `key`, for plotting."""
        pairs = [(p["total_flos"], p[key]) for p in self.points if p.get(key) is not None]
        return [x for x, _ in pairs], [y for _, y in pairs]
