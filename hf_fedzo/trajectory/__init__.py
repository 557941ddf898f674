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

Modules, by job: :mod:`.format` (file name, format tag, JSON I/O; no torch), :mod:`.tensors` (fingerprints,
exact tensor encoding, the starting point), :mod:`.record` (the :class:`Trajectory` record, save/load),
:mod:`.replay` (:func:`from_trajectory`). The names below are imported lazily, so ``hf_fedzo.trajectory.format``
loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hf_fedzo.trajectory.format import FORMAT, FORMAT_VERSION, SEED_DERIVATION, TRAJECTORY_NAME

_EXPORTS = {
    "Trajectory": "hf_fedzo.trajectory.record",
    "load_trajectory": "hf_fedzo.trajectory.record",
    "save_trajectory": "hf_fedzo.trajectory.record",
    "current_command": "hf_fedzo.trajectory.record",
    "TrajectoryMismatchError": "hf_fedzo.trajectory.tensors",
    "capture_start": "hf_fedzo.trajectory.tensors",
    "fingerprint": "hf_fedzo.trajectory.tensors",
    "from_trajectory": "hf_fedzo.trajectory.replay",
}

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SEED_DERIVATION",
    "TRAJECTORY_NAME",
    "Trajectory",
    "TrajectoryMismatchError",
    "capture_start",
    "current_command",
    "fingerprint",
    "from_trajectory",
    "load_trajectory",
    "save_trajectory",
]

if TYPE_CHECKING:
    from hf_fedzo.trajectory.record import Trajectory, current_command, load_trajectory, save_trajectory
    from hf_fedzo.trajectory.replay import from_trajectory
    from hf_fedzo.trajectory.tensors import TrajectoryMismatchError, capture_start, fingerprint


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hf_fedzo.trajectory' has no attribute {name!r}")
