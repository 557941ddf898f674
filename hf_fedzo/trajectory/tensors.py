"""Tensor fingerprints and exact tensor encoding for trajectory records (the starting point of a run)."""

from __future__ import annotations

import base64
import hashlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from hf_fedzo.engine import trainable_parameters
from hf_fedzo.fingerprints import base_fingerprint

HASH_CHUNK = 1 << 24  # elements copied to host at a time while hashing (bounded host memory on GPU)


class TrajectoryMismatchError(ValueError):
    """The model a trajectory is replayed onto is not the one the run started from (or ran on)."""


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in the given order."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        digest.update(f"{name}|{dtype_name(tensor.dtype)}|{list(tensor.shape)}\n".encode())
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), HASH_CHUNK):
            chunk = flat[start : start + HASH_CHUNK].cpu().contiguous()
            digest.update(chunk.view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    """A JSON-able exact copy: dtype, shape and the raw bytes (or ``zeros``, as LoRA B starts)."""
    tensor = tensor.detach().cpu().contiguous()
    entry: dict[str, Any] = {"dtype": dtype_name(tensor.dtype), "shape": list(tensor.shape)}
    if not torch.count_nonzero(tensor):
        entry["zeros"] = True  # LoRA B starts at zero: no need to store it
    else:
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        entry["byteorder"] = sys.byteorder
        entry["base64"] = base64.b64encode(raw).decode("ascii")
    return entry


def decode_tensor(entry: Mapping[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"])
    shape = [int(n) for n in entry["shape"]]
    if entry.get("zeros"):
        return torch.zeros(shape, dtype=dtype)
    if entry.get("byteorder", sys.byteorder) != sys.byteorder:
        raise TrajectoryMismatchError(f"initial adapter was stored {entry['byteorder']}-endian; this host is not")
    raw = bytearray(base64.b64decode(entry["base64"]))
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()


def capture_start(model: nn.Module) -> dict[str, Any]:
    """What a trajectory needs to know about the starting point, taken before the first step.

    Always a fingerprint of the trainable tensors; for PEFT models also their values, which no
    checkpoint on the Hub holds (a full-weight run starts from the base model itself).
    """
    params = trainable_parameters(model)
    start: dict[str, Any] = {"initial_fingerprint": fingerprint((p.name, p.tensor) for p in params),
                             "base_fingerprint": base_fingerprint(model, (p.name for p in params))}
    if hasattr(model, "peft_config"):
        start["initial_adapter"] = {p.name: encode_tensor(p.tensor) for p in params}
    return start
