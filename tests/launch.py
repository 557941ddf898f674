"""Running scripts the way users do: as subprocesses, alone or under a 2-process `accelerate launch` on CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def offline_env() -> dict[str, str]:
    """One thread per process (2-process runs share the cores), offline, and this checkout importable."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_two_processes(script: Path, *args: str, cwd: Path = REPO,
                         timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) on a free port, not accelerate's fixed
    29500, which another run on a shared machine may hold."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script), *args]
    result = subprocess.run(cmd, env=offline_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result
