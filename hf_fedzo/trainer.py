"""``ZOSplitTrainer``: a drop-in ``transformers.Trainer`` that trains with forward passes only.

Only small public hooks are overridden (``create_optimizer``, ``training_step``, ``log``,
``floating_point_ops``, ``create_model_card``); transformers' own loop drives epochs, gradient
accumulation, schedulers, callbacks, evaluation, checkpoints and resumption.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_fedzo.config import ZOConfig
from hf_fedzo.engine import SeedScope, ZOEstimate, ZOEstimator, ZOOptimizer


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
                 seed_scope: SeedScope | None = None, **kwargs: Any) -> None:
        args = _as_zo_config(args)
        super().__init__(model, args, *pargs, **kwargs)
        self.seed_scope = seed_scope or SeedScope(args.zo_base_seed)
        self.zo_estimator: ZOEstimator | None = None
        self._zo_micro_batch = 0
        self._zo_last_global_step = -1
        self._zo_last_estimate: ZOEstimate | None = None
        self._zo_totals = {"forwards_block1": 0, "forwards_block2": 0, "flops_block1": 0, "flops_block2": 0}
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
                                         weight_decay=self.args.weight_decay)
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
        for key in self._zo_totals:
            self._zo_totals[key] += getattr(estimate, key)

    def floating_point_ops(self, inputs: dict[str, torch.Tensor | Any]) -> int:
        """Forward FLOPs actually spent by the last ZO step (``total_flos`` otherwise assumes backward)."""
        e = self._zo_last_estimate
        return 0 if e is None else e.flops_block1 + e.flops_block2

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
            logs.update({f"zo/{k}": float(v) for k, v in self._zo_totals.items()})
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------ model card
    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None) -> None:
        """Write README.md describing the ZO run (transformers' card would claim an AdamW optimizer)."""
        if not self.is_world_process_zero():
            return
        from hf_fedzo.model_card import render_model_card

        card = render_model_card(
            self.args, self.model, self.state, model_name=model_name, finetuned_from=finetuned_from,
            dataset=dataset, tags=[*self._tag_names, *([tags] if isinstance(tags, str) else tags or [])],
            language=language, license=license, totals=self._zo_totals,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))
