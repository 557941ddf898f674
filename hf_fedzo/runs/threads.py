"""How many threads torch uses in a recipe's process: chosen from the process layout, never from the load.

Policy, first match wins:

1. ``--threads N`` (the recipe flag);
2. ``OMP_NUM_THREADS`` when set (by you, or by ``accelerate launch``, which sets it for every process it starts);
3. under a launcher that starts several processes per machine (``LOCAL_WORLD_SIZE`` > 1): the usable cores
   divided by that number, at least 1, so the processes do not fight over cores;
4. otherwise the usable cores: the CPUs this process may run on (``os.sched_getaffinity``, so ``taskset`` and
   CPU-pinned containers count), capped by the physical cores (hyper-threads slow matrix products down) and by
   a cgroup CPU quota when there is one.

The count never depends on how busy the machine is when the run starts: the thread count can change float
rounding, so a run must not change its numbers because another program happened to be running. When the machine
is busy, a line says so and how to use fewer threads.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by the physical cores and a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil  # an accelerate dependency

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    if physical:
        cores = min(cores, physical)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return max(1, cores)


def choose_threads(requested: int | None = None, environ: Mapping[str, str] | None = None,
                   cores: int | None = None) -> tuple[int, str]:
    """The torch thread count for this process and the reason, by the policy in this module's docstring."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:  # anything else is ignored, as OpenMP itself ignores it (with a warning)
        return int(omp), "OMP_NUM_THREADS"
    cores = usable_cores() if cores is None else cores
    local = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:
        return max(1, cores // local), f"{cores} usable cores / {local} processes on this machine"
    return cores, f"{cores} usable cores"


def configure_threads(requested: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads by :func:`choose_threads`, note when the machine is busy; return the count and
    why."""
    import torch

    threads, reason = choose_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.info("torch threads: %d (%s)", threads, reason)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = usable_cores()
    if threads > 1 and load >= cores:
        from hf_fedzo.progress import announce

        # Several threads of one process wait on each other at every matrix product: when other processes hold
        # the cores, each wait is a scheduler time slice, and a run can take several times longer.
        announce(f"note: the load average is {load:.1f} on {cores} cores; with other busy processes, "
                 f"{threads} torch threads can be much slower than one. If this run is slow, rerun with "
                 "OMP_NUM_THREADS=1 (or --threads 1).")
    return threads, reason


__all__ = ["choose_threads", "configure_threads", "usable_cores"]
