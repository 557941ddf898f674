"""Trajectory checkpoints: a whole ZO fine-tune as its starting point plus a (seed, scalar) log.

A ZO run never needs to store weights: every update is ``θ ← θ(1 − lr·wd) − lr · Σ g·z(seed)`` with
``z`` regenerated from the seed. ``zo_trajectory.json`` records what that replay needs and what it
should check:

* the starting point: base model id and revision (the trainable tensors of a full-weight run *are*
  the base), the PEFT config and, for adapter runs, the adapter's initial values (see below), and a
  sha256 of the initial trainable tensors;
* the ZO settings (ε, P1, P2, split, perturbation, difference scheme) and the resolved block plan
  (which trainable tensor belongs to which block: it decides which direction moves which tensor);
* the seed derivation (base seed, round, client) and the chunk size z is generated in;
* the trainable-parameter names, shapes and dtypes in random-stream order, the device type the run
  used (CPU and CUDA generators give different z for one seed), and library versions;
* the log itself: per optimizer step the micro-batch seeds, the P1×P2 scalars, lr and weight decay;
* a sha256 of the final trainable tensors, which a replay must reproduce;
* a fingerprint of the frozen base (its config and a few fixed slices of every other tensor: cheap, and
  enough to tell a different checkpoint of the same architecture), and a sha256 of the log and settings,
  so a failed replay says which check failed: another base, an edited log, or another device/random
  stream. Verification needs both fingerprints: a file without them is refused unless ``verify=False``.

Why the adapter's initial values are stored rather than its init seed: PEFT draws ``lora_A`` from the
*global* torch RNG inside ``get_peft_model``, so its values depend on everything that consumed that RNG
before (model construction, other adapters) and on the PEFT version's init scheme (some schemes, such
as PiSSA or EVA, even depend on data). Storing the tensors is exact and version-proof and small
(r·(d_in + d_out) per adapted matrix, ~2 MB for SmolLM2-135M with r=8 on q/v); ``lora_B`` starts at
zero and is stored as a flag.

:func:`from_trajectory` rebuilds the fine-tuned weights bit for bit on the recorded device type: it
repeats each step's perturb/restore arithmetic (restoring by subtraction is not exact in floating
point) and applies each update, without a single forward pass and without data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_fedzo.engine.optimizer import ZOUpdate, apply_updates
from hf_fedzo.engine.perturbation import CHUNK_NUMEL, IndexedParameter
from hf_fedzo.engine.split import SplitPlan, trainable_parameters
from hf_fedzo.fingerprints import base_fingerprint, log_digest
from hf_fedzo.redaction import redact_argv, redact_command, redact_mapping
from hf_fedzo.reporting import write_atomic

if TYPE_CHECKING:
    from hf_fedzo.trainer import ZOSplitTrainer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TRAJECTORY_NAME",
    "Trajectory",
    "TrajectoryMismatchError",
    "capture_start",
    "fingerprint",
    "from_trajectory",
    "load_trajectory",
    "save_trajectory",
]

logger = logging.getLogger(__name__)

TRAJECTORY_NAME = "zo_trajectory.json"
FORMAT = "hf_fedzo.zo_trajectory"
FORMAT_VERSION = 2  # 2: base_fingerprint and log_digest
SEED_DERIVATION = (
    "step_seed = mix_seed(base, round, client, global_step, micro_batch); "
    "direction = mix_seed(step_seed, block, i, j); chunk = mix_seed(direction, parameter_index, chunk_index)"
)
_HASH_CHUNK = 1 << 24  # elements copied to host at a time while hashing (bounded host memory on GPU)


class TrajectoryMismatchError(ValueError):
    """The model a trajectory is replayed onto is not the one the run started from (or ran on)."""


# -------------------------------------------------------------------------------------------- tensors
def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in the given order."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), _HASH_CHUNK):
            chunk = flat[start : start + _HASH_CHUNK].cpu().contiguous()
            digest.update(chunk.view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _encode_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    tensor = tensor.detach().cpu().contiguous()
    entry: dict[str, Any] = {"dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape)}
    if not torch.count_nonzero(tensor):
        entry["zeros"] = True  # LoRA B starts at zero: no need to store it
    else:
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        entry["byteorder"] = sys.byteorder
        entry["base64"] = base64.b64encode(raw).decode("ascii")
    return entry


def _decode_tensor(entry: Mapping[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"])
    shape = [int(n) for n in entry["shape"]]
    if entry.get("zeros"):
        return torch.zeros(shape, dtype=dtype)
    if entry.get("byteorder", sys.byteorder) != sys.byteorder:
        raise TrajectoryMismatchError(f"initial adapter was stored {entry['byteorder']}-endian; this host is not")
    raw = bytearray(base64.b64decode(entry["base64"]))
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()


# ---------------------------------------------------------------------------------------- the record
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
        if data.get("format") != FORMAT:
            raise ValueError(f"not a hf_fedzo trajectory (format={data.get('format')!r}, expected {FORMAT!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"trajectory format_version {data['format_version']} is newer than this hf_fedzo "
                             f"understands ({FORMAT_VERSION}); upgrade hf_fedzo")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["updates"] = [ZOUpdate.from_dict(u) for u in data["updates"]]
        return cls(**fields)

    # ------------------------------------------------------------------------------------ builders
    @classmethod
    def from_trainer(cls, trainer: ZOSplitTrainer, *, base_model: str | None = None,
                     base_revision: str | None = None, command: str | None = None) -> Trajectory:
        """Record a ``ZOSplitTrainer`` that has run at least one step (its plan and history exist)."""
        optimizer = trainer.zo_optimizer
        estimator = optimizer.estimator
        if estimator.plan is None:
            raise RuntimeError("the trainer has not run a ZO step yet: there is no block plan to record")
        if not optimizer.keep_history:
            raise RuntimeError("the ZOOptimizer was built with keep_history=False: there is no update log to record")
        if optimizer.pending:
            # Their perturbations already touched the weights but no update logged them yet.
            logger.warning("recording a trajectory with %d estimates pending (mid gradient accumulation): the "
                           "replay will not reproduce the current weights", len(optimizer.pending))
        from hf_fedzo import __version__

        model = estimator.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        name_or_path = getattr(config, "_name_or_path", None) or None
        params = estimator.plan.parameters
        start = optimizer.trajectory_start
        settings, plan = asdict(estimator.settings), _plan_dict(estimator.plan)
        peft_config = adapter_name = None
        if hasattr(model, "peft_config"):
            adapter_name = getattr(model, "active_adapter", None) or "default"
            peft_config = _peft_config_dict(model.peft_config[adapter_name])
        args = trainer.args
        scope = trainer.seed_scope
        return cls(
            settings=settings,
            plan=plan,
            parameters=[{"name": p.name, "shape": list(p.tensor.shape), "dtype": _dtype_name(p.tensor.dtype),
                         "decay": p.decay} for p in params],
            updates=list(optimizer.history),
            device_type=params[0].tensor.device.type,
            seed={"base": scope.base, "round": scope.round, "client": scope.client, "derivation": SEED_DERIVATION,
                  "chunk_numel": CHUNK_NUMEL},
            base_model=base_model or name_or_path,
            base_revision=base_revision or getattr(config, "_commit_hash", None),
            model_class=type(base).__name__,
            model_dtype=_dtype_name(base.dtype) if isinstance(getattr(base, "dtype", None), torch.dtype) else None,
            peft_config=peft_config,
            adapter_name=adapter_name,
            initial_adapter=start.get("initial_adapter"),
            initial_fingerprint=start.get("initial_fingerprint"),
            final_fingerprint=fingerprint((p.name, p.tensor) for p in params),
            base_fingerprint=start.get("base_fingerprint"),
            log_digest=log_digest(settings, plan, optimizer.history),
            versions=_versions(__version__),
            run={
                "global_step": trainer.state.global_step,
                "totals": dict(getattr(trainer, "_zo_totals", {})),
                "learning_rate": args.learning_rate,
                "weight_decay": args.weight_decay,
                # Never record a secret: a recipe launched with --hub_token would otherwise publish it.
                "command": redact_command(command if command is not None else current_command()),
                "training_args": redact_mapping(json.loads(json.dumps(args.to_dict(), default=str))),
            },
        )


def _plan_dict(plan: SplitPlan) -> dict[str, Any]:
    return {
        "layers_path": plan.layers_path,
        "num_layers": plan.num_layers,
        "split_index": plan.split_index,
        "block1": [p.name for p in plan.block1],
        "block2": [p.name for p in plan.block2],
        "tied": [p.name for p in plan.tied],
    }


def _peft_config_dict(config: Any) -> dict[str, Any]:
    # Sets (target_modules) are not JSON: write them sorted so the file is deterministic.
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def _versions(hf_fedzo_version: str) -> dict[str, str]:
    import transformers

    versions = {"hf_fedzo": hf_fedzo_version, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        pass
    return versions


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


def capture_start(model: nn.Module) -> dict[str, Any]:
    """What a trajectory needs to know about the starting point, taken before the first step.

    Always a fingerprint of the trainable tensors; for PEFT models also their values, which no
    checkpoint on the Hub holds (a full-weight run starts from the base model itself).
    """
    params = trainable_parameters(model)
    start: dict[str, Any] = {"initial_fingerprint": fingerprint((p.name, p.tensor) for p in params),
                             "base_fingerprint": base_fingerprint(model, (p.name for p in params))}
    if hasattr(model, "peft_config"):
        start["initial_adapter"] = {p.name: _encode_tensor(p.tensor) for p in params}
    return start


# ------------------------------------------------------------------------------------------ file I/O
def save_trajectory(path: str | os.PathLike[str], trajectory: Trajectory | ZOSplitTrainer, **kwargs: Any) -> Path:
    """Write ``trajectory`` (or record a trainer first) as JSON, atomically; returns the path.

    A folder as ``path`` gets ``zo_trajectory.json`` inside it.
    """
    if not isinstance(trajectory, Trajectory):
        trajectory = Trajectory.from_trainer(trajectory, **kwargs)
    path = Path(path)
    if path.is_dir():
        path = path / TRAJECTORY_NAME
    text = json.dumps(trajectory.to_dict(), indent=1) + "\n"
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def load_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file (or the ``zo_trajectory.json`` in a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAJECTORY_NAME
    return Trajectory.from_dict(json.loads(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------------------------------- replay
def from_trajectory(model_or_path: nn.Module | str | os.PathLike[str] | None,
                    trajectory: Trajectory | str | os.PathLike[str], *, verify: bool = True,
                    dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                    **from_pretrained_kwargs: Any) -> nn.Module:
    """Rebuild a run's fine-tuned model from its starting point and its trajectory.

    ``model_or_path`` is the base model (an ``nn.Module``, a local folder or a Hub id; ``None`` loads the
    recorded base id at the recorded revision with the recorded model class). For a PEFT run the
    recorded adapter config is applied to a plain base and the adapter's recorded initial values are
    loaded; a model that is already a ``PeftModel`` is used as it is. The model's trainable set is made
    exactly the run's (other parameters get ``requires_grad=False``), then every step is retraced and
    applied in place. Returns the model, fine-tuned.

    The replay must run on the recorded device type: CPU and CUDA generators draw different z for the
    same seed. With ``verify`` (default) the log digest, the base fingerprint and the starting and final
    trainable tensors are checked, and a :class:`TrajectoryMismatchError` says which check failed; a
    trajectory without its fingerprints is refused (pass ``verify=False`` to replay it unchecked). When
    a check fails, a model passed in is left as it was (values, trainable flags, no adapter added).
    """
    if not isinstance(trajectory, Trajectory):
        trajectory = load_trajectory(trajectory)
    if verify:
        _check_record(trajectory)
    _check_environment(trajectory)
    model = _load_base(model_or_path, trajectory, dtype, device, from_pretrained_kwargs)
    device_type = next(model.parameters()).device.type
    if device_type != trajectory.device_type:
        raise TrajectoryMismatchError(
            f"the run used {trajectory.device_type!r} and the model is on {device_type!r}: CPU and CUDA generators "
            f"draw different z for one seed, so the replay must run on {trajectory.device_type!r} (pass "
            f"device={trajectory.device_type!r} or move the model there)"
        )
    recorded = set(trajectory.parameter_names)
    if verify and trajectory.base_fingerprint not in (None, base_fingerprint(model, recorded)):
        raise TrajectoryMismatchError(
            "base fingerprint check failed: the frozen base weights or config differ from the run's base "
            f"({trajectory.base_model!r} at revision {trajectory.base_revision!r}, dtype {trajectory.model_dtype})")
    flags = {name: tensor.requires_grad for name, tensor in model.named_parameters()}
    wrapped = trajectory.is_peft and not hasattr(model, "peft_config")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        if wrapped:
            from peft import get_peft_config, get_peft_model

            model = get_peft_model(model, get_peft_config(dict(trajectory.peft_config or {})),
                                   adapter_name=trajectory.adapter_name or "default")
        for name, tensor in model.named_parameters():
            tensor.requires_grad_(name in recorded)
        params = _matching_parameters(model, trajectory)
        # A copy of what the replay overwrites, so a failed check hands the caller's model back unchanged.
        saved = [(p.tensor, p.tensor.detach().to("cpu", copy=True)) for p in params]
        _replay_checked(model, params, trajectory, verify)
    except BaseException:
        with torch.no_grad():
            for tensor, copy in saved:
                tensor.copy_(copy)
        if wrapped and hasattr(model, "unload"):
            model = model.unload()  # takes the adapter layers out again
        for name, tensor in model.named_parameters():
            if name in flags:
                tensor.requires_grad_(flags[name])
        raise
    return model


def _check_record(trajectory: Trajectory) -> None:
    """What can be checked without a model: the fingerprints exist and the log is the one recorded."""
    missing = [name for name in ("initial_fingerprint", "final_fingerprint") if getattr(trajectory, name) is None]
    if missing:
        raise TrajectoryMismatchError(f"the trajectory has no {' or '.join(missing)}: it cannot be verified; pass "
                                      "verify=False to replay it unchecked")
    if trajectory.log_digest is not None and trajectory.log_digest != log_digest(
            trajectory.settings, trajectory.plan, trajectory.updates):
        raise TrajectoryMismatchError("log digest check failed: the update log or the ZO settings (scalars, lr, "
                                      "weight decay, eps, plan) were edited after the run")


def _replay_checked(model: nn.Module, params: list[IndexedParameter], trajectory: Trajectory, verify: bool) -> None:
    with torch.no_grad():
        if trajectory.initial_adapter is not None:
            for p in params:
                p.tensor.copy_(_decode_tensor(trajectory.initial_adapter[p.name]))
    if verify and fingerprint((p.name, p.tensor) for p in params) != trajectory.initial_fingerprint:
        raise TrajectoryMismatchError(
            "initial fingerprint check failed: the trainable tensors do not start where the run started: load the "
            f"recorded base model ({trajectory.base_model!r} at revision {trajectory.base_revision!r}, dtype "
            f"{trajectory.model_dtype})"
        )

    from hf_fedzo.engine import ZOEstimator, ZOSettings

    estimator = ZOEstimator(model, ZOSettings(**trajectory.settings))
    estimator.plan = _plan_from_dict(trajectory.plan, params)
    with torch.no_grad():
        apply_updates(estimator, trajectory.updates, retrace=True)
    if verify and fingerprint((p.name, p.tensor) for p in params) != trajectory.final_fingerprint:
        raise TrajectoryMismatchError(
            "final fingerprint check failed (the log, base and start all matched): the replay did not reproduce "
            f"the trained weights, so it ran on another device type than the run's ({trajectory.device_type}) or "
            f"other torch random streams (versions recorded: {trajectory.versions}; here torch {torch.__version__})"
        )


def _check_environment(trajectory: Trajectory) -> None:
    chunk = trajectory.seed.get("chunk_numel", CHUNK_NUMEL)
    if chunk != CHUNK_NUMEL:
        raise TrajectoryMismatchError(f"the run generated z in chunks of {chunk} elements, this hf_fedzo in chunks "
                                      f"of {CHUNK_NUMEL}: the random streams differ")


def _load_base(model_or_path: nn.Module | str | os.PathLike[str] | None, trajectory: Trajectory,
               dtype: torch.dtype | str | None, device: str | torch.device | None,
               kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(model_or_path, nn.Module):
        return model_or_path.to(device) if device is not None else model_or_path
    source = str(model_or_path) if model_or_path is not None else trajectory.base_model
    if not source:
        raise ValueError("the trajectory records no base model id: pass the base model (or its path) explicitly")
    import transformers

    cls = getattr(transformers, trajectory.model_class or "", None)
    if cls is None:
        raise ValueError(f"unknown model class {trajectory.model_class!r}: load the base model yourself and pass it")
    if model_or_path is None and trajectory.base_revision and "revision" not in kwargs:
        kwargs["revision"] = trajectory.base_revision
    kwargs.setdefault("dtype", dtype or trajectory.model_dtype or "auto")
    model = cls.from_pretrained(source, **kwargs)
    return model.to(device or trajectory.device_type)


def _matching_parameters(model: nn.Module, trajectory: Trajectory) -> list[IndexedParameter]:
    params = trainable_parameters(model)
    names = [p.name for p in params]
    if names != trajectory.parameter_names:
        missing = [n for n in trajectory.parameter_names if n not in set(names)]
        extra = [n for n in names if n not in set(trajectory.parameter_names)]
        raise TrajectoryMismatchError(
            f"the model's trainable tensors are not the run's ({len(names)} vs {len(trajectory.parameter_names)}; "
            f"missing {missing[:3]}, unexpected {extra[:3]}): is it the same architecture and adapter config?"
        )
    for p, rec in zip(params, trajectory.parameters, strict=True):
        if list(p.tensor.shape) != rec["shape"] or _dtype_name(p.tensor.dtype) != rec["dtype"]:
            raise TrajectoryMismatchError(
                f"{p.name}: the run trained a {rec['dtype']} tensor of shape {rec['shape']}, the model has "
                f"{_dtype_name(p.tensor.dtype)} {list(p.tensor.shape)}"
            )
    return params


def _plan_from_dict(plan: Mapping[str, Any], params: Sequence[IndexedParameter]) -> SplitPlan:
    """The run's block assignment without a traced forward: replay needs no data."""
    by_name = {p.name: p for p in params}
    return SplitPlan(
        layers_path=plan["layers_path"],
        num_layers=int(plan["num_layers"]),
        split_index=plan["split_index"],
        block1=[by_name[n] for n in plan["block1"]],
        block2=[by_name[n] for n in plan["block2"]],
        tied=[by_name[n] for n in plan["tied"]],
    )
