"""What the compute-to-accuracy benchmarks share, federated (``federated_accuracy``) and centralised
(``centralised_accuracy``): the resumable store of finished runs and the queue that fills it, and the stages (tune
the step size, more seeds, test once); the arms and setup are ``accuracy_arms``, the printed report
``accuracy_report``.

A benchmark supplies one ``train(setup, arm, seed, lr, output_dir, zero_shot) -> run`` function (a module-level
function, so worker processes can import it) whose run has a ``curve`` of (forward TFLOPs, validation accuracy)
points starting at zero-shot, a ``final_accuracy`` and ``total_tflops``, and which leaves the final trainable
tensors in ``output_dir/final_trainable.pt`` for the test stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.accuracy_arms import ARMS, HEADLINE, Arm, Setup
from benchmarks.accuracy_report import print_report, print_tuning
from benchmarks.curves import choose_lr, compute_to_accuracy, gain_costs, mean_curves, standard_error

Train = Callable[[Setup, Arm, int, float, str, float], dict[str, Any]]


# ---------------------------------------------------------------- what a run loads (in a worker process)

@cache
def shared_task(setup: Setup) -> tuple[Any, Any]:
    """Task and VADER splits, loaded once per worker process."""
    from hf_fedzo.data import load_task_dataset
    from hf_fedzo.runs import ModelArguments, load_tokenizer
    from hf_fedzo.tasks import LabelWordTask, PromptTemplate

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=setup.model), kind="causal")
    task = LabelWordTask(tokenizer, PromptTemplate(setup.prompt, truncate=("sentence",)), setup.label_words,
                         "causal", max_length=setup.max_length, name="vader-sentiment")
    return task, load_task_dataset("vader")


def validation_rows(setup: Setup) -> Any:
    """The validation sentences every evaluation scores."""
    return shared_task(setup)[1]["validation"].select(range(setup.eval_samples))


def build_model(setup: Setup, arm: Arm, seed: int) -> Any:
    import torch

    from hf_fedzo.runs import ModelArguments, load_model

    torch.manual_seed(seed)  # the LoRA initialisation, as the federated recipe does
    args = ModelArguments(model_name_or_path=setup.model, peft=arm.peft, lora_r=setup.lora_r,
                          lora_alpha=2 * setup.lora_r, lora_target_modules=["q_proj", "v_proj"],
                          lora_last_layers=arm.lora_last_layers)
    return load_model(args, "causal")


def save_final_trainable(model: Any, output_dir: str | Path) -> None:
    """The trainable tensors the test stage scores (``score_on_test``)."""
    import torch

    torch.save({n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
               Path(output_dir) / "final_trainable.pt")


def score_test_rows(setup: Setup, model: Any) -> dict[str, Any]:
    """``model`` scored on the held-out test sentences: the task's metrics and the accuracy's standard error."""
    from hf_fedzo.tasks import majority_rate

    task, raw = shared_task(setup)
    test = raw["test"].select(range(min(setup.test_samples or len(raw["test"]), len(raw["test"]))))
    metrics = task.evaluate(model, test, batch_size=32)
    return {"examples": len(test), **metrics, "standard_error": standard_error(metrics["accuracy"], len(test)),
            "majority_rate": majority_rate(test["label"])}


def score_on_test(setup: Setup, arm: Arm, seed: int, lr: float, output_dir: str) -> dict[str, Any]:
    """The final model of a finished run scored once on the test sentences."""
    import torch

    model = build_model(setup, arm, seed)
    final = torch.load(Path(output_dir) / "final_trainable.pt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(final) != trainable:
        raise RuntimeError(f"{output_dir}/final_trainable.pt does not hold this arm's trainable tensors")
    model.load_state_dict(final, strict=False)
    return {"arm": arm.name, "seed": seed, "lr": lr, **score_test_rows(setup, model)}


def run_job(train: Train, kind: str, setup: Setup, arm_name: str, seed: int, lr: float, output_dir: str,
            zero_shot: float, threads: int | None) -> dict[str, Any]:
    """One queued job, in this process or a worker: ``train`` (kind "curve") or ``score_on_test`` ("test")."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        torch.set_num_threads(threads)
    if kind == "test":
        return score_on_test(setup, ARMS[arm_name], seed, lr, output_dir)
    return train(setup, ARMS[arm_name], seed, lr, output_dir, zero_shot)


# ---------------------------------------------------------------- the queue (runs are reused when finished)

def setup_key(setup: Setup) -> dict[str, Any]:
    """The setup as it reads back from JSON (tuples become lists), so a saved run is recognised."""
    return json.loads(json.dumps(dataclasses.asdict(setup)))


def run_dir(output: Path, arm: str, lr: float, seed: int) -> Path:
    return output / arm / f"lr{lr:g}" / f"seed{seed}"


def saved_result(path: Path, setup: Setup) -> dict[str, Any] | None:
    """The JSON at ``path`` when it was written for these settings (else ``None``)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["result"] if saved.get("setup") == setup_key(setup) else None


def stop_with_parent() -> None:
    """Make a worker stop when the benchmark process does (Linux). Killing only the main process otherwise leaves
    its workers training on, for up to a whole run, and a restarted benchmark resumes the same run directories
    beside them."""
    if sys.platform == "linux":
        import ctypes
        import multiprocessing
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # the parent died before the line above
            os._exit(1)


def run_queue(kind: str, setup: Setup, jobs: Sequence[tuple[str, int, float]], output: Path, workers: int,
              zero_shot: float, train: Train) -> dict[tuple[str, int, float], dict[str, Any]]:
    """Run (or reuse) every (arm, seed, lr) job; ``kind`` is "curve" (``train``) or "test" (scoring)."""
    from tqdm.auto import tqdm

    from hf_fedzo.reporting import write_json

    results, pending = {}, []
    for job in jobs:
        saved = saved_result(run_dir(output, job[0], job[2], job[1]) / f"{kind}.json", setup)
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
        write_json(run_dir(output, job[0], job[2], job[1]) / f"{kind}.json",
                   {"setup": setup_key(setup), "result": result})
        results[job] = result
        bar.update()
        bar.write(f"[{time.perf_counter() - started:6.0f} s] {kind} {job[0]:<14} lr {job[2]:<7g} seed {job[1]:<5} "
                  f"accuracy {result.get('final_accuracy', result.get('accuracy')):.4f}")

    args = [(train, kind, setup, arm, seed, lr, str(run_dir(output, arm, lr, seed)), zero_shot, threads)
            for arm, seed, lr in pending]
    if workers <= 1:
        for job, a in zip(pending, args, strict=True):
            keep(job, run_job(*a))
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=stop_with_parent) as pool:
            futures = {pool.submit(run_job, *a): job for job, a in zip(pending, args, strict=True)}
            for future in as_completed(futures):
                keep(futures[future], future.result())
    bar.close()
    return results


def validation_zero_shot(setup: Setup, output: Path) -> float:
    from hf_fedzo.reporting import write_json

    path = output / "zero_shot.json"
    if (saved := saved_result(path, setup)) is not None:
        return saved["accuracy"]
    task, _ = shared_task(setup)
    accuracy = float(task.evaluate(build_model(setup, ARMS["mezo"], 0), validation_rows(setup),
                                   batch_size=32)["accuracy"])
    write_json(path, {"setup": setup_key(setup), "result": {"accuracy": accuracy}})
    return accuracy


def test_zero_shot(setup: Setup, output: Path) -> dict[str, Any]:
    """The untrained model (LoRA starts at B = 0: the prompt's zero-shot) on the test sentences, scored once and
    kept beside the runs (forward only)."""
    from hf_fedzo.reporting import write_json

    path = output / "zero_shot_test.json"
    if (saved := saved_result(path, setup)) is None:
        saved = {"arm": "zero-shot", **score_test_rows(setup, build_model(setup, ARMS["mezo"], 0))}
        write_json(path, {"setup": setup_key(setup), "result": saved})
    return saved


# ---------------------------------------------------------------- the whole benchmark

def add_arguments(parser: argparse.ArgumentParser, output_dir: str, arms: Sequence[str],
                  default_arms: Sequence[str]) -> None:
    """The flags both benchmarks take."""
    parser.add_argument("--model_name_or_path", default=None,
                        help="SmolLM2-135M-Instruct folder (default: the one `hf-fedzo prepare-assets` made)")
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--figures_dir", default=None, help="where the PNG plots go (default: --output_dir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1234])
    parser.add_argument("--arms", nargs="+", choices=sorted(arms), default=list(default_arms))
    parser.add_argument("--budget_tflops", type=float, default=96.0, help="forward TFLOPs every run may spend")
    parser.add_argument("--eval_every_tflops", type=float, default=12.0, help="evaluate about this often")
    parser.add_argument("--eval_samples", type=int, default=256, help="validation sentences per evaluation")
    parser.add_argument("--test_samples", type=int, default=None, help="test sentences (default: all 1,057)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="tune only these step sizes of each arm's grid (a partial tuning; the report prints "
                             "the grids used)")
    parser.add_argument("--workers", type=int, default=1, help="runs side by side (threads split)")
    parser.add_argument("--report_only", action="store_true", help="use finished runs only; train nothing")
    parser.add_argument("--tune_only", action="store_true",
                        help="run the tuning stage only (first seed, every step size) and print each run's "
                             "validation score; no further seeds, no test data touched")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("budget_tflops", "eval_every_tflops", "eval_samples", "workers"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0 (got {getattr(args, name)})")
    if not args.tune_only and not set(HEADLINE) <= set(args.arms):
        parser.error(f"--arms must include {' and '.join(HEADLINE)} (the last line compares them; --tune_only "
                     "prints no last line)")
    for arm in args.arms:
        if not step_grid(arm, args.lrs):
            parser.error(f"--lrs {' '.join(f'{lr:g}' for lr in args.lrs)} leaves {arm} no step size of its grid "
                         f"({' '.join(f'{lr:g}' for lr in ARMS[arm].lr_grid)})")


def step_grid(arm: str, lrs: Sequence[float] | None) -> tuple[float, ...]:
    """The step sizes ``arm`` is tuned over: its grid, or the part of it ``--lrs`` keeps (a partial tuning)."""
    return tuple(lr for lr in ARMS[arm].lr_grid if lrs is None or any(abs(lr - x) <= 1e-12 for x in lrs))


def run_benchmark(args: argparse.Namespace, train: Train, *, headline: str, xlabel: str) -> dict[str, Any]:
    """Tune, seed, test, report: the stages of the module docstrings of both benchmarks."""
    from hf_fedzo.data import smollm2_path
    from hf_fedzo.reporting import draw_curves, write_json
    from hf_fedzo.tasks import majority_rate

    setup = Setup(model=args.model_name_or_path or str(smollm2_path()), eval_samples=args.eval_samples,
                  test_samples=args.test_samples, budget_tflops=args.budget_tflops,
                  eval_every_tflops=args.eval_every_tflops)
    output = Path(args.output_dir)
    figures = Path(args.figures_dir) if args.figures_dir else output
    workers = 0 if args.report_only else args.workers
    zero_shot = validation_zero_shot(setup, output) if not args.report_only else \
        (saved_result(output / "zero_shot.json", setup) or sys.exit(f"--report_only: no runs in {output}"))["accuracy"]

    def queue(kind: str, jobs: list[tuple[str, int, float]]) -> dict[tuple[str, int, float], dict[str, Any]]:
        if args.report_only:
            found = {j: r for j in jobs if (r := saved_result(run_dir(output, j[0], j[2], j[1]) / f"{kind}.json",
                                                              setup))}
            if len(found) < len(jobs):
                sys.exit(f"--report_only: {len(jobs) - len(found)} {kind} job(s) not finished in {output}")
            return found
        return run_queue(kind, setup, jobs, output, workers, zero_shot, train)

    first, seeds = args.seeds[0], args.seeds
    grids = {arm: step_grid(arm, args.lrs) for arm in args.arms}
    tuned = queue("curve", [(arm, first, lr) for arm in args.arms for lr in grids[arm]])
    if args.tune_only:
        print_tuning(tuned, zero_shot, setup)
        return {"setup": setup_key(setup), "zero_shot_accuracy": zero_shot, "step_grids": grids,
                "tuning": [dict(r) for r in tuned.values()]}
    chosen = {arm: choose_lr({lr: tuned[arm, first, lr] for lr in grids[arm]}) for arm in args.arms}
    lora = [arm for arm in args.arms if ARMS[arm].peft != "none"]
    more = queue("curve", [(arm, seed, chosen[arm]) for arm in lora for seed in seeds[1:]])
    by_run = {(arm, seed): r for (arm, seed, lr), r in {**tuned, **more}.items() if chosen[arm] == lr}
    test_jobs = [(arm, seed, chosen[arm]) for arm, seed in by_run]
    tests = {(arm, seed): r for (arm, seed, _), r in queue("test", test_jobs).items()}
    zero_shot_test = test_zero_shot(setup, output)

    gains = gain_costs(by_run, lora, seeds, zero_shot)
    c2a = compute_to_accuracy(by_run, HEADLINE[0], [a for a in lora if a != HEADLINE[0]], seeds, zero_shot)
    labels = {arm: f"{ARMS[arm].label}, lr {chosen[arm]:g}" for arm in lora}
    curves = mean_curves(by_run, labels, seeds, setup.budget_tflops)
    majority = majority_rate(validation_rows(setup)["label"])
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]} only (no spread)"
    draw_curves(figures / "compute_to_accuracy.png", {k: (g, m) for k, (g, m, _) in curves.items()},
                bands={k: s for k, (_, _, s) in curves.items()},
                reference=[("zero-shot", zero_shot), ("majority class", majority)], min_yspan=0.1,
                y_bounds=(0.0, 1.0), xlabel=xlabel,
                ylabel=f"validation accuracy ({setup.eval_samples} sentences)",
                title=f"{Path(setup.model).name} on VADER\n"
                      f"{spread}, step sizes tuned on validation")
    report = {"setup": setup_key(setup), "zero_shot_accuracy": zero_shot, "step_grids": grids, "chosen_lr": chosen,
              "gain_costs": gains, "compute_to_accuracy": c2a,
              "runs": [dict(r) for r in by_run.values()], "tuning": [dict(r) for r in tuned.values()],
              "test": [dict(r) for r in tests.values()], "zero_shot_test": zero_shot_test}
    write_json(output / "report.json", report)
    print_report(setup, zero_shot, grids, chosen, by_run, tests, gains, c2a, seeds, zero_shot_test, headline)
    return report
