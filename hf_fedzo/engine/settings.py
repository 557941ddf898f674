"""The ZO step's settings, declared once: the engine's ``ZOSettings`` and the ``zo_*`` flags that produce it.

``ZOArguments`` holds the ``--zo_*`` fields (defaults and help text) shared by ``ZOConfig`` (the trainer) and
``FederationConfig`` (a federation); both turn them into one ``ZOSettings`` with :meth:`ZOArguments.engine_settings`.
The defaults below are the only ones: P1=1, P2=2 with the split at 0.97 of the layer stack is the best point of
the estimator-quality benchmark's first-order theory (gradient quality per forward FLOP; 0.98 of MeZO's) and
led the earlier P2=4 / 0.9 on all three seeds of the powered federated comparison, by less than one standard
error each (docs/benchmarks.md; SmolLM2-135M with LoRA: a starting point to tune, not a law); ε=1e-3 is MeZO's
(LoRA runs want 1e-2, which is why ``FederationConfig``, whose runs fine-tune adapters, overrides that one
default).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from hf_fedzo.engine.perturbation import DEFAULT_PERTURBATION, PERTURBATIONS
from hf_fedzo.engine.split import parse_split

DEFAULT_EPS = 1e-3
DEFAULT_P1 = 1
DEFAULT_P2 = 2
DEFAULT_SPLIT = "0.97"
DIFFERENCES = ("central", "forward")
MAX_FORWARDS_PER_STEP = 10_000  # above this one step is almost surely a typo (zo_p1/zo_p2 swapped with a size)


@dataclass(frozen=True)
class ZOSettings:
    """What the engine needs to know about a ZO step; ``ZOConfig`` and ``FederationConfig`` both produce one."""

    eps: float = DEFAULT_EPS
    p1: int = DEFAULT_P1
    p2: int = DEFAULT_P2
    split: str | int | float = parse_split(DEFAULT_SPLIT)
    perturbation: str = DEFAULT_PERTURBATION
    difference: str = "central"
    layers_path: str | None = None

    def __post_init__(self) -> None:
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"zo_eps must be a finite number > 0 (got {self.eps})")
        for name in ("p1", "p2"):
            if getattr(self, name) < 1:
                raise ValueError(f"zo_{name} must be >= 1 (got {getattr(self, name)})")
        if self.difference not in DIFFERENCES:
            raise ValueError(f"zo_difference must be 'central' or 'forward' (got {self.difference!r})")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"zo_perturbation: unknown distribution {self.perturbation!r}; choose from "
                             f"{sorted(PERTURBATIONS)}")
        parse_split(self.split)  # raises naming zo_split

    @property
    def forwards_per_step(self) -> int:
        sides = 2 if self.difference == "central" else 1
        return sides * self.p1 + sides * self.p1 * self.p2 + (self.difference == "forward")

    def sanity_warnings(self) -> list[str]:
        """Settings that are valid but almost surely a mistake (callers warn with them, once)."""
        found = []
        if self.eps > 1:
            found.append(f"zo_eps={self.eps} is larger than typical weights: the finite differences measure noise, "
                         "not a gradient (usual values 1e-4 to 1e-2)")
        if self.forwards_per_step > MAX_FORWARDS_PER_STEP:
            found.append(f"zo_p1={self.p1}, zo_p2={self.p2}: one step would run {self.forwards_per_step} forwards "
                         f"(over {MAX_FORWARDS_PER_STEP})")
        return found


@dataclass
class ZOArguments:
    """The ``--zo_*`` flags of every entry point (``HfArgumentParser`` dataclass fields)."""

    zo_eps: float = field(
        default=DEFAULT_EPS,
        metadata={"help": "Perturbation scale ε of the two-point estimate (MeZO uses 1e-3; 1e-2 for LoRA)."},
    )
    zo_p1: int = field(
        default=DEFAULT_P1,
        metadata={"help": "P1: number of block-1 perturbations per step (each costs two block-1 forwards)."},
    )
    zo_p2: int = field(
        default=DEFAULT_P2,
        metadata={"help": "P2: block-2 perturbations evaluated on each cached block-1 activation pair (default "
                  "from the estimator-quality benchmark in docs/benchmarks.md)."},
    )
    zo_split: str = field(
        default=DEFAULT_SPLIT,
        metadata={
            "help": "Where block 2 starts: a fraction of the layer stack such as '0.97' (the default, best in the "
            "estimator-quality benchmark of docs/benchmarks.md), a layer index such as '6', 'auto' (balance measured "
            "block FLOPs so C1 ≈ P2·C2) or 'none' (one block, no activation caching)."
        },
    )
    zo_layers_path: str | None = field(
        default=None,
        metadata={"help": "Dotted path of the transformer layer ModuleList (e.g. 'model.layers') when it "
                  "cannot be found automatically."},
    )
    zo_perturbation: str = field(
        default=DEFAULT_PERTURBATION,
        metadata={"help": f"Distribution of the random directions: one of {sorted(PERTURBATIONS)}. The default "
                  "reads windows of a shared Gaussian table (about one memory pass); 'gaussian' draws mt19937 "
                  "normals as MeZO does (about 4 ns per element on CPU)."},
    )
    zo_difference: str = field(
        default="central",
        metadata={"help": "'central' (L(θ+εz) − L(θ−εz)) / 2ε or one-sided 'forward' (L(θ+εz) − L(θ)) / ε."},
    )
    # Step control, not part of the estimate: the trainer's optimizer clips before applying, a federation's
    # server before a scalar enters the log (hf_fedzo.engine.stability).
    zo_clip: float = field(
        default=0.0,
        metadata={"help": "Clip each projected gradient to ± zo_clip × the RMS of the last 64 applied ones (e.g. 3; "
                  "0: off): in the trainer before a step is applied, in a federation on the server before an "
                  "aggregated scalar enters the log. Cuts the rare outlier steps that collapse a model; see "
                  "docs/benchmarks.md."},
    )

    def __post_init__(self) -> None:
        if not (self.zo_clip >= 0 and math.isfinite(self.zo_clip)):
            raise ValueError(f"zo_clip must be a finite number >= 0 (got {self.zo_clip})")
        for message in self.engine_settings().sanity_warnings():  # also checks every zo_* value, naming the flag
            warnings.warn(message, stacklevel=3)

    def engine_settings(self, **overrides: Any) -> ZOSettings:
        """The engine's settings from the ``zo_*`` fields; ``overrides`` (same ``zo_*`` names) win."""
        values = {f.name: getattr(self, f.name) for f in fields(ZOArguments)} | overrides
        return ZOSettings(eps=values["zo_eps"], p1=values["zo_p1"], p2=values["zo_p2"],
                          split=parse_split(values["zo_split"]), perturbation=values["zo_perturbation"],
                          difference=values["zo_difference"], layers_path=values["zo_layers_path"])


def zo_field(name: str, default: Any) -> Any:
    """``ZOArguments``' field ``name`` with another default (same help): for an entry point whose typical
    model wants a different value, e.g. ``zo_eps`` for adapters."""
    (declared,) = (f for f in fields(ZOArguments) if f.name == name)
    return field(default=default, metadata=dict(declared.metadata))
