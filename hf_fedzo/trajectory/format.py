"""The trajectory file: its name, format tag and version, and reading/writing it. No torch here, so the Hub
upload (:mod:`hf_fedzo.hub`) can use it without loading a model stack."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_fedzo.reporting import write_atomic

TRAJECTORY_NAME = "zo_trajectory.json"
FORMAT = "hf_fedzo.zo_trajectory"
FORMAT_VERSION = 2  # 2: base_fingerprint and log_digest
SEED_DERIVATION = (
    "step_seed = mix_seed(base, round, client, global_step, micro_batch); "
    "direction = mix_seed(step_seed, block, i, j); chunk = mix_seed(direction, parameter_index, chunk_index)"
)


def trajectory_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or the ``zo_trajectory.json`` inside it when it is a run folder."""
    path = Path(path)
    return path / TRAJECTORY_NAME if path.is_dir() else path


def check_format(data: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``data`` is a trajectory this hf_fedzo can read."""
    if data.get("format") != FORMAT:
        raise ValueError(f"not a hf_fedzo trajectory (format={data.get('format')!r}, expected {FORMAT!r})")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"trajectory format_version {data['format_version']} is newer than this hf_fedzo "
                         f"understands ({FORMAT_VERSION}); upgrade hf_fedzo")


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The trajectory file's JSON (format checked), from a file or a run folder."""
    data = json.loads(trajectory_path(path).read_text(encoding="utf-8"))
    check_format(data)
    return data


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write a trajectory's JSON atomically (a run folder gets ``zo_trajectory.json`` inside it)."""
    text = json.dumps(dict(record), indent=1) + "\n"
    return write_atomic(trajectory_path(path), lambda handle: handle.write(text.encode()))
