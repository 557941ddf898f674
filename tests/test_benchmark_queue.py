"""The benchmark queue's workers stop with the benchmark (benchmarks/accuracy_runs.py, ``stop_with_parent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = """
import multiprocessing, time
from concurrent.futures import ProcessPoolExecutor
from benchmarks.accuracy_runs import stop_with_parent

def worker_pid():
    import os
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=stop_with_parent)
    print(pool.submit(worker_pid).result(), flush=True)
    pool.submit(time.sleep, 600)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not status.exists() or status.read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_killing_the_benchmark_stops_its_workers(tmp_path):
    script = tmp_path / "benchmark.py"
    script.write_text(BENCHMARK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker = int(main.stdout.readline())
        assert alive(worker)
        main.send_signal(signal.SIGKILL)  # no clean shutdown: only the kernel can tell the worker
        main.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)
    finally:
        main.kill()
