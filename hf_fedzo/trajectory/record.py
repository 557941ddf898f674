"""The trajectory record: everything needed to rebuild (and check) a ZO run's fine-tuned trainable tensors."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hf_fedzo.engine import SeedScope, SplitPlan, ZOEstimator, ZOUpdate
from hf_fedzo.engine.perturbation import CHUNK_NUMEL
from hf_fedzo.fingerprints import log_digest
from hf_fedzo.redaction import redact_argv
from hf_fedzo.trajectory.format import (
    FORMAT,
    FORMAT_VERSION,
    SEED_DERIVATION,
    TRAJECTORY_NAME,
    check_format,
    read_record,
    write_record,
)
from hf_fedzo.trajectory.tensors import dtype_name, fingerprint

logger = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """Everything needed to rebuild (and check) a ZO run's fine-tuned trainable tensors."""

    settings: dict[str, Any]
    plan: dict[str, Any]
    parameters: list[dict[str, Any]]
    updates: list[ZOUpdate]
    device_type: str
    seed: dict[str, Any]
    base_model: str | None = None
    base_revision: str | None = None
    model_class: str | None = None
    model_dtype: str | None = None
    peft_config: dict[str, Any] | None = None
    adapter_name: str | None = None
    initial_adapter: dict[str, dict[str, Any]] | None = None  # name -> encoded tensor
    initial_fingerprint: str | None = None
    final_fingerprint: str | None = None
    base_fingerprint: str | None = None
    log_digest: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def parameter_names(self) -> list[str]:
        return [p["name"] for p in self.parameters]

    @property
    def is_peft(self) -> bool:
        return self.peft_config is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["updates"] = [u.to_dict() for u in self.updates]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trajectory:
        check_format(data)
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["updates"] = [ZOUpdate.from_dict(u) for u in data["updates"]]
        return cls(**fields)

    @classmethod
    def record(cls, estimator: ZOEstimator, updates: Sequence[ZOUpdate], start: Mapping[str, Any],
               seed_scope: SeedScope, run: Mapping[str, Any], *, base_model: str | None = None,
               base_revision: str | None = None) -> Trajectory:
        """Record a run from its estimator (which has run a step: its plan exists), its update log, what
        :func:`~hf_fedzo.trajectory.capture_start` took before the first step, its seeds and ``run`` details."""
        if estimator.plan is None:
            raise RuntimeError("the run has not made a ZO step yet: there is no block plan to record")
        from hf_fedzo import __version__

        model = estimator.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        name_or_path = getattr(config, "_name_or_path", None) or None
        params = estimator.plan.parameters
        settings, plan = asdict(estimator.settings), plan_dict(estimator.plan)
        peft_config = adapter_name = None
        if hasattr(model, "peft_config"):
            adapter_name = getattr(model, "active_adapter", None) or "default"
            peft_config = peft_config_dict(model.peft_config[adapter_name])
        return cls(
            settings=settings,
            plan=plan,
            parameters=[{"name": p.name, "shape": list(p.tensor.shape), "dtype": dtype_name(p.tensor.dtype),
                         "decay": p.decay} for p in params],
            updates=list(updates),
            device_type=params[0].tensor.device.type,
            seed={"base": seed_scope.base, "round": seed_scope.round, "client": seed_scope.client,
                  "derivation": SEED_DERIVATION, "chunk_numel": CHUNK_NUMEL},
            base_model=base_model or name_or_path,
            base_revision=base_revision or getattr(config, "_commit_hash", None),
            model_class=type(base).__name__,
            model_dtype=dtype_name(base.dtype) if isinstance(getattr(base, "dtype", None), torch.dtype) else None,
            peft_config=peft_config,
            adapter_name=adapter_name,
            initial_adapter=start.get("initial_adapter"),
            initial_fingerprint=start.get("initial_fingerprint"),
            final_fingerprint=fingerprint((p.name, p.tensor) for p in params),
            base_fingerprint=start.get("base_fingerprint"),
            log_digest=log_digest(settings, plan, updates),
            versions=versions(__version__),
            run=dict(run),
        )


def plan_dict(plan: SplitPlan) -> dict[str, Any]:
    return {
        "layers_path": plan.layers_path,
        "num_layers": plan.num_layers,
        "split_index": plan.split_index,
        "block1": [p.name for p in plan.block1],
        "block2": [p.name for p in plan.block2],
        "tied": [p.name for p in plan.tied],
    }


def peft_config_dict(config: Any) -> dict[str, Any]:
    # Sets (target_modules) are not JSON: write them sorted so the file is deterministic.
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def versions(hf_fedzo_version: str) -> dict[str, str]:
    import transformers

    found = {"hf_fedzo": hf_fedzo_version, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        found["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        pass
    return found


def current_command() -> str:
    """This process's command line as one would type it again (``python train.py …``, ``python -m pkg …``),
    with secrets (``--hub_token``, token-shaped values) redacted."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if script.name == "__main__.py":
        head = ["python", "-m", script.parent.name]
    elif script.suffix == ".py":
        head = ["python", str(script)]
    else:
        head = [script.name]
    return shlex.join([*head, *redact_argv(sys.argv[1:])])


class Recordable(Protocol):
    """Anything that records its own trajectory (``ZOSplitTrainer``)."""

    def trajectory(self, **kwargs: Any) -> Trajectory: ...


def save_trajectory(path: str | os.PathLike[str], trajectory: Trajectory | Recordable, **kwargs: Any) -> Path:
    """Write ``trajectory`` (or ``trajectory.trajectory(**kwargs)`` of a trainer) as JSON, atomically; returns
    the path. A folder as ``path`` gets ``zo_trajectory.json`` inside it."""
    if not isinstance(trajectory, Trajectory):
        trajectory = trajectory.trajectory(**kwargs)
    return write_record(path, trajectory.to_dict())


def load_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file (or the ``zo_trajectory.json`` in a run folder)."""
    return Trajectory.from_dict(read_record(path))


def checkpoint_prefix(checkpoint: str | os.PathLike[str], updates: Sequence[ZOUpdate], estimator: ZOEstimator) -> int:
    """How many of ``updates`` the model's weights hold, now that they were reloaded from ``checkpoint``
    (``load_best_model_at_end``): the length of the checkpoint's own update log, once checked to be a prefix
    of ``updates`` and to end at the current trainable tensors. Raises ``ValueError`` naming what differs."""
    path = Path(checkpoint) / TRAJECTORY_NAME
    try:
        saved = Trajectory.from_dict(read_record(path))
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    count = len(saved.updates)
    if list(updates[:count]) != saved.updates:
        raise ValueError(f"{path}: its update log is not the start of this run's log (another run's checkpoint?)")
    if estimator.plan is None or fingerprint((p.name, p.tensor) for p in estimator.parameters) != \
            saved.final_fingerprint:
        raise ValueError(f"{path}: the model's trainable tensors are not the ones this checkpoint saved")
    return count
