"""Cheap fingerprints a trajectory records so a failed replay can say which check failed.

* :func:`base_fingerprint`: the frozen base a run started from (config plus fixed slices of every
  tensor): a LoRA trajectory replayed onto another checkpoint of the same architecture is refused;
* :func:`log_digest`: the settings, block plan and update log, so an edited scalar, lr or eps is named
  as such instead of surfacing as an unexplained final-weights mismatch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hf_fedzo.engine.optimizer import ZOUpdate

__all__ = ["base_fingerprint", "log_digest"]

_SLICE = 64  # elements hashed at the start, middle and end of every base tensor
# Config keys that differ between two loads of the same base (where it was loaded from, library version, dtype).
_VOLATILE_CONFIG = {"transformers_version", "dtype", "torch_dtype", "architectures", "use_cache"}


def base_fingerprint(model: nn.Module, exclude: Iterable[str] = ()) -> str:
    """A cheap fingerprint of a model's frozen base: its config and the start, middle and end of every tensor.

    ``exclude`` names the trainable tensors (covered by the full initial fingerprint). Tensors are taken in
    module order without their names, so the plain base and the same base wrapped by PEFT (whose frozen
    weights move to ``…base_layer.weight``) fingerprint alike.
    """
    skip = set(exclude)
    digest = hashlib.sha256()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE_CONFIG}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in model.named_parameters():
        if name in skip or "lora_" in name:
            continue
        flat = tensor.detach().reshape(-1)
        middle = max(flat.numel() // 2 - _SLICE // 2, 0)
        digest.update(f"{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        for start in (0, middle, max(flat.numel() - _SLICE, 0)):
            digest.update(flat[start : start + _SLICE].cpu().contiguous().view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()


def log_digest(settings: Mapping[str, Any], plan: Mapping[str, Any], updates: Sequence[ZOUpdate]) -> str:
    """sha256 of what the replay applies: the settings, the block plan and every update (seeds, scalars, lr)."""
    payload = {"settings": dict(settings), "plan": dict(plan), "updates": [u.to_dict() for u in updates]}
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
