"""Peak memory of inference, ZO (MeZO and FedSPZO defaults) and AdamW backprop on LLaMA-shaped models.

Each measurement runs in a fresh subprocess: it builds a random-weight LLaMA-shaped model (≈110M, ≈350M, ≈1B
parameters, tied embeddings, vocabulary 32000) directly in the requested dtype, then samples its resident memory
(RSS) while running two steps of the method. The peak RSS of an empty process that imported the same libraries
is subtracted, so the numbers are what the method itself holds (weights, activations, gradients, optimizer state,
direction buffers), not the ~0.5 GiB of libraries every process carries.

    python -m benchmarks.memory --sizes 110M 350M 1B --dtypes float32 bfloat16 --batch 2 --seq 32

A child whose estimated need exceeds the memory available now is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.step_overhead import RssSampler, peak_rss_mib
from hf_fedzo.engine import ZOSettings

SHAPES = {  # hidden, intermediate, layers, heads
    "110M": (768, 2048, 12, 12),
    "350M": (1024, 2816, 24, 16),
    "1B": (2048, 5632, 18, 32),
}
MODES = ("empty", "inference", "mezo", "fedspzo", "adamw")
# Bytes per parameter a mode holds beyond the libraries, for the skip check (AdamW: weights, grads, two moments).
BYTES_PER_PARAM = {"empty": 0, "inference": 1, "mezo": 1, "fedspzo": 1, "adamw": 4}


def build(size: str, dtype: torch.dtype) -> LlamaForCausalLM:
    hidden, inter, layers, heads = SHAPES[size]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are created in the dtype: no float32 copy first
    try:
        return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)


def param_count(size: str) -> int:
    hidden, inter, layers, _ = SHAPES[size]
    return 32000 * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + hidden


def child(size: str, dtype_name: str, mode: str, batch: int, seq: int) -> None:
    torch.set_num_threads(2)
    dtype = getattr(torch, dtype_name)
    if mode == "empty":
        gc.collect()
        print(json.dumps({"peak_mib": RssSampler.current_kib() / 1024}))
        return
    model = build(size, dtype)
    ids = torch.randint(0, 32000, (batch, seq), generator=torch.Generator().manual_seed(1))
    settings = ZOSettings(p1=1, p2=1, split="none") if mode == "mezo" else ZOSettings()  # MeZO; FedSPZO defaults
    print(json.dumps({"peak_mib": peak_rss_mib(model, {"input_ids": ids, "labels": ids}, mode, settings)}))


def available_mib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1024


def estimated_mib(size: str, dtype: str, mode: str) -> float:
    """What ``mode`` holds at least: its bytes per parameter (``BYTES_PER_PARAM``) times the parameters."""
    element = torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    return param_count(size) * element * BYTES_PER_PARAM[mode] / 2**20


def run_child(size: str, dtype: str, mode: str, args: argparse.Namespace) -> float | None:
    # Leave the machine room for everything else running.
    if estimated_mib(size, dtype, mode) + 1024 > 0.85 * available_mib():
        return None
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", size, dtype, mode,
                          "--batch", str(args.batch), "--seq", str(args.seq)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--budget_gib", type=float, default=8.0,
                        help="report the largest measured model each method fits in this much memory")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.budget_gib < float("inf"):  # also refuses nan
        parser.error(f"--budget_gib must be a positive number of GiB, got {args.budget_gib}")
    if args.child:
        child(*args.child, batch=args.batch, seq=args.seq)
        return
    print(f"LLaMA-shaped random-weight models, batch {args.batch}x{args.seq}, peak RSS minus an empty process's "
          f"(MiB); torch {torch.__version__}")
    print("| model | dtype | params | inference | MeZO | FedSPZO | AdamW | ZO/inference | AdamW/ZO |")
    print("|---|---|---|---|---|---|---|---|---|")
    fits: dict[tuple[str, str], str] = {}  # (dtype, mode) -> largest size within the budget
    for size in sorted(args.sizes, key=param_count):
        for dtype in args.dtypes:
            empty = run_child(size, dtype, "empty", args)
            assert empty is not None
            peaks = {mode: run_child(size, dtype, mode, args) for mode in MODES[1:]}
            held = {mode: None if peak is None else peak - empty for mode, peak in peaks.items()}
            for mode, value in held.items():
                if value is not None and value <= args.budget_gib * 1024:
                    fits[dtype, mode] = size
                elif value is None and estimated_mib(size, dtype, mode) <= args.budget_gib * 1024:
                    fits[dtype, mode] = f"unknown (the {size} run was skipped)"  # too big for this machine only
            zo = max((v for k, v in held.items() if k in ("mezo", "fedspzo") and v is not None), default=None)

            def cell(value: float | None) -> str:
                return "skipped" if value is None else f"{value:.0f}"

            ratio_zo = "-" if zo is None or held["inference"] is None else f"{zo / held['inference']:.2f}"
            ratio_adamw = "-" if zo is None or held["adamw"] is None else f"{held['adamw'] / zo:.2f}"
            print(f"| {size} | {dtype} | {param_count(size) / 1e6:.0f}M | {cell(held['inference'])} | "
                  f"{cell(held['mezo'])} | {cell(held['fedspzo'])} | {cell(held['adamw'])} | {ratio_zo} | "
                  f"{ratio_adamw} |", flush=True)
    for dtype in args.dtypes:  # a run skipped because it needs more than the budget does not fit
        print(f"largest measured model within {args.budget_gib:g} GiB ({dtype}): " + ", ".join(
            f"{mode} {fits.get((dtype, mode), 'none')}" for mode in MODES[1:]))


if __name__ == "__main__":
    main()
