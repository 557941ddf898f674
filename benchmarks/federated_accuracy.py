"""Compute to accuracy, powered: tuned step sizes, several seeds, a held-out test set, a first-order ceiling.

Every run is a federation on real SmolLM2-135M-Instruct fine-tuned on the VADER movie sentences (the Rotten
Tomatoes sentences SST-2 comes from) with the prompt chosen zero-shot on validation data ("Review: <s>\\n
Sentiment:" scored by " negative" / " positive"; docs/benchmarks.md has the selection table): 8 clients with
a Dirichlet(0.5) label skew, 4 sampled per round, 4 local steps of 8 sentences, every run stopped once its
clients have spent ``--budget_tflops`` forward FLOPs. Curves are validation accuracy (``--eval_samples``
sentences) against cumulative forward FLOPs, starting at zero-shot (LoRA starts at B = 0).

1. **Tune** (first seed): every arm runs each step size of its grid; the one whose validation curve ends highest
   (mean of the last two evaluations) is the arm's step size. Every arm gets a grid of the same size.
2. **Seeds**: the LoRA arms run the other seeds at their chosen step size (same partition, sampling, data order
   and direction seeds across arms for a given seed). Full-weight arms run the first seed only.
3. **Test**: each chosen run's final model is rebuilt from its federation log (no training) and scored once on
   the held-out test sentences (all 1,057 by default): accuracy with its standard error, balanced accuracy and
   per-class prediction rates.
4. **Report**: FLOPs to reach 50/75/90% of the best arm's validation gain over zero-shot (mean ± std over
   seeds), and FLOPs to reach MeZO's final accuracy, whose ratio is the last line.

Runs live in ``--output_dir/<arm>/lr<lr>/seed<k>/`` (the federation's own resumable state): an interrupted
benchmark continues, a finished run is reused, and ``--report_only`` prints and plots from them. The
centralised comparison (ZOSplitTrainer at equal FLOPs) is not part of this script yet.

    hf-fedzo prepare-assets
    python -m benchmarks.federated_accuracy --workers 2
    python -m benchmarks.federated_accuracy --report_only --figures_dir docs/figures
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.curves import (
    choose_lr,
    compute_to_accuracy,
    gain_costs,
    mean_accuracy,
    mean_curves,
    standard_error,
)

PROMPT = "Review: {sentence}\nSentiment:{label}"
LABEL_WORDS = (" negative", " positive")


@dataclass(frozen=True)
class Arm:
    """One method configuration and its step-size grid; the remaining knobs are the Setup's."""

    name: str
    method: str
    lr_grid: tuple[float, ...]
    zo_p2: int = 1
    zo_split: str = "none"
    zo_p1: int = 1
    peft: str = "lora"
    lora_last_layers: int | None = None
    zo_eps: float | None = None  # None: the Setup's

    @property
    def label(self) -> str:
        where = "" if self.lora_last_layers is None else f", LoRA top {self.lora_last_layers}"
        where += ", full weights" if self.peft == "none" else ""
        if self.method == "fedavg":
            return f"FedAvg (AdamW, first order{where})"
        if self.method == "mezo":
            return f"MeZO (P=1, no split{where})"
        if self.method == "nspsa":
            return f"n-SPSA (P={self.zo_p2}, no split{where})"
        return f"FedSPZO (P1={self.zo_p1}, P2={self.zo_p2}, split {self.zo_split}{where})"


ZO_GRID = (2e-3, 5e-3, 1e-2)
ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("mezo", "mezo", ZO_GRID),
    Arm("nspsa", "nspsa", ZO_GRID, zo_p2=4),
    Arm("fedspzo", "fedspzo", ZO_GRID, zo_p2=4, zo_split="0.9"),  # the library default
    # The estimator-quality winner (docs/benchmarks.md): P2 = 2 at the last layer.
    Arm("fedspzo-p2-2", "fedspzo", ZO_GRID, zo_p2=2, zo_split="0.97"),
    # LoRA on the top 8 layers: the frozen prefix runs once per step, so each direction costs ~C2, not ~C.
    Arm("mezo-top8", "mezo", ZO_GRID, lora_last_layers=8),
    Arm("fedspzo-top8", "fedspzo", ZO_GRID, zo_p2=4, zo_split="auto", lora_last_layers=8),
    Arm("fedavg", "fedavg", (1e-4, 3e-4, 1e-3)),
    # Split placement (not in the default queue): the split layer at P2 = 4, then P2 at the default split.
    Arm("fedspzo-split15", "fedspzo", ZO_GRID, zo_p2=4, zo_split="15"),
    Arm("fedspzo-p2-8", "fedspzo", ZO_GRID, zo_p2=8, zo_split="0.9"),
    Arm("mezo-full", "mezo", (1e-6, 3e-6, 1e-5), peft="none", zo_eps=1e-3),
    Arm("fedspzo-full", "fedspzo", (1e-6, 3e-6, 1e-5), zo_p2=4, zo_split="0.9", peft="none", zo_eps=1e-3),
)}
LORA_ARMS = ("mezo", "nspsa", "fedspzo", "fedspzo-p2-2", "mezo-top8", "fedspzo-top8", "fedavg")
FULL_ARMS = ("mezo-full", "fedspzo-full")
HEADLINE = ("mezo", "fedspzo")  # the last line: MeZO's FLOPs over FedSPZO's, to MeZO's final accuracy


@dataclass(frozen=True)
class Setup:
    """What every arm shares: model, prompt, data, federation shape and budget."""

    model: str
    eval_samples: int
    test_samples: int | None
    budget_tflops: float
    eval_every_tflops: float
    num_clients: int = 8
    clients_per_round: int = 4
    local_steps: int = 4
    batch_size: int = 8
    zo_eps: float = 1e-2
    dirichlet_alpha: float = 0.5
    lora_r: int = 8
    max_length: int = 64
    prompt: str = PROMPT
    label_words: tuple[str, ...] = LABEL_WORDS


# ---------------------------------------------------------------- one federation (in a worker process)

@cache
def _shared(setup: Setup) -> tuple[Any, Any]:
    """Task and VADER splits, loaded once per worker process."""
    from hf_fedzo.data import load_task_dataset
    from hf_fedzo.runs import ModelArguments, load_tokenizer
    from hf_fedzo.tasks import LabelWordTask, PromptTemplate

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=setup.model), kind="causal")
    task = LabelWordTask(tokenizer, PromptTemplate(setup.prompt, truncate=("sentence",)), setup.label_words,
                         "causal", max_length=setup.max_length, name="vader-sentiment")
    return task, load_task_dataset("vader")


def _model(setup: Setup, arm: Arm, seed: int) -> Any:
    import torch

    from hf_fedzo.runs import ModelArguments, load_model

    torch.manual_seed(seed)  # the LoRA initialisation, as the federated recipe does
    args = ModelArguments(model_name_or_path=setup.model, peft=arm.peft, lora_r=setup.lora_r,
                          lora_alpha=2 * setup.lora_r, lora_target_modules=["q_proj", "v_proj"],
                          lora_last_layers=arm.lora_last_layers)
    return load_model(args, "causal")


def _config(setup: Setup, arm: Arm, seed: int, lr: float) -> Any:
    from hf_fedzo.federation import FederationConfig

    return FederationConfig(
        method=arm.method, num_clients=setup.num_clients, clients_per_round=setup.clients_per_round,
        rounds=100_000, local_steps=setup.local_steps, batch_size=setup.batch_size, learning_rate=lr, fedavg_lr=lr,
        zo_eps=arm.zo_eps or setup.zo_eps, zo_p1=arm.zo_p1, zo_p2=arm.zo_p2, zo_split=arm.zo_split,
        partition="dirichlet", dirichlet_alpha=setup.dirichlet_alpha, seed=seed,
        flop_budget=setup.budget_tflops * 1e12)


def _round_tflops(arm: Arm, config: Any, model: Any, batch_loss: Any, probe: Any) -> float:
    """Nominal forward TFLOPs of one round, from one traced forward of a client batch (sets the evaluation
    cadence only: the runs count the FLOPs they actually spend)."""
    import torch

    from hf_fedzo.engine import ZOEstimator

    settings = config.round_settings().zo
    estimator = ZOEstimator(model, settings)
    with torch.no_grad():
        estimator.prepare(lambda: batch_loss(model, probe))
    c1, c2 = estimator.plan.block_flops(estimator.plan.split_index)
    if arm.method == "fedavg":
        step = c1 + c2
    elif estimator.plan.split_index is not None and estimator.plan.first_trainable_layer >= estimator.plan.split_index:
        step = c1 + 2 * settings.p1 * settings.p2 * c2  # the frozen prefix runs once
    else:
        step = 2 * settings.p1 * (c1 + settings.p2 * c2)
    return step * config.local_steps * config.clients_per_round / 1e12


def run_arm(setup: Setup, arm: Arm, seed: int, lr: float, output_dir: str, zero_shot: float) -> dict[str, Any]:
    """One federation of ``arm`` at ``lr`` on ``seed`` until the FLOP budget is spent: its validation curve.
    The final trainable tensors are kept (``final_trainable.pt``) for the test stage."""
    import torch

    from hf_fedzo.federation import simulate_federation, task_batch_loss, task_clients

    started = time.perf_counter()
    task, raw = _shared(setup)
    validation = raw["validation"].select(range(setup.eval_samples))
    config = _config(setup, arm, seed, lr)
    clients, _ = task_clients(task, raw["train"], config)
    model, batch_loss = _model(setup, arm, seed), task_batch_loss(task)
    probe = clients[0].round_batches(seed, 0, 0, 1, setup.batch_size)[0]
    eval_every = max(1, round(setup.eval_every_tflops / _round_tflops(arm, config, model, batch_loss, probe)))
    result = simulate_federation(model, batch_loss, clients, dataclasses.replace(config, eval_every=eval_every),
                                 output_dir=Path(output_dir),
                                 evaluate=lambda m: task.evaluate(m, validation, batch_size=32),
                                 run_info={"benchmark": "federated_accuracy", "setup": _setup_key(setup),
                                           "arm": dataclasses.asdict(arm)})
    torch.save({n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
               Path(output_dir) / "final_trainable.pt")
    evaluated = [r for r in result.rounds if r.eval is not None]
    return {
        "arm": arm.name, "seed": seed, "lr": lr, "rounds": len(result.rounds),
        "total_tflops": result.total_flops / 1e12, "eval_every": eval_every,
        "curve": [[0.0, zero_shot], *([r.cumulative_flops / 1e12, r.eval["accuracy"]] for r in evaluated)],
        "final_accuracy": evaluated[-1].eval["accuracy"], "wall_s": time.perf_counter() - started,
    }


def score_on_test(setup: Setup, arm: Arm, seed: int, lr: float, output_dir: str) -> dict[str, Any]:
    """The final model of a finished run scored once on the test sentences."""
    import torch

    task, raw = _shared(setup)
    test = raw["test"].select(range(min(setup.test_samples or len(raw["test"]), len(raw["test"]))))
    model = _model(setup, arm, seed)
    final = torch.load(Path(output_dir) / "final_trainable.pt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(final) != trainable:
        raise RuntimeError(f"{output_dir}/final_trainable.pt does not hold this arm's trainable tensors")
    model.load_state_dict(final, strict=False)
    metrics = task.evaluate(model, test, batch_size=32)
    return {"arm": arm.name, "seed": seed, "lr": lr, "examples": len(test), **metrics,
            "standard_error": standard_error(metrics["accuracy"], len(test))}


def _in_worker(kind: str, setup: Setup, arm_name: str, seed: int, lr: float, output_dir: str, zero_shot: float,
               threads: int | None) -> dict[str, Any]:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        torch.set_num_threads(threads)
    if kind == "test":
        return score_on_test(setup, ARMS[arm_name], seed, lr, output_dir)
    return run_arm(setup, ARMS[arm_name], seed, lr, output_dir, zero_shot)


# ---------------------------------------------------------------- the queue (runs are reused when finished)

def _setup_key(setup: Setup) -> dict[str, Any]:
    """The setup as it reads back from JSON (tuples become lists), so a saved run is recognised."""
    return json.loads(json.dumps(dataclasses.asdict(setup)))


def _run_dir(output: Path, arm: str, lr: float, seed: int) -> Path:
    return output / arm / f"lr{lr:g}" / f"seed{seed}"


def _saved(path: Path, setup: Setup) -> dict[str, Any] | None:
    """The JSON at ``path`` when it was written for these settings (else ``None``)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["result"] if saved.get("setup") == _setup_key(setup) else None


def run_queue(kind: str, setup: Setup, jobs: Sequence[tuple[str, int, float]], output: Path, workers: int,
              zero_shot: float) -> dict[tuple[str, int, float], dict[str, Any]]:
    """Run (or reuse) every (arm, seed, lr) job; ``kind`` is "curve" (a federation) or "test" (scoring)."""
    from tqdm.auto import tqdm

    from hf_fedzo.reporting import write_json

    results, pending = {}, []
    for job in jobs:
        saved = _saved(_run_dir(output, job[0], job[2], job[1]) / f"{kind}.json", setup)
        if saved is None:
            pending.append(job)
        else:
            results[job] = saved
    if not pending:
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=len(pending), desc=f"{kind} jobs ({len(results)} reused)", unit="run")
    started = time.perf_counter()

    def keep(job: tuple[str, int, float], result: dict[str, Any]) -> None:
        write_json(_run_dir(output, job[0], job[2], job[1]) / f"{kind}.json",
                   {"setup": _setup_key(setup), "result": result})
        results[job] = result
        bar.update()
        bar.write(f"[{time.perf_counter() - started:6.0f} s] {kind} {job[0]:<14} lr {job[2]:<7g} seed {job[1]:<5} "
                  f"accuracy {result.get('final_accuracy', result.get('accuracy')):.4f}")

    args = [(kind, setup, arm, seed, lr, str(_run_dir(output, arm, lr, seed)), zero_shot, threads)
            for arm, seed, lr in pending]
    if workers <= 1:
        for job, a in zip(pending, args, strict=True):
            keep(job, _in_worker(*a))
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_in_worker, *a): job for job, a in zip(pending, args, strict=True)}
            for future in as_completed(futures):
                keep(futures[future], future.result())
    bar.close()
    return results


def validation_zero_shot(setup: Setup, output: Path) -> float:
    from hf_fedzo.reporting import write_json

    path = output / "zero_shot.json"
    if (saved := _saved(path, setup)) is not None:
        return saved["accuracy"]
    task, raw = _shared(setup)
    validation = raw["validation"].select(range(setup.eval_samples))
    accuracy = float(task.evaluate(_model(setup, ARMS["mezo"], 0), validation, batch_size=32)["accuracy"])
    write_json(path, {"setup": _setup_key(setup), "result": {"accuracy": accuracy}})
    return accuracy


# ---------------------------------------------------------------- report

def print_report(setup: Setup, zero_shot: float, chosen: Mapping[str, float], by_run: Mapping[tuple[str, int], Any],
                 tests: Mapping[tuple[str, int], Any], gains: Mapping[str, Any], c2a: Mapping[str, Any],
                 seeds: Sequence[int]) -> None:
    print(f"\nvalidation: {setup.eval_samples} sentences, zero-shot {zero_shot:.4f}; budget "
          f"{setup.budget_tflops:g} forward TFLOPs per run; seeds {', '.join(map(str, seeds))}")
    print(f"\nstep sizes chosen on validation (first seed):\n{'arm':<44} {'grid':<22} {'chosen':>8}")
    for arm, lr in chosen.items():
        print(f"{ARMS[arm].label:<44} {' '.join(f'{g:g}' for g in ARMS[arm].lr_grid):<22} {lr:>8g}")
    fractions = gains["fractions"]
    print("\nmean validation accuracy over the budget (area under the curve / budget; accuracy per FLOP spent)")
    for arm in gains["arms"]:
        runs = [by_run[arm, s] for s in seeds]
        area = statistics.fmean(mean_accuracy(r["curve"], setup.budget_tflops) for r in runs)
        print(f"{ARMS[arm].label:<44} {area:.4f}   final {statistics.fmean(r['final_accuracy'] for r in runs):.4f}")
    print(f"\nFLOPs (TFLOPs, mean ± std over seeds) to reach {'/'.join(f'{f:.0%}' for f in fractions)} of the best "
          f"arm's validation gain ({ARMS[gains['best']].label}: +{gains['gain']:.4f})")
    for arm, rows in gains["arms"].items():
        cells = []
        for fraction in fractions:
            row = rows[str(fraction)]
            cost = row["flops"]
            reached = f"({row['reached']}/{row['seeds']})"
            cells.append("never" if cost is None else f"{cost[0]:.1f} ± {cost[1]:.1f} {reached}")
        print(f"{ARMS[arm].label:<44} " + "  ".join(f"{c:>20}" for c in cells))
    print("\ntest (each chosen run once; ± is the standard error of one measurement on that many sentences)")
    print(f"{'arm':<44} {'seed':>5} {'accuracy':>16} {'balanced':>9} {'pred. rate 0/1':>15}")
    for (arm, seed), m in sorted(tests.items()):
        flag = "  <- predicts one class >= 95%" if max(m["prediction_rate_0"], m["prediction_rate_1"]) >= 0.95 else ""
        print(f"{ARMS[arm].label:<44} {seed:>5} {m['accuracy']:>8.4f} ± {m['standard_error']:.4f} "
              f"{m['balanced_accuracy']:>9.4f} {m['prediction_rate_0']:>7.2f}/{m['prediction_rate_1']:.2f}{flag}")
    method = HEADLINE[1]
    ratio = c2a["methods"][method]["ratio"]
    n = c2a["methods"][method]["ratio_seeds"]
    print(f"\nmethod {ARMS[method].label} reached MeZO's final accuracy on {n} of {len(seeds)} seeds")
    value = "nan ± nan" if ratio is None else f"{ratio[0]:.2f} ± {ratio[1]:.2f}"
    print(f"compute to accuracy: FLOPs ratio MeZO/FedSPZO to MeZO's final accuracy {value} over {n} seeds")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None,
                        help="SmolLM2-135M-Instruct folder (default: the one `hf-fedzo prepare-assets` made)")
    parser.add_argument("--output_dir", default="out/benchmarks/federated_accuracy")
    parser.add_argument("--figures_dir", default=None, help="where the PNG plots go (default: --output_dir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1234])
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=[*LORA_ARMS, *FULL_ARMS])
    parser.add_argument("--budget_tflops", type=float, default=96.0, help="forward TFLOPs every run may spend")
    parser.add_argument("--eval_every_tflops", type=float, default=12.0, help="evaluate about this often")
    parser.add_argument("--eval_samples", type=int, default=256, help="validation sentences per evaluation")
    parser.add_argument("--test_samples", type=int, default=None, help="test sentences (default: all 1,057)")
    parser.add_argument("--workers", type=int, default=1, help="federations run side by side (threads split)")
    parser.add_argument("--report_only", action="store_true", help="use finished runs only; run nothing")
    args = parser.parse_args(argv)
    for name in ("budget_tflops", "eval_every_tflops", "eval_samples", "workers"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0 (got {getattr(args, name)})")
    if not set(HEADLINE) <= set(args.arms):
        parser.error(f"--arms must include {' and '.join(HEADLINE)} (the last line compares them)")

    from hf_fedzo.data import load_task_dataset, smollm2_path
    from hf_fedzo.reporting import draw_curves, write_json
    from hf_fedzo.tasks import majority_rate

    setup = Setup(model=args.model_name_or_path or str(smollm2_path()), eval_samples=args.eval_samples,
                  test_samples=args.test_samples, budget_tflops=args.budget_tflops,
                  eval_every_tflops=args.eval_every_tflops)
    output = Path(args.output_dir)
    figures = Path(args.figures_dir) if args.figures_dir else output
    workers = 0 if args.report_only else args.workers
    zero_shot = validation_zero_shot(setup, output) if not args.report_only else \
        (_saved(output / "zero_shot.json", setup) or sys.exit(f"--report_only: no runs in {output}"))["accuracy"]

    def queue(kind: str, jobs: list[tuple[str, int, float]]) -> dict[tuple[str, int, float], dict[str, Any]]:
        if args.report_only:
            found = {j: r for j in jobs if (r := _saved(_run_dir(output, j[0], j[2], j[1]) / f"{kind}.json", setup))}
            if len(found) < len(jobs):
                sys.exit(f"--report_only: {len(jobs) - len(found)} {kind} job(s) not finished in {output}")
            return found
        return run_queue(kind, setup, jobs, output, workers, zero_shot)

    first, seeds = args.seeds[0], args.seeds
    tuned = queue("curve", [(arm, first, lr) for arm in args.arms for lr in ARMS[arm].lr_grid])
    chosen = {arm: choose_lr({lr: tuned[arm, first, lr] for lr in ARMS[arm].lr_grid}) for arm in args.arms}
    lora = [arm for arm in args.arms if ARMS[arm].peft != "none"]
    more = queue("curve", [(arm, seed, chosen[arm]) for arm in lora for seed in seeds[1:]])
    by_run = {(arm, seed): r for (arm, seed, lr), r in {**tuned, **more}.items() if chosen[arm] == lr}
    test_jobs = [(arm, seed, chosen[arm]) for arm, seed in by_run]
    tests = {(arm, seed): r for (arm, seed, _), r in queue("test", test_jobs).items()}

    gains = gain_costs(by_run, lora, seeds, zero_shot)
    c2a = compute_to_accuracy(by_run, HEADLINE[0], [a for a in lora if a != HEADLINE[0]], seeds, zero_shot)
    labels = {arm: f"{ARMS[arm].label}, lr {chosen[arm]:g}" for arm in lora}
    curves = mean_curves(by_run, labels, seeds, setup.budget_tflops)
    majority = majority_rate(load_task_dataset("vader")["validation"].select(range(setup.eval_samples))["label"])
    draw_curves(figures / "compute_to_accuracy.png", {k: (g, m) for k, (g, m, _) in curves.items()},
                bands={k: s for k, (_, _, s) in curves.items()},
                reference=[("zero-shot", zero_shot), ("majority class", majority)], min_yspan=0.1,
                y_bounds=(0.0, 1.0), xlabel="cumulative forward TFLOPs (all clients)",
                ylabel=f"validation accuracy ({setup.eval_samples} sentences)",
                title=f"{Path(setup.model).name} on VADER\n"
                      f"mean ± std over {len(seeds)} seeds, step sizes tuned on validation")
    report = {"setup": _setup_key(setup), "zero_shot_accuracy": zero_shot, "chosen_lr": chosen,
              "gain_costs": gains, "compute_to_accuracy": c2a,
              "runs": [dict(r) for r in by_run.values()], "tuning": [dict(r) for r in tuned.values()],
              "test": [dict(r) for r in tests.values()]}
    write_json(output / "report.json", report)
    print_report(setup, zero_shot, chosen, by_run, tests, gains, c2a, seeds)
    return report


if __name__ == "__main__":
    main()
