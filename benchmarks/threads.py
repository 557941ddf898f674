"""Torch threads per process on a busy machine: the demo's local step with 1 thread and with the policy's count,
alone and beside one competing CPU-bound process; with several threads, under OpenMP's default wait policy and
with passive waits (``OMP_WAIT_POLICY=PASSIVE``, what importing hf_fedzo first sets).

The step is the demo's (FedSPZO P1=1, P2=4, split at 0.9; LoRA r=8 on q_proj/v_proj; batch 8) on the
SmolLM2-135M shape (random weights: speed does not depend on the values). Every measurement runs in a fresh
process, since an OpenMP pool keeps its size for the life of a process; the competitor is a pure-Python busy
loop started just before it and ended just after.

    python -m benchmarks.threads                    # 1 thread vs the policy's count (hf_fedzo.runs.threads)
    python -m benchmarks.threads --threads 1 2 4 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BUSY_LOOP = "while True: pass"


def worker(threads: int, steps: int, seq: int) -> dict[str, float]:
    """Time ``steps`` ZO steps (after one warm-up) in this process with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    from benchmarks.smollm2_shape import smollm2_shaped, token_batch
    from hf_fedzo.engine import ZOEstimator, ZOSettings

    model = smollm2_shaped(lora_r=8)
    batch = token_batch(8, seq)
    estimator = ZOEstimator(model, ZOSettings(eps=1e-2, p1=1, p2=4, split=0.9))

    def loss() -> torch.Tensor:
        return model(**batch).loss

    estimator.prepare(loss)
    times = []
    with torch.no_grad():
        for step in range(steps + 1):
            started = time.perf_counter()
            estimator.estimate(loss, step_seed=step)
            if step:  # the first step warms caches and the thread pool
                times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def measure(threads: int, competitor: bool, steps: int, seq: int, wait_policy: str | None) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if wait_policy is not None:  # None: OpenMP's own default (spin a while, then sleep)
        env["OMP_WAIT_POLICY"] = wait_policy
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if competitor else None
    try:
        # torch is imported first, so OpenMP reads the wait policy set here before the benchmarks package (which
        # imports hf_fedzo, which defaults it to PASSIVE) can change it.
        worker_code = "import torch; from benchmarks.threads import main; main()"
        out = subprocess.run([sys.executable, "-c", worker_code, "--worker", "--threads", str(threads),
                              "--steps", str(steps), "--seq", str(seq)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to compare (default: 1 and the policy's count for this machine)")
    parser.add_argument("--steps", type=int, default=4, help="timed ZO steps per measurement (after one warm-up)")
    parser.add_argument("--seq", type=int, default=48, help="tokens per sequence (the demo's prompts: 30-64)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.threads[0], args.steps, args.seq)))
        return {}

    from hf_fedzo.runs.threads import choose_threads, usable_cores

    policy, reason = choose_threads(None, {})  # what a plain `python recipes/federated.py` picks here
    counts = args.threads or sorted({1, policy})
    print(f"usable cores {usable_cores()}, policy {policy} ({reason}); load average at start "
          f"{os.getloadavg()[0]:.1f}; one demo step = FedSPZO P1=1 P2=4 split 0.9, LoRA r=8, batch 8 x {args.seq}")
    results = {}
    for competitor in (False, True):
        for threads in counts:
            for wait_policy in (None, "PASSIVE") if threads > 1 else (None,):
                waits = {None: ", default waits", "PASSIVE": ", passive waits"}[wait_policy] if threads > 1 else ""
                key = f"{threads} thread(s){waits}, {'one competing process' if competitor else 'alone'}"
                results[key] = measure(threads, competitor, args.steps, args.seq, wait_policy)
                r = results[key]
                print(f"{key:<58} {r['median_s']:7.2f} s/step (min {r['min_s']:.2f}, max {r['max_s']:.2f})",
                      flush=True)
    return results


if __name__ == "__main__":
    main()
