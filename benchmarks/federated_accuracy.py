"""Compute to accuracy (FedSPZO vs federated MeZO vs n-SPSA, several seeds) and the split-placement sweep.

Both questions are answered by the same kind of run: a federation on real SmolLM2-135M-Instruct (LoRA r=8
on q_proj/v_proj) fine-tuned on the VADER movie sentences with MeZO's SST-2 prompt, 8 clients with a
Dirichlet(0.5) label skew, 4 sampled per round, 4 local steps of 8 sentences, every arm stopped once its
clients have spent the same forward FLOPs. Each arm is evaluated on the same validation sentences about every
``--eval_every_tflops``, so its curve is accuracy against cumulative forward FLOPs (zero-shot at 0).

1. **Compute to accuracy** (``--seeds``; same partition, sampling, data order and directions per seed):
   federated MeZO runs at two step sizes and the one with the higher mean final accuracy is the baseline;
   the target is its final accuracy on that seed; a method's cost is the FLOPs at which its curve first
   reaches the target (linear between evaluations); the ratio is the baseline's cost over the method's.
6. **Split placement** (``--sweep_seeds``): FedSPZO at several split layers and P2, plus the no-split arms
   (MeZO is P2=1, n-SPSA is P2=4 without split), ranked by the mean accuracy over the budget (the area
   under the accuracy-vs-FLOPs curve divided by the budget: accuracy per FLOP spent, less noisy than the
   last point alone).

Every run is kept in ``--output_dir/<arm>/seed<k>/`` (the federation's own resumable state): an interrupted
benchmark continues where it stopped, and a finished run is reused. ``--workers 2`` runs two federations
side by side with one thread each (about 15% more throughput than one run on two threads here).

    hf-fedzo prepare-assets
    python -m benchmarks.federated_accuracy --workers 2      # about 2 hours on 2 cores (15 runs of 32 TFLOPs)
    python -m benchmarks.federated_accuracy --report_only    # tables and plots from the finished runs
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

BASELINES = ("mezo", "mezo-lr2e-3")  # item 1: federated MeZO at two step sizes; the better one is the target
COMPARED = (*BASELINES, "nspsa", "fedspzo")


@dataclass(frozen=True)
class Arm:
    """One federated ZO configuration; the remaining knobs are shared by every arm."""

    name: str
    method: str
    zo_p2: int
    zo_split: str
    zo_p1: int = 1
    learning_rate: float | None = None  # None: the setup's, shared by every arm

    @property
    def label(self) -> str:
        lr = "" if self.learning_rate is None else f", lr {self.learning_rate:g}"
        if self.method == "mezo":
            return f"MeZO (P=1, no split{lr})"
        if self.method == "nspsa":
            return f"n-SPSA (P={self.zo_p2}, no split{lr})"
        return f"FedSPZO (P1={self.zo_p1}, P2={self.zo_p2}, split {self.zo_split}{lr})"


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("mezo", "mezo", zo_p2=1, zo_split="none"),
    # MeZO's single direction is the noisiest estimate: it also gets a smaller step, and the comparison uses
    # whichever of its two step sizes ends higher, so the baseline is not handicapped by a shared lr.
    Arm("mezo-lr2e-3", "mezo", zo_p2=1, zo_split="none", learning_rate=2e-3),
    Arm("nspsa", "nspsa", zo_p2=4, zo_split="none"),
    Arm("fedspzo", "fedspzo", zo_p2=4, zo_split="auto"),
    # The sweep: the split layer at P2=4 (auto puts it at C1 = P2*C2), then P2 at the automatic split.
    Arm("fedspzo-split15", "fedspzo", zo_p2=4, zo_split="15"),
    Arm("fedspzo-split27", "fedspzo", zo_p2=4, zo_split="27"),
    Arm("fedspzo-p2-2", "fedspzo", zo_p2=2, zo_split="auto"),
    Arm("fedspzo-p2-8", "fedspzo", zo_p2=8, zo_split="auto"),
)}
SWEPT = ("mezo", "nspsa", "fedspzo-split15", "fedspzo", "fedspzo-split27", "fedspzo-p2-2", "fedspzo-p2-8")


@dataclass(frozen=True)
class Setup:
    """What every arm shares: model, data, federation shape, step size and budget."""

    model: str
    eval_samples: int
    budget_tflops: float
    eval_every_tflops: float
    num_clients: int = 8
    clients_per_round: int = 4
    local_steps: int = 4
    batch_size: int = 8
    learning_rate: float = 5e-3
    zo_eps: float = 1e-2
    dirichlet_alpha: float = 0.5
    lora_r: int = 8
    max_length: int = 64


# ---------------------------------------------------------------- running (one federation per worker call)

@cache
def _shared(model_path: str, max_length: int) -> tuple[Any, Any, Any]:
    """Tokenizer, task and VADER splits, loaded once per worker process."""
    from hf_fedzo.data import load_task_dataset
    from hf_fedzo.runs import ModelArguments, load_tokenizer
    from hf_fedzo.tasks import load_task

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=model_path), kind="causal")
    task = load_task("sst2", tokenizer, model_kind="causal", max_length=max_length)
    return tokenizer, task, load_task_dataset("vader")


def _model(setup: Setup, seed: int) -> Any:
    import torch

    from hf_fedzo.runs import ModelArguments, load_model

    torch.manual_seed(seed)  # the LoRA initialisation, as the federated recipe does
    args = ModelArguments(model_name_or_path=setup.model, peft="lora", lora_r=setup.lora_r,
                          lora_alpha=2 * setup.lora_r, lora_target_modules=["q_proj", "v_proj"])
    return load_model(args, "causal")


def zero_shot(setup: Setup) -> float:
    """Validation accuracy of the prompt alone (LoRA starts at B = 0, so every arm starts here)."""
    _, task, raw = _shared(setup.model, setup.max_length)
    validation = raw["validation"].select(range(setup.eval_samples))
    return float(task.evaluate(_model(setup, 0), validation, batch_size=32)["accuracy"])


def run_arm(setup: Setup, arm: Arm, seed: int, output_dir: str, threads: int | None) -> dict[str, Any]:
    """One federation of ``arm`` on ``seed`` until the FLOP budget is spent; its curve and cost figures."""
    import torch

    from hf_fedzo.engine import ZOEstimator
    from hf_fedzo.federation import FederationConfig, simulate_federation, task_batch_loss, task_clients

    if threads:
        torch.set_num_threads(threads)
    _, task, raw = _shared(setup.model, setup.max_length)
    validation = raw["validation"].select(range(setup.eval_samples))
    config = FederationConfig(
        method=arm.method, num_clients=setup.num_clients, clients_per_round=setup.clients_per_round,
        rounds=100_000, local_steps=setup.local_steps, batch_size=setup.batch_size,
        learning_rate=setup.learning_rate if arm.learning_rate is None else arm.learning_rate,
        zo_eps=setup.zo_eps, zo_p1=arm.zo_p1, zo_p2=arm.zo_p2,
        zo_split=arm.zo_split, partition="dirichlet", dirichlet_alpha=setup.dirichlet_alpha, seed=seed,
        flop_budget=setup.budget_tflops * 1e12)
    clients, _ = task_clients(task, raw["train"], config)
    model = _model(setup, seed)
    batch_loss = task_batch_loss(task)

    # The resolved block plan, from one traced forward of a client batch: split layer and block costs.
    settings = config.round_settings()
    probe = clients[0].round_batches(seed, 0, 0, 1, setup.batch_size)[0]
    estimator = ZOEstimator(model, settings.zo)
    with torch.no_grad():
        estimator.prepare(lambda: batch_loss(model, probe))
    split_index = estimator.plan.split_index
    c1, c2 = estimator.plan.block_flops(split_index)
    step_forwards = (2 * arm.zo_p1 * c1 + 2 * arm.zo_p1 * settings.zo.p2 * c2) / (c1 + c2)
    round_tflops = step_forwards * (c1 + c2) * setup.local_steps * setup.clients_per_round / 1e12
    eval_every = max(1, round(setup.eval_every_tflops / round_tflops))
    config = dataclasses.replace(config, eval_every=eval_every)

    started = time.perf_counter()
    result = simulate_federation(model, batch_loss, clients, config, output_dir=Path(output_dir),
                                 evaluate=lambda m: task.evaluate(m, validation, batch_size=32),
                                 run_info={"benchmark": "federated_accuracy", "model": setup.model, "arm": arm.name,
                                           "eval_samples": setup.eval_samples})
    evaluated = [r for r in result.rounds if r.eval is not None]
    return {
        "arm": arm.name, "seed": seed, "split_index": split_index,
        "num_layers": estimator.plan.num_layers, "block2_share": c2 / (c1 + c2), "step_forwards": step_forwards,
        "rounds": len(result.rounds), "total_tflops": result.total_flops / 1e12, "eval_every": eval_every,
        "curve": [[r.cumulative_flops / 1e12, r.eval["accuracy"]] for r in evaluated],  # type: ignore[index]
        "final_accuracy": evaluated[-1].eval["accuracy"],  # type: ignore[index]
        "wall_s": time.perf_counter() - started,
    }


def _run_in_worker(setup: Setup, arm_name: str, seed: int, output_dir: str, threads: int | None) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run_arm(setup, ARMS[arm_name], seed, output_dir, threads)


def run_all(setup: Setup, jobs: Sequence[tuple[str, int]], output: Path, workers: int) -> list[dict[str, Any]]:
    """Run (or reuse) every (arm, seed); each result is also kept as ``<arm>/seed<k>/curve.json``."""
    from hf_fedzo.reporting import write_json

    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    results, pending = [], []
    for arm_name, seed in jobs:
        saved = load_finished(output, setup, arm_name, seed)
        if saved is None:
            pending.append((arm_name, seed))
        else:
            results.append(saved)
    if pending:
        print(f"running {len(pending)} federations ({len(results)} reused) on {workers} worker(s)", flush=True)
    started = time.perf_counter()

    def keep(result: dict[str, Any]) -> None:
        write_json(output / result["arm"] / f"seed{result['seed']}" / "curve.json",
                   {"setup": _setup_key(setup), "result": result})
        results.append(result)
        print(f"  [{time.perf_counter() - started:6.0f} s] {result['arm']:<16} seed {result['seed']:<5} "
              f"final accuracy {result['final_accuracy']:.4f} after {result['total_tflops']:.1f} TFLOPs "
              f"({result['rounds']} rounds, {result['wall_s']:.0f} s)", flush=True)

    if workers <= 1:
        for arm_name, seed in pending:
            keep(_run_in_worker(setup, arm_name, seed, str(output / arm_name / f"seed{seed}"), None))
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_in_worker, setup, arm_name, seed, str(output / arm_name / f"seed{seed}"),
                                   threads) for arm_name, seed in pending]
            for future in as_completed(futures):
                keep(future.result())
    return results


def _saved_for(path: Path, setup: Setup) -> dict[str, Any] | None:
    """The JSON saved at ``path`` when it was written for these settings (else ``None``)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("setup") == _setup_key(setup) else None


def load_finished(output: Path, setup: Setup, arm_name: str, seed: int) -> dict[str, Any] | None:
    """The saved result of a finished (arm, seed) run with these settings, if there is one."""
    saved = _saved_for(output / arm_name / f"seed{seed}" / "curve.json", setup)
    return None if saved is None else saved["result"]


def _setup_key(setup: Setup) -> dict[str, Any]:
    return dataclasses.asdict(setup)


# ---------------------------------------------------------------- analysis (pure functions of the curves)

def first_reach(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """FLOPs at which a curve (points ``(flops, accuracy)``, starting at zero-shot) first reaches ``target``,
    linear between evaluations; ``None`` when it never does."""
    previous = None
    for flops, accuracy in curve:
        if accuracy >= target:
            if previous is None or previous[1] >= target:
                return flops
            (f0, a0) = previous
            return f0 + (target - a0) / (accuracy - a0) * (flops - f0)
        previous = (flops, accuracy)
    return None


def mean_accuracy(curve: Sequence[Sequence[float]], budget: float) -> float:
    """Area under the accuracy-vs-FLOPs curve over [0, budget], divided by the budget."""
    points = [p for p in curve if p[0] < budget] + [[budget, interpolate(curve, [budget])[0]]]
    return sum((f1 - f0) * (a0 + a1) / 2 for (f0, a0), (f1, a1) in itertools.pairwise(points)) / budget


def interpolate(curve: Sequence[Sequence[float]], grid: Iterable[float]) -> list[float]:
    xs, ys = [p[0] for p in curve], [p[1] for p in curve]
    out = []
    for x in grid:
        if x >= xs[-1]:
            out.append(ys[-1])
            continue
        i = next(i for i, xi in enumerate(xs) if xi >= x)
        out.append(ys[0] if i == 0 else ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1]))
    return out


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _with_zero_shot(result: Mapping[str, Any], zero_shot_accuracy: float) -> list[list[float]]:
    return [[0.0, zero_shot_accuracy], *result["curve"]]


def compute_to_accuracy(by_run: Mapping[tuple[str, int], Mapping[str, Any]], seeds: Sequence[int],
                        zero_shot_accuracy: float) -> dict[str, Any]:
    """The baseline is the MeZO arm with the higher mean final accuracy; per seed its final accuracy is the
    target, each method's cost the FLOPs to first reach it, and the ratio the baseline's cost over that."""
    baseline = max(BASELINES, key=lambda arm: statistics.fmean(by_run[arm, s]["final_accuracy"] for s in seeds))
    report: dict[str, Any] = {"baseline": baseline, "seeds": list(seeds), "per_seed": {}, "methods": {}}
    for seed in seeds:
        target = by_run[baseline, seed]["final_accuracy"]
        row: dict[str, Any] = {"target": target, "baseline_improved": target > zero_shot_accuracy}
        for arm in COMPARED:
            result = by_run[arm, seed]
            row[arm] = {"final_accuracy": result["final_accuracy"], "total_tflops": result["total_tflops"],
                        "tflops_to_target": first_reach(_with_zero_shot(result, zero_shot_accuracy), target)}
        baseline_cost = row[baseline]["tflops_to_target"]
        for arm in COMPARED:
            cost = row[arm]["tflops_to_target"]
            # Below zero-shot every method "reaches" the target at 0 FLOPs: no ratio means anything there.
            row[arm]["ratio"] = baseline_cost / cost if row["baseline_improved"] and cost else None
        report["per_seed"][seed] = row
    for arm in COMPARED:
        ratios = [r for s in seeds if (r := report["per_seed"][s][arm]["ratio"]) is not None]
        report["methods"][arm] = {
            "final_accuracy": mean_and_spread([by_run[arm, s]["final_accuracy"] for s in seeds]),
            "ratio": mean_and_spread(ratios) if ratios else None, "ratio_seeds": len(ratios),
            "unreached_seeds": sum(report["per_seed"][s][arm]["tflops_to_target"] is None for s in seeds),
        }
    return report


def split_sweep(by_run: Mapping[tuple[str, int], Mapping[str, Any]], seeds: Sequence[int], budget: float,
                zero_shot_accuracy: float) -> list[dict[str, Any]]:
    rows = []
    for arm_name in SWEPT:
        runs = [by_run[arm_name, s] for s in seeds if (arm_name, s) in by_run]
        if not runs:
            continue
        means = [mean_accuracy(_with_zero_shot(r, zero_shot_accuracy), budget) for r in runs]
        first = runs[0]
        rows.append({
            "arm": arm_name, "label": ARMS[arm_name].label, "p2": ARMS[arm_name].zo_p2,
            "split_index": first["split_index"], "num_layers": first["num_layers"],
            "block2_share": first["block2_share"], "step_forwards": first["step_forwards"],
            "mean_accuracy": statistics.fmean(means),
            "final_accuracy": statistics.fmean(r["final_accuracy"] for r in runs), "seeds": len(runs),
        })
    return sorted(rows, key=lambda row: -row["mean_accuracy"])


# ---------------------------------------------------------------- outputs

def mean_curves(by_run: Mapping[tuple[str, int], Mapping[str, Any]], arms: Iterable[str], seeds: Sequence[int],
                zero_shot_accuracy: float, budget: float, points: int = 60) -> dict[str, Any]:
    grid = [budget * i / (points - 1) for i in range(points)]
    curves = {}
    for arm in arms:
        runs = [by_run[arm, s] for s in seeds if (arm, s) in by_run]
        if not runs:
            continue
        on_grid = [interpolate(_with_zero_shot(r, zero_shot_accuracy), grid) for r in runs]
        columns = list(zip(*on_grid, strict=True))
        curves[ARMS[arm].label] = (grid, [statistics.fmean(c) for c in columns],
                                   [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns])
    return curves


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_report(c2a: Mapping[str, Any], sweep: Sequence[Mapping[str, Any]], zero_shot_accuracy: float,
                 setup: Setup) -> None:
    baseline = c2a["baseline"]
    print(f"\nzero-shot validation accuracy ({setup.eval_samples} sentences): {zero_shot_accuracy:.4f}; "
          f"budget {setup.budget_tflops:g} forward TFLOPs per run")
    print(f"\n1. compute to accuracy: target = the final accuracy of {ARMS[baseline].label} on the same seed")
    print(f"{'seed':<6} {'method':<40} {'final acc':>9} {'TFLOPs to target':>16} {'ratio':>6}")
    for seed, row in c2a["per_seed"].items():
        for arm in COMPARED:
            cost = row[arm]["tflops_to_target"]
            print(f"{seed:<6} {ARMS[arm].label:<40} {row[arm]['final_accuracy']:>9.4f} "
                  f"{'never' if cost is None else f'{cost:.1f}':>16} {_fmt_ratio(row[arm]['ratio']):>6}")
        if not row["baseline_improved"]:
            print(f"{'':<6} (the target {row['target']:.4f} is not above zero-shot: no ratio for this seed)")
    print(f"\n{'method':<40} {'final accuracy':>17} {'FLOPs ratio':>13} {'seeds':>5}")
    for arm, m in c2a["methods"].items():
        ratio = "–" if m["ratio"] is None else f"{m['ratio'][0]:.2f} ± {m['ratio'][1]:.2f}"
        note = f" ({m['unreached_seeds']} seed(s) never reached the target)" if m["unreached_seeds"] else ""
        print(f"{ARMS[arm].label:<40} {m['final_accuracy'][0]:>8.4f} ± {m['final_accuracy'][1]:.4f} {ratio:>13} "
              f"{m['ratio_seeds']:>5}{note}")
    print("\n6. split placement (ranked by mean accuracy over the budget)")
    print(f"{'arm':<44} {'split':>7} {'C2/C':>5} {'fwd/step':>8} {'mean acc':>8} {'final':>7} {'seeds':>5}")
    for row in sweep:
        split = "none" if row["split_index"] is None else f"{row['split_index']}/{row['num_layers']}"
        print(f"{row['label']:<44} {split:>7} {row['block2_share']:>5.2f} {row['step_forwards']:>8.2f} "
              f"{row['mean_accuracy']:>8.4f} {row['final_accuracy']:>7.4f} {row['seeds']:>5}")
    for arm in ("fedspzo", "nspsa"):
        ratio = c2a["methods"][arm]["ratio"]
        print(f"\nratio of FLOPs to reach the MeZO baseline's accuracy, {baseline} / {arm}: "
              f"{_fmt_ratio(ratio and ratio[0])}" + (" (target >= 3)" if arm == "fedspzo" else ""), end="")
    print()
    if sweep:
        print(f"best split-placement arm: {sweep[0]['label']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None,
                        help="SmolLM2-135M-Instruct folder (default: the one `hf-fedzo prepare-assets` made)")
    parser.add_argument("--output_dir", default="out/benchmarks/federated_accuracy")
    parser.add_argument("--figures_dir", default=None, help="where the PNG plots go (default: --output_dir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1234],
                        help="seeds of the compute-to-accuracy comparison (MeZO, n-SPSA, FedSPZO)")
    parser.add_argument("--sweep_seeds", type=int, nargs="+", default=[42], help="seeds of the split-placement arms")
    parser.add_argument("--budget_tflops", type=float, default=32.0, help="forward TFLOPs every run may spend")
    parser.add_argument("--eval_every_tflops", type=float, default=6.0, help="evaluate about this often")
    parser.add_argument("--eval_samples", type=int, default=256, help="validation sentences scored per evaluation")
    parser.add_argument("--workers", type=int, default=1, help="federations run side by side (1 thread each)")
    parser.add_argument("--report_only", action="store_true", help="use finished runs only; run nothing")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=None,
                        help="run only these arms (e.g. from a second shell); the report needs every arm")
    args = parser.parse_args(argv)
    for name in ("budget_tflops", "eval_every_tflops", "eval_samples", "workers"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0 (got {getattr(args, name)})")

    from hf_fedzo.data import smollm2_path
    from hf_fedzo.reporting import plot_curves, write_json

    model = args.model_name_or_path or str(smollm2_path())
    setup = Setup(model=model, eval_samples=args.eval_samples, budget_tflops=args.budget_tflops,
                  eval_every_tflops=args.eval_every_tflops)
    output = Path(args.output_dir)
    figures = Path(args.figures_dir) if args.figures_dir else output
    jobs = [(arm, seed) for seed in args.seeds for arm in COMPARED]
    jobs += [(arm, seed) for seed in args.sweep_seeds for arm in SWEPT if (arm, seed) not in jobs]

    zero_shot_file = output / "zero_shot.json"
    if (saved := _saved_for(zero_shot_file, setup)) is not None:
        zero_shot_accuracy = saved["accuracy"]
    elif args.report_only:
        parser.error(f"--report_only: no finished runs in {output} for these settings")
    else:
        zero_shot_accuracy = zero_shot(setup)
        write_json(zero_shot_file, {"setup": _setup_key(setup), "accuracy": zero_shot_accuracy})
    if args.report_only:
        results = [r for job in jobs if (r := load_finished(output, setup, *job)) is not None]
    else:
        started = time.perf_counter()
        to_run = [job for job in jobs if args.arms is None or job[0] in args.arms]
        results = run_all(setup, to_run, output, args.workers)
        results += [r for job in jobs if job not in to_run and (r := load_finished(output, setup, *job))]
        print(f"all federations finished in {time.perf_counter() - started:.0f} s")
    by_run = {(r["arm"], r["seed"]): r for r in results}
    missing = [job for job in jobs if job not in by_run]
    if missing:
        sys.exit(f"missing finished runs {missing}: run them first (without --report_only, and with --arms "
                 "covering them)")

    c2a = compute_to_accuracy(by_run, args.seeds, zero_shot_accuracy)
    sweep = split_sweep(by_run, args.sweep_seeds, args.budget_tflops, zero_shot_accuracy)
    axis = "cumulative forward TFLOPs (all clients)"
    ylabel = f"validation accuracy ({args.eval_samples} sentences)"
    for name, arms, seeds, title in (
        ("compute_to_accuracy", COMPARED, args.seeds,
         f"SmolLM2-135M LoRA, VADER: mean ± std, {len(args.seeds)} seeds"),
        ("split_sweep", SWEPT, args.sweep_seeds,
         f"split placement and P2 (seed{'s' * (len(args.sweep_seeds) > 1)} {', '.join(map(str, args.sweep_seeds))})"),
    ):
        curves = mean_curves(by_run, arms, seeds, zero_shot_accuracy, args.budget_tflops)
        plot_curves(figures / f"{name}.png", {label: (grid, mean) for label, (grid, mean, _) in curves.items()},
                    bands={label: spread for label, (_, _, spread) in curves.items()},
                    reference=("zero-shot", zero_shot_accuracy), xlabel=axis, ylabel=ylabel, title=title)
    report = {"setup": _setup_key(setup), "zero_shot_accuracy": zero_shot_accuracy,
              "compute_to_accuracy": c2a, "split_sweep": sweep, "runs": results}
    write_json(output / "report.json", report)
    print_report(c2a, sweep, zero_shot_accuracy, setup)
    return report


if __name__ == "__main__":
    main()
