"""Replaying a trajectory: the fine-tuned weights rebuilt from the starting point and the (seed, scalar) log.

:func:`from_trajectory` repeats each step's perturb/restore arithmetic (restoring by subtraction is not exact in
floating point) and applies each update, without a single forward pass and without data, bit for bit on the
recorded device type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hf_fedzo.engine import IndexedParameter, SplitPlan, ZOEstimator, ZOSettings, apply_updates, trainable_parameters
from hf_fedzo.engine.perturbation import CHUNK_NUMEL
from hf_fedzo.fingerprints import base_fingerprint, log_digest
from hf_fedzo.trajectory.record import Trajectory, load_trajectory
from hf_fedzo.trajectory.tensors import TrajectoryMismatchError, decode_tensor, dtype_name, fingerprint


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
                p.tensor.copy_(decode_tensor(trajectory.initial_adapter[p.name]))
    if verify and fingerprint((p.name, p.tensor) for p in params) != trajectory.initial_fingerprint:
        raise TrajectoryMismatchError(
            "initial fingerprint check failed: the trainable tensors do not start where the run started: load the "
            f"recorded base model ({trajectory.base_model!r} at revision {trajectory.base_revision!r}, dtype "
            f"{trajectory.model_dtype})"
        )

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
        if list(p.tensor.shape) != rec["shape"] or dtype_name(p.tensor.dtype) != rec["dtype"]:
            raise TrajectoryMismatchError(
                f"{p.name}: the run trained a {rec['dtype']} tensor of shape {rec['shape']}, the model has "
                f"{dtype_name(p.tensor.dtype)} {list(p.tensor.shape)}"
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
