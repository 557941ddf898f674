"""One ZO step against the plain forwards it contains, and ZO peak memory against inference.

A LLaMA-shaped model of about 100M parameters is built from a config (random weights; speed and
memory do not depend on the values). For each setting the script times a full ZO step (perturb,
2·P1 block-1 and 2·P1·P2 block-2 forwards, restore, update) and the same forwards run plainly on the
unperturbed model, side by side in one process, and prints the ratio. Memory is the peak RSS of a
fresh subprocess running inference only versus one running ZO steps.

    python -m benchmarks.step_overhead            # targets: time <= 1.10, memory <= 1.15

Every direction law is timed: the default ``gaussian_table`` and ``rademacher_philox`` (``engine/noise.py``, about
one memory pass per perturbation) and MeZO's mt19937 ``gaussian`` (~4 ns per element). Beside each ratio is the
step's bandwidth floor: its plain forwards plus the bytes its direction passes must move (each pass reads and
writes the perturbed tensors and reads z) at the bandwidth measured by ``a.add_(b)`` in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.laws import law_label, laws_default_first
from hf_fedzo.engine import PERTURBATIONS, IndexedParameter, ZOEstimator, ZOOptimizer, ZOSettings
from hf_fedzo.engine.perturbation import DEFAULT_PERTURBATION
from hf_fedzo.engine.split import SplitExecutor, find_layer_stack


def build_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         num_key_value_heads=12, vocab_size=32000, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def make_batch(batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 32000, (batch, seq), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def lora(model: LlamaForCausalLM) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))


class MovedBytes:
    """Counts the bytes a step's direction passes must move at least: each pass reads and writes the perturbed
    tensors and reads one float32 z element per term (``DirectionApplier.add_`` wrapped, nothing else changed)."""

    def __init__(self, estimator: ZOEstimator) -> None:
        self.total = 0
        self._add = estimator.applier.add_
        estimator.applier.add_ = self.add_  # type: ignore[method-assign]

    def add_(self, params: Sequence[IndexedParameter], terms: Sequence[tuple[int, float]]) -> None:
        used = sum(1 for _, coef in terms if coef != 0.0)
        if used:
            self.total += sum(p.tensor.numel() * (2 * p.tensor.element_size() + 4 * used) for p in params)
        self._add(params, terms)


def bandwidth(threads: int, numel: int = 1 << 25, repeats: int = 5) -> float:
    """Measured memory bandwidth (bytes/s) of ``a.add_(b)`` on float32 tensors far larger than the caches."""
    torch.set_num_threads(threads)
    a, b = torch.zeros(numel), torch.ones(numel)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a.add_(b, alpha=1e-7)
        times.append(time.perf_counter() - start)
    return 3 * 4 * numel / statistics.median(times[1:])


def time_setting(model: torch.nn.Module, batch: dict[str, torch.Tensor], settings: ZOSettings,
                 repeats: int) -> tuple[float, float, int]:
    """Median ZO step time, median time of the same forwards run plainly, and the bytes one step's passes move."""
    estimator = ZOEstimator(model, settings)
    optimizer = ZOOptimizer([p for p in model.parameters() if p.requires_grad], estimator, lr=1e-7)

    def loss_fn() -> torch.Tensor:
        return model(**batch).loss

    plan = estimator.prepare(loss_fn)
    # The same split the estimator uses, run on the unperturbed model (None: no split, whole forwards).
    executor = None if plan.split_index is None else SplitExecutor(find_layer_stack(model, plan.layers_path)[1],
                                                                    plan.split_index)
    zo_times, plain_times = [], []
    for step in range(repeats + 1):
        start = time.perf_counter()
        optimizer.accumulate(estimator.estimate(loss_fn, step))
        optimizer.step()
        zo = time.perf_counter() - start
        # the same forwards, unperturbed
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(settings.p1):
                for _ in range(2):
                    if executor is None:
                        for _ in range(settings.p2):
                            loss_fn()
                    else:
                        hidden = executor.run_prefix(loss_fn)
                        for _ in range(settings.p2):
                            executor.run_suffix(loss_fn, hidden)
        plain = time.perf_counter() - start
        if step:  # the first round warms up allocators and thread pools
            zo_times.append(zo)
            plain_times.append(plain)
    moved = MovedBytes(estimator)  # one more step, untimed, to count its passes
    optimizer.accumulate(estimator.estimate(loss_fn, repeats + 1))
    optimizer.step()
    return statistics.median(zo_times), statistics.median(plain_times), moved.total


@torch.no_grad()
def mezo_reference_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], seed: int, eps: float = 1e-3,
                        lr: float = 1e-7) -> None:
    """MeZO's published step (princeton-nlp/MeZO ``zo_step`` + ``zo_update``): reseed the global RNG and draw
    ``torch.normal`` per parameter in each of four passes (+ε, −2ε, +ε, update) around two forwards."""
    params = [p for p in model.parameters() if p.requires_grad]

    def walk(scale: float, projected_grad: float | None = None) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            if projected_grad is None:
                p.data.add_(z, alpha=scale * eps)
            else:
                p.data.add_(z, alpha=-lr * projected_grad)

    walk(1.0)
    loss_plus = float(loss_fn())
    walk(-2.0)
    loss_minus = float(loss_fn())
    walk(1.0)
    walk(0.0, (loss_plus - loss_minus) / (2 * eps))


def time_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int) -> tuple[float, float]:
    def loss_fn() -> torch.Tensor:
        return model(**batch).loss

    reference_times, plain_times = [], []
    for step in range(repeats + 1):
        start = time.perf_counter()
        mezo_reference_step(model, loss_fn, step)
        reference = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            loss_fn()
            loss_fn()
        plain = time.perf_counter() - start
        if step:
            reference_times.append(reference)
            plain_times.append(plain)
    return statistics.median(reference_times), statistics.median(plain_times)


def peak_rss_child(mode: str, args: argparse.Namespace) -> float:
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_overhead", "--child", mode, "--batch", str(args.batch),
                          "--seq", str(args.seq)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


class RssSampler:
    """Peak resident memory over a phase (ru_maxrss would include the model's construction)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current_kib())
            time.sleep(0.002)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_mib(model: torch.nn.Module, batch: dict[str, torch.Tensor], mode: str,
                 settings: ZOSettings | None = None, steps: int = 2) -> float:
    """Peak resident memory (MiB) of the process while ``model`` runs ``steps`` steps of ``mode``: ``inference``
    forwards, ``adamw`` first-order steps, or ZO steps with ``settings`` (any other mode name)."""
    gc.collect()
    with RssSampler() as sampler:
        if mode == "inference":
            with torch.inference_mode():
                for _ in range(steps):
                    model(**batch)
        elif mode == "adamw":  # first-order fine-tuning: activations kept for backward, gradients, Adam moments
            optimizer_fo = torch.optim.AdamW(model.parameters(), lr=1e-7)
            model.train()
            for _ in range(steps):
                model(**batch).loss.backward()
                optimizer_fo.step()
                optimizer_fo.zero_grad(set_to_none=True)
        else:
            estimator = ZOEstimator(model, settings or ZOSettings())
            optimizer = ZOOptimizer(list(model.parameters()), estimator, lr=1e-7)
            for step in range(steps):
                optimizer.accumulate(estimator.estimate(lambda: model(**batch).loss, step))
                optimizer.step()
    return sampler.peak / 1024


def child(mode: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = build_model()
    batch = make_batch(args.batch, args.seq)
    steps = 3 if mode == "inference" else 2
    peak = peak_rss_mib(model, batch, mode, ZOSettings(p1=1, p2=4, split="auto"), steps=steps)
    print(json.dumps({"peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--laws", nargs="+", choices=sorted(PERTURBATIONS), default=None,
                        help="direction laws of the full-weight rows (default: the library's, gaussian, "
                             "rademacher_philox)")
    parser.add_argument("--child", choices=["inference", "zo", "adamw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, args.seq)
    model = build_model()
    n = sum(p.numel() for p in model.parameters())
    print(f"LLaMA-shaped model, {n / 1e6:.1f}M parameters, batch {args.batch}x{args.seq}, "
          f"{args.threads} threads, torch {torch.__version__}")
    bytes_per_s = bandwidth(args.threads)
    print(f"memory bandwidth (a.add_(b), float32, {args.threads} threads): {bytes_per_s / 1e9:.1f} GB/s")
    laws = args.laws or laws_default_first()
    settings_rows = []
    for law in laws:
        tag = law_label(law)
        settings_rows += [(f"full, MeZO (P1=1,P2=1,none), {tag}", ZOSettings(p1=1, p2=1, split="none",
                                                                             perturbation=law), False),
                          (f"full, FedSPZO (P1=1,P2=4,auto), {tag}", ZOSettings(p1=1, p2=4, split="auto",
                                                                               perturbation=law), False)]
    settings_rows.append((f"LoRA r8, FedSPZO (P1=1,P2=4,auto), {DEFAULT_PERTURBATION}",
                          ZOSettings(p1=1, p2=4, split="auto"), True))
    rows = []
    for label, settings, peft in settings_rows:
        target = lora(build_model()) if peft else model
        zo, plain, moved = time_setting(target, batch, settings, args.repeats)
        # The bandwidth floor of this step: its forwards plus the bytes its direction passes must move.
        floor = (plain + moved / bytes_per_s) / plain
        rows.append((label, zo, plain, floor))
        print(f"  {label:52s} ZO step {zo:7.3f}s  same forwards {plain:7.3f}s  ratio {zo / plain:5.2f}  "
              f"floor {floor:5.2f}", flush=True)
    reference, reference_plain = time_reference(model, batch, args.repeats)
    label = "full, MeZO reference (published)"
    print(f"  {label:52s} step    {reference:7.3f}s  same forwards {reference_plain:7.3f}s  "
          f"ratio {reference / reference_plain:5.2f}", flush=True)
    inference = peak_rss_child("inference", args)
    zo_peak = peak_rss_child("zo", args)
    adamw_peak = peak_rss_child("adamw", args)
    print(f"  peak RSS: inference {inference:.0f} MiB, ZO (full, P1=1,P2=4,auto) {zo_peak:.0f} MiB, "
          f"AdamW backprop {adamw_peak:.0f} MiB")
    print("ratios:")
    for label, zo, plain, floor in rows:
        print(f"  step time / plain forwards [{label}]: {zo / plain:.3f} (bandwidth floor {floor:.3f}; "
              "target <= 1.10)")
    ours = rows[0][1] / rows[0][2]
    print(f"  MeZO step time, ours / published reference (each over its own forwards): "
          f"{ours / (reference / reference_plain):.3f}")
    print(f"  ZO peak memory / inference peak memory: {zo_peak / inference:.3f} (target <= 1.15)")
    print(f"  AdamW peak memory / ZO peak memory: {adamw_peak / zo_peak:.2f} (target >= 3)")


if __name__ == "__main__":
    main()
