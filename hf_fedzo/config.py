"""``ZOConfig``: ``TrainingArguments`` plus the zeroth-order settings (TRL-style config dataclass)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_fedzo.engine import ZOArguments, ZOSettings
from hf_fedzo.engine.split import parse_split

ZO_STEP = "ZOSplitTrainer always steps its own ZOOptimizer (θ ← θ·(1 − lr·weight_decay) − lr·ĝ)"
# TrainingArguments fields that only configure a gradient optimizer: ZO training ignores them (warned, by name).
IGNORED_OPTIMIZER_OPTIONS = {
    "optim": ZO_STEP,
    "optim_args": ZO_STEP,
    "optim_target_modules": ZO_STEP,
    "adam_beta1": f"{ZO_STEP}, which keeps no moments",
    "adam_beta2": f"{ZO_STEP}, which keeps no moments",
    "adam_epsilon": f"{ZO_STEP}, which keeps no moments",
    "neftune_noise_alpha": "NEFTune adds noise only in training mode, and ZO forwards run in eval mode",
}


@dataclass
class ZOConfig(TrainingArguments, ZOArguments):
    r"""Configuration for [`ZOSplitTrainer`]: every `TrainingArguments` field plus the ZO step.

    The `zo_*` fields, their defaults and help come from [`~hf_fedzo.engine.ZOArguments`] (shared with
    `FederationConfig`); `zo_seed` is the trainer's own.

    Only forward passes are run: a step is 2·P1 block-1 forwards and 2·P1·P2 block-2 forwards, and the
    update is regenerated from a seed, so memory stays at inference level. `zo_p1=1, zo_p2=1,
    zo_split="none"` is MeZO; `zo_p1=n, zo_split="none"` is n-SPSA.

    Defaults that only make sense with gradients are changed: `max_grad_norm=0` (there is no gradient to
    clip), `average_tokens_across_devices=False` (it adds a collective per step and rescales the loss) and
    `logging_steps=10`. The LR schedule keeps `TrainingArguments`' default (`linear`, decaying to 0), so a
    script gets the same schedule whether it swaps only `Trainer` or both classes; MeZO's runs used
    `lr_scheduler_type="constant"`, which the recipes set. Learning rates used by MeZO: 1e-6/1e-7 for full
    weights, 1e-4/5e-5 for LoRA (AdamW's 5e-5 default is far too large for full-weight ZO).

    Options that only configure a gradient optimizer (`optim`, `optim_args`, `adam_*`, ...) are ignored with
    a warning naming each; `fp16`, DeepSpeed and FSDP are refused (see `__post_init__`).
    """

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
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "The scheduler type to use: TrainingArguments' default (linear), so swapping only Trainer or "
                  "both classes gives one schedule; MeZO's runs (and the recipes) use constant."},
    )
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
        # gradient_checkpointing is transformers' deprecated alias of activation_checkpointing: both are turned off.
        named = [n for n in ("activation_checkpointing", "gradient_checkpointing") if getattr(self, n)]
        if named:
            warnings.warn(f"{named[0]}=True has no effect without backward passes; disabling it.", stacklevel=2)
        self.activation_checkpointing = self.gradient_checkpointing = False
        for name, reason in IGNORED_OPTIMIZER_OPTIONS.items():
            value = getattr(self, name)
            if str(getattr(value, "value", value)) != str(TrainingArguments.__dataclass_fields__[name].default):
                warnings.warn(f"{name}={getattr(value, 'value', value)!r} is ignored: {reason}", stacklevel=2)
        ZOArguments.__post_init__(self)  # TrainingArguments.__post_init__ does not chain to it
        for name in ("learning_rate", "weight_decay"):  # NaN passes every range check and trains an all-NaN model
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number (got {getattr(self, name)})")
        super().__post_init__()

    @property
    def zo_settings(self) -> ZOSettings:
        return self.engine_settings()

    @property
    def zo_base_seed(self) -> int:
        return self.seed if self.zo_seed is None else self.zo_seed
