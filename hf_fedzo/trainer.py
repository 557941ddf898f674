"""``ZOSplitTrainer``: a drop-in ``transformers.Trainer`` that trains with forward passes only.

Only small public hooks are overridden (``create_optimizer``, ``training_step``, ``log``,
``floating_point_ops``, ``save_model``, ``create_model_card``); transformers' own loop drives epochs,
gradient accumulation, schedulers, callbacks, evaluation, checkpoints and resumption.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_fedzo.config import ZOConfig
from hf_fedzo.engine import SeedScope, WorkCounters, ZOEstimate, ZOEstimator, ZOOptimizer
from hf_fedzo.trajectory.format import TRAJECTORY_NAME
from hf_fedzo.trajectory.record import Trajectory, current_command, save_trajectory
from hf_fedzo.trajectory.tensors import capture_start

logger = logging.getLogger(__name__)


def _as_zo_config(args: TrainingArguments | None) -> ZOConfig:
    """Accept plain ``TrainingArguments`` from an existing script, resetting gradient-only settings."""
    if args is None:
        return ZOConfig(output_dir="trainer_output")
    if isinstance(args, ZOConfig):
        return args
    values = args.to_dict()
    values["hub_token"] = args.hub_token  # to_dict() redacts it
    values.update(max_grad_norm=0.0, average_tokens_across_devices=False)
    return ZOConfig(**{k: v for k, v in values.items() if k in ZOConfig.__dataclass_fields__})


class ZOSplitTrainer(Trainer):
    """Zeroth-order fine-tuning with split perturbations (FedSPZO); same constructor as ``Trainer``.

    Works with plain models, PEFT LoRA models and 4-bit QLoRA models (only tensors with
    ``requires_grad=True`` are perturbed). Forwards run in eval mode (no dropout) without autograd.
    Under several processes the projected gradients are averaged across ranks, so replicas stay
    identical without ever exchanging weights.
    """

    _tag_names: ClassVar[list[str]] = ["hf_fedzo", "zeroth-order", "fedspzo"]

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *pargs: Any,
                 **kwargs: Any) -> None:
        args = _as_zo_config(args)
        super().__init__(model, args, *pargs, **kwargs)
        self.seed_scope = SeedScope(args.zo_base_seed)
        self.zo_estimator: ZOEstimator | None = None
        self._zo_micro_batch = 0
        self._zo_last_global_step = -1
        self._zo_last_estimate: ZOEstimate | None = None
        self.zo_work = WorkCounters()  # every step's forwards and FLOPs so far
        self._zo_window: list[ZOEstimate] = []
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = model if model is not None else self.model
            self.zo_estimator = ZOEstimator(target, self.args.zo_settings)
            params = [p for p in target.parameters() if p.requires_grad]
            self.optimizer = ZOOptimizer(params, self.zo_estimator, lr=self.args.learning_rate,
                                         weight_decay=self.args.weight_decay, clip_factor=self.args.zo_clip)
            # Before the first step; on resume, load_state_dict replaces it with the original run's start.
            self.optimizer.trajectory_start = capture_start(target)
        return self.optimizer

    @property
    def zo_optimizer(self) -> ZOOptimizer:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap AcceleratedOptimizer
        if not isinstance(optimizer, ZOOptimizer):
            raise TypeError(
                f"optimizers: ZOSplitTrainer needs its own ZOOptimizer, got {type(optimizer).__name__}. "
                "Do not pass `optimizers=` or `optimizer_cls_and_kwargs=`."
            )
        return optimizer

    # ---------------------------------------------------------------------------------------- step
    def _next_step_seed(self) -> int:
        step = self.state.global_step
        if step != self._zo_last_global_step:
            self._zo_last_global_step, self._zo_micro_batch = step, 0
        else:
            self._zo_micro_batch += 1
        return self.seed_scope.step_seed(step, self._zo_micro_batch)

    def training_step(self, model: nn.Module, inputs: dict[str, torch.Tensor | Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        optimizer = self.zo_optimizer
        inputs = self._prepare_inputs(inputs)

        def loss_fn() -> torch.Tensor:
            with self.compute_loss_context_manager():
                # A copy per forward: with `compute_loss_func` or label smoothing, Trainer.compute_loss pops
                # "labels" from the dict it is given, which would leave every later perturbation without labels.
                return self.compute_loss(model, dict(inputs))

        estimate = optimizer.estimator.estimate(loss_fn, self._next_step_seed())
        if self.accelerator.num_processes > 1:
            # Same seeds everywhere, different data shards: averaging the scalars keeps replicas identical.
            packed = torch.cat([estimate.scalars.flatten(), torch.tensor([estimate.loss])]).to(self.args.device)
            packed = self.accelerator.reduce(packed, reduction="mean").cpu()
            estimate.scalars = packed[:-1].view_as(estimate.scalars).float()
            estimate.loss = float(packed[-1])
        optimizer.accumulate(estimate)
        self._record(estimate)
        return torch.tensor(estimate.loss / self.current_gradient_accumulation_steps, device=self.args.device)

    def _record(self, estimate: ZOEstimate) -> None:
        self._zo_last_estimate = estimate
        self._zo_window.append(estimate)
        self.zo_work += estimate.work

    def floating_point_ops(self, inputs: dict[str, torch.Tensor | Any]) -> int:
        """Forward FLOPs actually spent by the last ZO step (``total_flos`` otherwise assumes backward)."""
        e = self._zo_last_estimate
        return 0 if e is None else e.work.flops

    # ----------------------------------------------------------------------------------------- logs
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.pop("grad_norm", None)
            if self._zo_window:
                g = torch.cat([e.scalars.flatten() for e in self._zo_window])
                logs["zo/projected_grad_mean"] = float(g.mean())
                logs["zo/projected_grad_abs_mean"] = float(g.abs().mean())
                logs["zo/projected_grad_std"] = float(g.std()) if g.numel() > 1 else 0.0
                nonfinite = sum(e.extras.get("nonfinite_scalars", 0.0) for e in self._zo_window)
                if nonfinite:
                    logs["zo/nonfinite_scalars"] = nonfinite
                self._zo_window.clear()
            logs.update({f"zo/{k}": float(v) for k, v in self.zo_work.to_dict().items()})
            if self.args.zo_clip:
                logs["zo/clipped_scalars"] = float(self.zo_optimizer.clipped_scalars)
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------------- trajectory
    def trajectory(self, *, base_model: str | None = None, base_revision: str | None = None,
                   command: str | None = None) -> Trajectory:
        """The run's trajectory record (it needs one ZO step: the block plan and the update log exist)."""
        optimizer = self.zo_optimizer
        if optimizer.pending:
            # Their perturbations already touched the weights but no update logged them yet.
            logger.warning("recording a trajectory with %d estimates pending (mid gradient accumulation): the "
                           "replay will not reproduce the current weights", len(optimizer.pending))
        args = self.args
        run = {"global_step": self.state.global_step, "totals": self.zo_work.to_dict(),
               "learning_rate": args.learning_rate, "weight_decay": args.weight_decay,
               "command": command if command is not None else current_command(),
               "training_args": json.loads(json.dumps(args.to_dict(), default=str))}
        return Trajectory.record(optimizer.estimator, optimizer.history, optimizer.trajectory_start, self.seed_scope,
                                 run, base_model=base_model, base_revision=base_revision)

    def save_trajectory(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
        """Write the run's trajectory checkpoint (default ``output_dir/zo_trajectory.json``); see
        :mod:`hf_fedzo.trajectory`. ``kwargs`` go to :meth:`trajectory` (``base_model``, ``command``…)."""
        return save_trajectory(path if path is not None else Path(self.args.output_dir) / TRAJECTORY_NAME, self,
                               **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as ``Trainer`` does, plus ``zo_trajectory.json`` once a step has run (checkpoints included)."""
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero() and self.zo_estimator is not None and self.zo_estimator.plan is not None:
            self.save_trajectory(Path(output_dir or self.args.output_dir) / TRAJECTORY_NAME)

    def run_record(self) -> dict[str, Any]:
        """The trajectory record as a dict, or the part of it known before the first step."""
        if self.zo_estimator is not None and self.zo_estimator.plan is not None:
            return self.trajectory().to_dict()
        from dataclasses import asdict

        return {
            "settings": asdict(self.args.zo_settings),
            "seed": {"base": self.seed_scope.base, "round": self.seed_scope.round, "client": self.seed_scope.client},
            "run": {"global_step": self.state.global_step, "totals": self.zo_work.to_dict(),
                    "learning_rate": self.args.learning_rate, "weight_decay": self.args.weight_decay},
        }

    # ------------------------------------------------------------------------------------ model card
    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None) -> None:
        """Write README.md describing the ZO run (transformers' card would claim an AdamW optimizer).

        Rendered by the same template and code as ``hf-fedzo push`` (:mod:`hf_fedzo.model_card`).
        """
        if not self.is_world_process_zero():
            return
        from hf_fedzo.model_card import card_info_from_record, card_tags, render_model_card

        record = self.run_record()
        metrics: dict[str, float] = {}
        for entry in self.state.log_history:  # the latest evaluation wins
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        datasets = card_tags(dataset_tags)
        names = card_tags(dataset)
        configs = card_tags(dataset_args)
        info = card_info_from_record(
            record,
            model_name=model_name or self.args.hub_model_id or Path(self.args.output_dir).name,
            repo_id=self.args.hub_model_id,
            base_model=finetuned_from,
            license=license,
            language=language,
            tags=[*self._tag_names, *card_tags(tags)],
            datasets=datasets,
            dataset_name=names[0] if names else None,
            dataset_config=configs[0] if configs else None,
            task_type=card_tags(tasks)[0] if tasks else None,
            metrics=metrics,
            trajectory_file=TRAJECTORY_NAME if "updates" in record else None,
        )
        render_model_card(info).save(os.path.join(self.args.output_dir, "README.md"))
