"""The ZO engine: seeded perturbations, split execution and the estimator. No Trainer imports here."""

from hf_fedzo.engine.estimator import DivergenceError, ZOEstimate, ZOEstimator
from hf_fedzo.engine.flops import input_shape
from hf_fedzo.engine.optimizer import ZOOptimizer, ZOUpdate, apply_updates
from hf_fedzo.engine.perturbation import (
    PERTURBATIONS,
    DirectionApplier,
    IndexedParameter,
    register_perturbation,
)
from hf_fedzo.engine.precision import LOWER_DTYPES, LoweredLinears, lower_dtype, lowerable_bytes
from hf_fedzo.engine.seeds import SeedScope, direction_seed, mix_seed
from hf_fedzo.engine.settings import ZOArguments, ZOSettings, zo_field
from hf_fedzo.engine.split import (
    SplitPlan,
    UnsupportedModelError,
    find_layer_stack,
    trainable_parameters,
    trainable_tensors,
)
from hf_fedzo.engine.stability import clip_scalars, clip_threshold, history_threshold, recent_scalars
from hf_fedzo.engine.work import WorkCounters

__all__ = [
    "LOWER_DTYPES",
    "PERTURBATIONS",
    "DirectionApplier",
    "DivergenceError",
    "IndexedParameter",
    "LoweredLinears",
    "SeedScope",
    "SplitPlan",
    "UnsupportedModelError",
    "WorkCounters",
    "ZOArguments",
    "ZOEstimate",
    "ZOEstimator",
    "ZOOptimizer",
    "ZOSettings",
    "ZOUpdate",
    "apply_updates",
    "clip_scalars",
    "clip_threshold",
    "direction_seed",
    "find_layer_stack",
    "history_threshold",
    "input_shape",
    "lower_dtype",
    "lowerable_bytes",
    "mix_seed",
    "recent_scalars",
    "register_perturbation",
    "trainable_parameters",
    "trainable_tensors",
    "zo_field",
]
