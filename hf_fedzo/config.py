"""``ZOConfig``: ``TrainingArguments`` plus the zeroth-order settings (TRL-style config dataclass)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_fedzo.engine import PERTURBATIONS, ZOSettings
from hf_fedzo.engine.split import parse_split


@dataclass
class ZOConfig(TrainingArguments):
    r"""Configuration for [`ZOSplitTrainer`]: every `TrainingArguments` field plus the ZO step.

    Only forward passes are run: a step is 2·P1 block-1 forwards and 2·P1·P2 block-2 forwards, and the
    update is regenerated from a seed, so memory stays at inference level. `zo_p1=1, zo_p2=1,
    zo_split="none"` is MeZO; `zo_p1=n, zo_split="none"` is n-SPSA.

    Defaults that only make sense with gradients are changed: `max_grad_norm=0` (there is no gradient to
    clip), `average_tokens_across_devices=False` (it adds a collective per step and rescales the loss),
    `lr_scheduler_type="constant"` and `logging_steps=10` (as MeZO's runs). Learning rates used by MeZO:
    1e-6/1e-7 for full weights, 1e-4/5e-5 for LoRA.
    """

    zo_eps: float = field(
        default=1e-3,
        metadata={"help": "Perturbation scale ε of the two-point estimate (MeZO uses 1e-3; 1e-2 for LoRA)."},
    )
    # The defaults P1=1, P2=4, split at 0.9 of the stack are the best arm of the split-placement sweep
    # (benchmarks/federated_accuracy.py, docs/benchmarks.md): one seed on SmolLM2-135M with LoRA, so a
    # starting point to tune, not a law.
    zo_p1: int = field(
        default=1,
        metadata={"help": "P1: number of block-1 perturbations per step (each costs two block-1 forwards)."},
    )
    zo_p2: int = field(
        default=4,
        metadata={"help": "P2: block-2 perturbations evaluated on each cached block-1 activation pair (default "
                  "from the split-placement sweep in docs/benchmarks.md)."},
    )
    zo_split: str = field(
        default="0.9",
        metadata={
            "help": "Where block 2 starts: a fraction of the layer stack such as '0.9' (the default, best in the "
            "split-placement sweep of docs/benchmarks.md), a layer index such as '6', 'auto' (balance measured "
            "block FLOPs so C1 ≈ P2·C2) or 'none' (one block, no activation caching)."
        },
    )
    zo_layers_path: str | None = field(
        default=None,
        metadata={"help": "Dotted path of the transformer layer ModuleList (e.g. 'model.layers') when it "
                  "cannot be found automatically."},
    )
    zo_perturbation: str = field(
        default="gaussian",
        metadata={"help": f"Distribution of the random directions: one of {sorted(PERTURBATIONS)}."},
    )
    zo_difference: str = field(
        default="central",
        metadata={"help": "'central' (L(θ+εz) − L(θ−εz)) / 2ε or one-sided 'forward' (L(θ+εz) − L(θ)) / ε."},
    )
    zo_clip: float = field(
        default=0.0,
        metadata={"help": "Clip each projected gradient to ± zo_clip × the RMS of the last 64 applied ones (e.g. 3; "
                  "0: off). Cuts the rare outlier steps that collapse a model; see docs/benchmarks.md."},
    )
    zo_seed: int | None = field(
        default=None,
        metadata={"help": "Base seed of every perturbation (defaults to `seed`). Seeds derive from (zo_seed, "
                  "global step, micro-batch, perturbation index), so resumed runs regenerate them exactly."},
    )

    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Must stay 0: zeroth-order updates have no gradient to clip."}
    )
    average_tokens_across_devices: bool = field(
        default=False, metadata={"help": "Must stay False: ZO losses are averaged per step, not per token."}
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "The scheduler type to use."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})

    def __post_init__(self) -> None:
        self.zo_split = parse_split(self.zo_split)  # type: ignore[assignment]
        if self.fp16:
            raise ValueError(
                "fp16: AMP fp16 needs gradients for its GradScaler, which ZO training has none of. Use bf16=True, "
                "or load the model in half precision (dtype=torch.float16) and keep fp16=False."
            )
        if self.deepspeed:
            raise ValueError("deepspeed: ZOSplitTrainer does not support DeepSpeed yet (parameters must be whole "
                             "on every rank to be perturbed in place).")
        if self.fsdp:
            raise ValueError("fsdp: ZOSplitTrainer does not support FSDP yet (parameters must be whole on every "
                             "rank to be perturbed in place).")
        if self.max_grad_norm:
            raise ValueError(f"max_grad_norm={self.max_grad_norm}: ZO updates have no gradient to clip; set it to 0.")
        if self.average_tokens_across_devices:
            raise ValueError("average_tokens_across_devices=True: ZO losses are averaged per step; set it to False.")
        if self.gradient_checkpointing:
            warnings.warn("gradient_checkpointing has no effect without backward passes; disabling it.", stacklevel=2)
            self.gradient_checkpointing = False
        if self.zo_perturbation not in PERTURBATIONS:
            raise ValueError(f"zo_perturbation: unknown distribution {self.zo_perturbation!r}; choose from "
                             f"{sorted(PERTURBATIONS)}")
        if not (self.zo_clip >= 0 and math.isfinite(self.zo_clip)):
            raise ValueError(f"zo_clip must be a finite number >= 0 (got {self.zo_clip})")
        for name in ("learning_rate", "weight_decay"):  # NaN passes every range check and trains an all-NaN model
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number (got {getattr(self, name)})")
        for message in self.zo_settings.sanity_warnings():  # also validates eps, P1, P2 and the difference scheme
            warnings.warn(message, stacklevel=2)
        super().__post_init__()

    @property
    def zo_settings(self) -> ZOSettings:
        return ZOSettings(
            eps=self.zo_eps,
            p1=self.zo_p1,
            p2=self.zo_p2,
            split=self.zo_split,
            perturbation=self.zo_perturbation,
            difference=self.zo_difference,
            layers_path=self.zo_layers_path,
        )

    @property
    def zo_base_seed(self) -> int:
        return self.seed if self.zo_seed is None else self.zo_seed
