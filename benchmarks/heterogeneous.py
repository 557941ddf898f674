"""Heterogeneous federations: what to do with clients that can afford only the top quarter of the layers.

Real SmolLM2-135M-Instruct with LoRA (r=8, q_proj/v_proj) on the VADER movie sentences, with the prompt
``--prompt auto`` would choose (scored zero-shot on validation rows the curves do not use), 8 clients with a
Dirichlet(0.5) label skew, 4 sampled per round; clients 4-7 are weak (the ``half-quarter`` profile: a FLOP
budget per local step of training the top quarter of the layers). Arms, all FedSPZO at the default split, the
same seed, data order and sampling:

* ``all-weak``: everyone runs the weak clients' setting (``all-quarter`` budgets, ``top``);
* ``exclude-weak``: the weak clients are left out (a federation of clients 0-3, half as many per round);
* ``top``: each client trains the deepest suffix it affords;
* ``zorba``: the coverage-constrained allocation (``--block_allocation zorba``);
* ``zorba-fedmezo``: ``zorba`` with the FedMeZO client-wise learning rate instead of a shared one.

Every arm runs the same number of rounds and is evaluated on the same validation sentences; each curve is
accuracy against cumulative forward FLOPs and against wall-clock. Wall-clock is modelled, not measured (the
simulator runs clients one after the other): every client computes at the same rate, and the slowest sampled
client bounds a round, so a round lasts ``max_k FLOPs_k / rate`` (reported in units of a full-model client's
local steps). The comparison points are the smallest total any arm reached (equal FLOPs, equal wall-clock),
read off each curve by linear interpolation. Peak memory per client kind is measured in a fresh process per
kind (the median of three, interleaved), over one client's local steps (the resident high-water mark from the
steps' start on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU): a strong client, a weak one, and a weak
one that holds the base weights of the layers it does not train in bfloat16 (``frozen_dtype``, a standalone
client). Each probe first copies the weights into the process's own memory: ``from_pretrained`` leaves them as
pages of the mmap'ed checkpoint, which stay mapped (and resident until the kernel needs the memory) after a
lowering drops them.

    hf-fedzo prepare-assets
    python -m benchmarks.heterogeneous --output_dir out/heterogeneous          # the full run
    python -m benchmarks.heterogeneous --quick --output_dir out/hetero-quick   # a smoke run (minutes)

The last line is ``heterogeneous: accuracy zorba X.XXX, exclude-weak Y.YYY, all-weak Z.ZZZ at equal wall-clock``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.curves import interpolate


@dataclass(frozen=True)
class Arm:
    name: str
    budgets: str | None  # a budget profile (hf_fedzo.federation.BUDGET_PROFILES)
    allocation: str = "top"
    client_lr_policy: str = "none"
    strong_only: bool = False  # the weak half of the clients is left out


ARMS = (Arm("all-weak", "all-quarter"), Arm("exclude-weak", None, "none", strong_only=True),
        Arm("top", "half-quarter"), Arm("zorba", "half-quarter", "zorba"),
        Arm("zorba-fedmezo", "half-quarter", "zorba", client_lr_policy="fedmezo"))


@dataclass(frozen=True)
class Setup:
    model: str
    rounds: int = 60
    eval_every: int = 10
    eval_samples: int = 512  # the first validation rows: every curve point
    prompt_examples: int = 128  # the next ones: the prompt selection
    num_clients: int = 8
    clients_per_round: int = 4
    local_steps: int = 2
    batch_size: int = 8
    learning_rate: float = 2e-3
    zo_eps: float = 1e-2
    dirichlet_alpha: float = 0.5
    lora_r: int = 8
    max_length: int = 64
    seed: int = 0


MEMORY_REPEATS = 3  # each client kind's peak is the median of this many fresh processes
QUICK = {"rounds": 4, "eval_every": 2, "eval_samples": 32, "prompt_examples": 16, "local_steps": 1, "batch_size": 4}


# ------------------------------------------------------------------------------------------------- running

def real_task(setup: Setup, task: Any = None) -> tuple[Callable[[], Any], Any, Any, Any]:
    """Model factory, task, training rows and evaluation rows of the real setup (SmolLM2 + LoRA, VADER).

    Without ``task``, the prompt is chosen as ``--prompt auto`` does (balanced accuracy, zero-shot, with and
    without calibration) on the ``prompt_examples`` validation rows after the ``eval_samples`` the curves use."""
    import torch

    from hf_fedzo.data import load_task_dataset
    from hf_fedzo.runs import ModelArguments, load_model, load_tokenizer
    from hf_fedzo.tasks import select_prompt

    args = ModelArguments(model_name_or_path=setup.model, peft="lora", lora_r=setup.lora_r,
                          lora_alpha=2 * setup.lora_r, lora_target_modules=["q_proj", "v_proj"])
    raw = load_task_dataset("vader")
    validation = raw["validation"]

    def model() -> Any:
        torch.manual_seed(setup.seed)  # the same LoRA initialisation in every arm
        return load_model(args, "causal")

    if task is None:
        held = validation.select(range(setup.eval_samples, setup.eval_samples + setup.prompt_examples))
        task, selection = select_prompt(model(), load_tokenizer(args, kind="causal"), held, "sst2",
                                        num_examples=None, max_length=setup.max_length)
        print(f"prompt: {selection.best.name}{' (calibrated)' if selection.best.calibrated else ''}, balanced "
              f"accuracy {selection.best.metrics['balanced_accuracy']:.3f} on {len(held)} validation rows",
              flush=True)
    return model, task, raw["train"], validation.select(range(setup.eval_samples))


def arm_config(setup: Setup, arm: Arm) -> Any:
    from hf_fedzo.federation import FederationConfig

    clients, per_round = setup.num_clients, setup.clients_per_round
    if arm.strong_only:
        clients, per_round = clients // 2, max(1, per_round // 2)
    return FederationConfig(
        num_clients=clients, clients_per_round=per_round, rounds=setup.rounds, local_steps=setup.local_steps,
        batch_size=setup.batch_size, learning_rate=setup.learning_rate, zo_eps=setup.zo_eps, partition="dirichlet",
        dirichlet_alpha=setup.dirichlet_alpha, seed=setup.seed, eval_every=setup.eval_every,
        client_budgets=arm.budgets, block_allocation=arm.allocation, client_lr_policy=arm.client_lr_policy)


def run_arm(setup: Setup, arm: Arm, output: Path, model_fn: Callable[[], Any], batch_loss: Any,
            clients: Sequence[Any], evaluate: Callable[[Any], Mapping[str, float]]) -> dict[str, Any]:
    """One federation of ``arm``; its rounds as (FLOPs, modelled time, accuracy) points and its accounting."""
    from hf_fedzo.federation import simulate_federation

    config = arm_config(setup, arm)
    chosen = list(clients[: config.num_clients])  # the strong clients are 0 … n/2 - 1 in every profile
    started = time.perf_counter()
    result = simulate_federation(model_fn(), batch_loss, chosen, config, output_dir=output / arm.name,
                                 evaluate=evaluate, run_info={"benchmark": "heterogeneous", "arm": arm.name})
    rounds = [r.to_dict() for r in result.rounds]
    return {"arm": arm.name, "rounds": rounds, "wall_s": time.perf_counter() - started}


def measure_peak_memory(setup: Setup, task: Any, active: str | None, frozen_dtype: str | None = None) -> float:
    """Peak memory (MiB) of one client's local steps with ``active`` (None: everything), in a fresh process;
    with ``frozen_dtype``, a standalone client that holds its frozen layers' base weights in that dtype."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return float(pool.submit(_client_peak, setup, task, active, frozen_dtype).result())


def _client_peak(setup: Setup, task: Any, active: str | None, frozen_dtype: str | None = None) -> float:
    import gc
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hf_fedzo.federation import FederationConfig, ZOClient, task_batch_loss, task_clients

    model_fn, task, train, _ = real_task(setup, task)
    config = FederationConfig(num_clients=setup.num_clients, clients_per_round=1, local_steps=setup.local_steps,
                              batch_size=setup.batch_size, zo_eps=setup.zo_eps, partition="iid", seed=setup.seed,
                              block_allocation="top" if frozen_dtype else "none", frozen_dtype=frozen_dtype)
    clients, _ = task_clients(task, train.select(range(64)), config)
    model = model_fn()
    with torch.no_grad():  # own the weights: from_pretrained leaves them as pages of the mmap'ed checkpoint
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    gc.collect()
    client = ZOClient(model, task_batch_loss(task), keep_full_precision=frozen_dtype is None)
    batches = clients[0].round_batches(setup.seed, 0, 0, setup.local_steps, setup.batch_size)
    client.run_local_steps(0, setup.seed, 0, config.round_settings(), batches, active)
    assert client.peak_memory_mib is not None
    return client.peak_memory_mib


# ------------------------------------------------------------------------------- analysis (pure functions)

def curves(run: Mapping[str, Any], zero_shot: float) -> dict[str, list[list[float]]]:
    """Accuracy against cumulative FLOPs and against modelled wall-clock (the slowest client bounds a round:
    a round lasts as long as its largest client FLOPs). Both start at the zero-shot accuracy."""
    flops, clock = [[0.0, zero_shot]], [[0.0, zero_shot]]
    spent_clock = 0.0
    for r in run["rounds"]:
        per_client = [a["flops_block1"] + a["flops_block2"] for a in r.get("accounting", {}).values()]
        spent_clock += max(per_client) if per_client else r["flops"] / max(len(r["sampled"]), 1)
        if "eval" in r:
            flops.append([float(r["cumulative_flops"]), r["eval"]["accuracy"]])
            clock.append([spent_clock, r["eval"]["accuracy"]])
    return {"flops": flops, "clock": clock}


def compare(runs: Sequence[Mapping[str, Any]], zero_shot: float) -> dict[str, Any]:
    """Each arm's accuracy at the smallest total FLOPs and the smallest total wall-clock any arm reached."""
    by_arm = {run["arm"]: curves(run, zero_shot) for run in runs}
    table: dict[str, Any] = {"arms": {}}
    for axis in ("flops", "clock"):
        common = min(c[axis][-1][0] for c in by_arm.values())
        table[f"equal_{axis}"] = common
        for arm, c in by_arm.items():
            table["arms"].setdefault(arm, {})[f"accuracy_at_equal_{axis}"] = interpolate(c[axis], [common])[0]
    for run in runs:
        table["arms"][run["arm"]]["total_flops"] = by_arm[run["arm"]]["flops"][-1][0]
        table["arms"][run["arm"]]["modelled_clock"] = by_arm[run["arm"]]["clock"][-1][0]
        table["arms"][run["arm"]]["active_sets"] = sorted({a["active_id"] for r in run["rounds"]
                                                           for a in r.get("accounting", {}).values()
                                                           if a.get("active_id")})
    return table


def summary_line(table: Mapping[str, Any]) -> str:
    arms = table["arms"]
    return ("heterogeneous: accuracy zorba {:.3f}, exclude-weak {:.3f}, all-weak {:.3f} at equal wall-clock".format(
        *(arms[a]["accuracy_at_equal_clock"] for a in ("zorba", "exclude-weak", "all-weak"))))


def report(table: Mapping[str, Any], memory: Mapping[str, float]) -> str:
    lines = ["| arm | accuracy at equal FLOPs | accuracy at equal wall-clock | total TFLOPs | active sets |",
             "|---|---|---|---|---|"]
    for arm, row in table["arms"].items():
        lines.append(f"| {arm} | {row['accuracy_at_equal_flops']:.3f} | {row['accuracy_at_equal_clock']:.3f} | "
                     f"{row['total_flops'] / 1e12:.2f} | {', '.join(row['active_sets']) or 'all'} |")
    lines.append(f"\nequal FLOPs: {table['equal_flops'] / 1e12:.2f} TFLOPs; equal wall-clock: "
                 f"{table['equal_clock'] / 1e12:.2f} TFLOPs of the slowest client per round, summed")
    for kind, mib in memory.items():
        lines.append(f"peak memory, {kind} client: {mib:.0f} MiB (median of {MEMORY_REPEATS} processes)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ entry

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from hf_fedzo.data import smollm2_path
    from hf_fedzo.federation import task_batch_loss, task_clients
    from hf_fedzo.reporting import draw_curves, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="out/heterogeneous")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, few evaluation sentences")
    parser.add_argument("--arms", nargs="*", default=[a.name for a in ARMS], choices=[a.name for a in ARMS],
                        help="the arms to run, in this order (finished ones in --output_dir are reused)")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-kind peak-memory processes")
    args = parser.parse_args(argv)
    setup = Setup(model=str(smollm2_path()))
    if args.quick:
        setup = dataclasses.replace(setup, **QUICK)
    output = Path(args.output_dir)
    model_fn, task, train, validation = real_task(setup)
    evaluate = lambda m: task.evaluate(m, validation, batch_size=32)  # noqa: E731
    zero_shot = float(evaluate(model_fn())["accuracy"])
    clients, _ = task_clients(task, train, arm_config(setup, ARMS[2]))
    runs = []
    for arm in (next(a for a in ARMS if a.name == name) for name in dict.fromkeys(args.arms)):
        run = run_arm(setup, arm, output, model_fn, task_batch_loss(task), clients, evaluate)
        runs.append(run)
        print(f"{arm.name}: {len(run['rounds'])} rounds, {run['rounds'][-1]['cumulative_flops'] / 1e12:.2f} TFLOPs, "
              f"{run['wall_s']:.0f} s", flush=True)
    table = compare(runs, zero_shot)
    memory: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    if not args.no_memory:
        from hf_fedzo.federation import ZOClient

        probe_client = ZOClient(model_fn(), task_batch_loss(task))
        costs = probe_client.layer_costs(arm_config(setup, ARMS[2]).round_settings(),
                                         clients[0].round_batches(setup.seed, 0, 0, 1, setup.batch_size)[0])
        weak = costs.top(0.25).id
        kinds = {"strong (all layers)": (None, None), "weak (top quarter)": (weak, None),
                 "weak, frozen layers in bfloat16": (weak, "bfloat16")}
        samples = {kind: [] for kind in kinds}
        for _ in range(MEMORY_REPEATS):  # interleaved, so a drift in the machine hits every kind alike
            for kind, (active, frozen_dtype) in kinds.items():
                samples[kind].append(measure_peak_memory(setup, task, active, frozen_dtype))
        memory = {kind: statistics.median(values) for kind, values in samples.items()}
    write_json(output / "heterogeneous.json", {"setup": dataclasses.asdict(setup), "zero_shot": zero_shot,
                                               "table": table, "peak_memory_mib": memory,
                                               "peak_memory_samples_mib": samples})
    by_arm = {run["arm"]: curves(run, zero_shot)["flops"] for run in runs}
    points = {arm: ([p[0] / 1e12 for p in c], [p[1] for p in c]) for arm, c in by_arm.items()}
    positive = sum(validation["label"]) / len(validation)
    draw_curves(output / "accuracy_vs_flops.png", points,
                xlabel="cumulative forward TFLOPs (all clients)",
                ylabel=f"accuracy on {len(validation)} validation sentences",
                title=f"heterogeneous federations\nseed {setup.seed}, one run per arm "
                      f"(SE ±{100 * math.sqrt(zero_shot * (1 - zero_shot) / len(validation)):.1f} points)",
                min_yspan=0.1, y_bounds=(0.0, 1.0),
                reference=[("zero-shot", zero_shot), ("majority class", max(positive, 1 - positive))])
    print(report(table, memory))
    print(json.dumps({"zero_shot": zero_shot}))
    if {"zorba", "exclude-weak", "all-weak"} <= set(table["arms"]):
        print(summary_line(table))
    return table


if __name__ == "__main__":
    main()
