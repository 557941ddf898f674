"""``ZOSplitTrainer``: a drop-in ``transformers.Trainer`` that trains with forward passes only.

Only small public hooks are overridden (``create_optimizer``, ``training_step``, ``log``,
``floating_point_ops``, ``save_model``, ``create_model_card``); transformers' own loop drives epochs,
gradient accumulation, schedulers, callbacks, evaluation, checkpoints and resumption.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_fedzo.config import ZOConfig
from hf_fedzo.engine import (
    DivergenceError,
    SeedScope,
    WorkCounters,
    ZOEstimate,
    ZOEstimator,
    ZOOptimizer,
    input_shape,
)
from hf_fedzo.redaction import redact_command, redact_mapping
from hf_fedzo.trajectory.format import TRAJECTORY_NAME, read_record
from hf_fedzo.trajectory.record import Trajectory, checkpoint_prefix, current_command, save_trajectory
from hf_fedzo.trajectory.tensors import capture_start

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
OPTIMIZER_FILE = "optimizer.pt"  # = transformers' OPTIMIZER_NAME; it holds the ZO update history
TRAINER_STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence means "complete"


def checkpoint_problem(checkpoint: str | os.PathLike[str]) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a kill mid-save, a damaged optimizer.pt), or None.

    A ZO checkpoint must carry its ``optimizer.pt``: the update history and the trajectory's starting
    point live there, and resuming without them would silently lose the first steps of the trajectory.
    """
    folder = Path(checkpoint)
    state, optimizer = folder / TRAINER_STATE_FILE, folder / OPTIMIZER_FILE
    if not state.is_file():
        return f"{state} is missing (the checkpoint was not completely written)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{state} cannot be read ({type(err).__name__}: {err})"
    if not optimizer.is_file():
        return (f"{optimizer} is missing: it holds the ZO update history, without which the trajectory of the "
                "resumed run would lose its first steps")
    try:
        saved = torch.load(optimizer, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many types
        return f"{optimizer} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not isinstance(saved, dict) or not isinstance(saved.get("zo_history"), list):
        return f"{optimizer} is not a ZOOptimizer state (no zo_history)"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that can be resumed from; incomplete ones are reported."""
    folder = Path(output_dir)
    steps = sorted(((int(m[1]), p) for p in (folder.iterdir() if folder.is_dir() else [])
                    if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True)
    for _, path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
    return None


# Consecutive estimates in which no direction changed the loss at all: the model is saturated or destroyed
# (seen with learning rates of 1e3 and more), and further steps cannot move it. A healthy model has every
# one of P1·P2 directions land on exactly equal losses three times running with negligible probability.
FLAT_ESTIMATES_LIMIT = 3


class _DivergenceGuard(TrainerCallback):
    """Stops training right after an update that left a trainable tensor non-finite, before any save."""

    def __init__(self, trainer: ZOSplitTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        estimator = self.trainer.zo_estimator
        broken = estimator.nonfinite_parameters() if estimator is not None and estimator.plan is not None else []
        if broken:
            raise DivergenceError(
                f"step {state.global_step + 1}: the update made {len(broken)} trainable tensor(s) non-finite (first: "
                f"{broken[0]}); training stopped and nothing was saved. Use a smaller --learning_rate "
                f"(now {args.learning_rate}) or --zo_eps (now {args.zo_eps}).")

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # While no direction moves the loss the model may be destroyed: never let it replace a good checkpoint.
        if self.trainer._zo_flat_estimates and control.should_save:
            control.should_save = False

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # Trainer has just reloaded the best checkpoint's weights: the trajectory must end there too.
        if args.load_best_model_at_end and state.best_model_checkpoint:
            self.trainer.align_with_checkpoint(state.best_model_checkpoint)


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
        self._drop_foreign_optimizer()
        self.seed_scope = SeedScope(args.zo_base_seed)
        self.zo_estimator: ZOEstimator | None = None
        self._zo_micro_batch = 0
        self._zo_last_global_step = -1
        self._zo_last_estimate: ZOEstimate | None = None
        self.zo_work = WorkCounters()  # every step's forwards and FLOPs so far
        self._zo_window: list[ZOEstimate] = []
        self._zo_flat_estimates = 0
        self._zo_flat_since = 0
        self._zo_weights_from: dict[str, Any] = {}  # the checkpoint whose weights were reloaded, if any
        self.add_callback(_DivergenceGuard(self))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` skips (and reports) incomplete checkpoints, and a
        checkpoint without a loadable ``optimizer.pt`` is refused with a message naming the file."""
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {self.args.output_dir}")
            resume_from_checkpoint = found
        if resume_from_checkpoint and not self.args.save_only_model:
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(f"cannot resume from {resume_from_checkpoint}: {problem}")
        self._zo_weights_from = {}
        if resume_from_checkpoint and (Path(resume_from_checkpoint) / TRAJECTORY_NAME).is_file():
            # The work counters go on from the checkpoint's, as its update history does.
            saved = read_record(Path(resume_from_checkpoint) / TRAJECTORY_NAME)
            self.zo_work = WorkCounters.from_mapping(saved.get("run", {}).get("totals", {}))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _drop_foreign_optimizer(self) -> None:
        """``optimizers=`` / ``optimizer_cls_and_kwargs=`` from a Trainer script: ignored, with a warning."""
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            given = type(self.optimizer).__name__ if self.optimizer is not None else "optimizer_cls_and_kwargs"
            warnings.warn(f"optimizers: the given {given} is ignored; ZOSplitTrainer trains with its own ZOOptimizer "
                          "(lr and weight_decay from the args)", stacklevel=3)
            self.optimizer = self.optimizer_cls_and_kwargs = None
        if self.lr_scheduler is not None:
            warnings.warn(f"optimizers: the given {type(self.lr_scheduler).__name__} is ignored (it cannot drive the "
                          "ZOOptimizer, created later); use lr_scheduler_type and warmup_steps", stacklevel=3)
            self.lr_scheduler = None

    def align_with_checkpoint(self, checkpoint: str | os.PathLike[str]) -> None:
        """Cut the update history back to ``checkpoint``'s after its weights were reloaded into the model
        (``load_best_model_at_end``), so the trajectory saved next replays to the weights saved with it."""
        if self.zo_estimator is None or self.zo_estimator.plan is None:
            return  # no step was made: there is no history to cut
        optimizer = self.zo_optimizer
        try:
            count = checkpoint_prefix(checkpoint, optimizer.history, optimizer.estimator)
        except ValueError as err:
            logger.warning("the trajectory keeps all %d updates, which do not end at the weights now in the model: "
                           "%s", len(optimizer.history), err)
            return
        if count < len(optimizer.history):
            logger.info("trajectory cut back to the %d updates of %s (best model)", count, checkpoint)
            del optimizer.history[count:]
        self._zo_weights_from = {"weights_from_checkpoint": Path(checkpoint).name, "weights_after_updates": count}

    # ------------------------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = model if model is not None else self.model
            self.zo_estimator = ZOEstimator(target, self.args.zo_settings)
            params = [p for p in target.parameters() if p.requires_grad]
            if not params:  # torch would only say "optimizer got an empty parameter list"
                raise ValueError("the model has no trainable parameters (requires_grad=True): unfreeze some weights "
                                 "or add adapters (e.g. peft.get_peft_model) before training")
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

        estimate = optimizer.estimator.estimate(loss_fn, self._next_step_seed(), input_shape(inputs))
        if self.accelerator.num_processes > 1:
            # Same seeds everywhere, different data shards: averaging the scalars keeps replicas identical.
            packed = torch.cat([estimate.scalars.flatten(), torch.tensor([estimate.loss])]).to(self.args.device)
            packed = self.accelerator.reduce(packed, reduction="mean").cpu()
            estimate.scalars = packed[:-1].view_as(estimate.scalars).float()
            estimate.loss = float(packed[-1])
        self._check_progress(estimate)
        optimizer.accumulate(estimate)
        self._record(estimate)
        return torch.tensor(estimate.loss / self.current_gradient_accumulation_steps, device=self.args.device)

    def _check_progress(self, estimate: ZOEstimate) -> None:
        """Refuse to go on when no direction has changed the loss for ``FLAT_ESTIMATES_LIMIT`` estimates."""
        self._zo_flat_estimates = self._zo_flat_estimates + 1 if not bool(estimate.scalars.any()) else 0
        if self._zo_flat_estimates == 1:
            self._zo_flat_since = self.state.global_step  # the update of this step left the loss unresponsive
        if self._zo_flat_estimates >= FLAT_ESTIMATES_LIMIT:
            raise DivergenceError(
                f"step {self.state.global_step + 1}: no perturbation has changed the loss (now {estimate.loss:.6g}) "
                f"for {self._zo_flat_estimates} consecutive estimates: the model is saturated or destroyed. No "
                f"checkpoint was saved since; one saved at step {self._zo_flat_since} already holds these weights, "
                "resume from an earlier one. Use a smaller "
                f"--learning_rate (now {self.args.learning_rate}); if the loss is still sensible, a larger --zo_eps "
                f"(now {self.args.zo_eps}).")

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
               # Never record a secret: a recipe launched with --hub_token would otherwise publish it.
               "command": redact_command(command if command is not None else current_command()),
               "training_args": redact_mapping(json.loads(json.dumps(args.to_dict(), default=str))),
               **self._zo_weights_from}
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
