"""Federated zeroth-order fine-tuning: clients exchange (seed, scalar) pairs, never weights.

--method (FedSPZO by default) runs a federation of --num_clients clients (a seeded --partition of the training
split; --clients_per_round sampled per round) and is evaluated on the held-out split before and after. Each
method in --compare_with (federated MeZO by default) then runs on the same clients until it has spent the
same forward FLOPs, so the comparison is at equal compute.

    # The offline demo (`make demo`): SmolLM2-135M-Instruct with LoRA on the VADER movie sentences, FedSPZO vs MeZO.
    python recipes/federated.py --output_dir out/federated --dataset vader \
        --model_name_or_path "$(python -c 'from hf_fedzo.data import smollm2_path; print(smollm2_path())')"
    # Many clients over several processes (or GPUs): the sampled clients are spread over the processes.
    accelerate launch --num_processes 4 recipes/federated.py --output_dir out/fed --num_clients 100

Outputs, per method in <output_dir>/<method>/: the adapter (ready for `hf-fedzo push`: its folder also holds
federation.json and metrics.json for the model card), federation_results.json (per round: clients,
drop-outs, bytes up and down, forwards and FLOPs per block, wall time, eval), accuracy plots vs rounds,
FLOPs and bytes; and in <output_dir>: summary.json and accuracy_vs_flops.png with every method.
"""

from __future__ import annotations

# Before torch: importing hf_fedzo makes OpenMP threads wait passively, so a busy machine slows a run far less
# (hf_fedzo/__init__.py says why and by how much).
import hf_fedzo  # noqa: F401

# isort: split

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from hf_fedzo.data import load_task_dataset
from hf_fedzo.federation import (
    METHODS,
    FederationConfig,
    RoundPlot,
    federation_figures,
    simulate_federation,
    task_batch_loss,
    task_clients,
)
from hf_fedzo.reporting import draw_curves, write_json
from hf_fedzo.runs import (
    ConsoleArguments,
    DataArguments,
    ModelArguments,
    build_task,
    comparison_table,
    configure_console,
    configure_threads,
    load_model,
    load_tokenizer,
    recipe_parser,
    run_recipe,
)
from hf_fedzo.tasks import TaskSpec, majority_rate, save_task


@dataclass
class RunArguments:
    output_dir: str = field(metadata={"help": "Where every method's results, plots and adapter go."})
    compare_with: list[str] = field(default_factory=lambda: ["mezo"], metadata={
        "help": "Methods run after --method at the forward-FLOP budget it spent: fedspzo, mezo, nspsa, fedavg "
                "(first-order LoRA FedAvg with AdamW; counts forward FLOPs only) or none."})
    eval_samples: int = field(default=128, metadata={"help": "Validation examples scored every --eval_every rounds."})
    test_samples: int | None = field(default=None, metadata={"help": "Held-out examples (default: all)."})
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size of evaluation forwards."})
    resume: bool = field(default=True, metadata={"help": "Continue an interrupted run found in --output_dir."})


DEFAULTS: dict[str, Any] = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset": "vader",
                            "peft": "lora", "lora_target_modules": ["q_proj", "v_proj"], "max_length": 64}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started_run = time.perf_counter()
    parser = recipe_parser((ModelArguments, DataArguments, FederationConfig, RunArguments, ConsoleArguments),
                           **DEFAULTS)
    model_args, data_args, federation, run, console = parser.parse_args_into_dataclasses(args=argv)
    methods = [federation.method, *(m for m in run.compare_with if m != "none")]
    for method in methods[1:]:  # a setting a compared method refuses ends the run now, not after the first method
        try:
            dataclasses.replace(federation, method=method)
        except ValueError as err:
            parser.error(f"--compare_with {method}: {err}")
    configure_console(console.log_level, console.quiet)
    state = PartialState(cpu=not torch.cuda.is_available())
    threads, reason = configure_threads(console.threads)
    state.print(f"torch threads per process: {threads} ({reason})")
    output = Path(run.output_dir)

    tokenizer = load_tokenizer(model_args, kind="causal")
    raw = load_task_dataset(data_args.source, train_file=data_args.train_file,
                            validation_file=data_args.validation_file)
    train = raw["train"].select(range(min(data_args.max_train_samples or len(raw["train"]), len(raw["train"]))))
    validation = raw["validation"].select(range(min(run.eval_samples, len(raw["validation"]))))
    held_out = raw["test"] if "test" in raw else raw["validation"]  # GLUE test labels are hidden
    held_out = held_out.select(range(min(run.test_samples or len(held_out), len(held_out))))

    def model_for_run() -> torch.nn.Module:
        torch.manual_seed(federation.seed)  # every process draws the same LoRA initialisation
        return load_model(model_args, "causal", state.device)

    model = model_for_run()
    # --prompt auto scores the candidates on validation rows, or on training rows when the validation split is
    # also the held-out one: the held-out split measures the chosen prompt, it never chooses it.
    task, selection = build_task(data_args, tokenizer, "causal", model=model, batch_size=run.eval_batch_size,
                                 validation=raw["validation"] if "test" in raw else train)
    if selection is not None:
        state.print(selection.table())
    clients, partition = task_clients(task, train, federation)

    def held_out_metrics(model: torch.nn.Module) -> dict[str, float]:
        return task.evaluate(model, held_out, batch_size=run.eval_batch_size)

    zero_shot = held_out_metrics(model) if state.is_main_process else None
    if zero_shot is not None:
        state.print(f"zero-shot accuracy on {len(held_out)} held-out examples: {zero_shot['accuracy']:.4f}")
    # The curves start at round 0: the zero-shot score of the validation rows every evaluation uses.
    evaluate = lambda m: task.evaluate(m, validation, batch_size=run.eval_batch_size)  # noqa: E731
    validation_zero_shot = evaluate(model)["accuracy"] if state.is_main_process else None
    validation_majority = majority_rate(validation[task.target]) if task.target in validation.column_names else None
    if validation_zero_shot is not None:
        state.print(f"zero-shot accuracy on {len(validation)} validation examples (round 0 of the curves): "
                    f"{validation_zero_shot:.4f}")
    references = [("zero-shot (same prompt)", validation_zero_shot), ("majority class", validation_majority)]
    curve_label = f"accuracy on {len(validation)} validation examples"
    labels = held_out[task.target] if task.target in held_out.column_names else []
    prompt = TaskSpec.from_task(task).to_dict()
    summary: dict[str, Any] = {"model": model_args.model_name_or_path, "dataset": data_args.source,
                               "prompt": prompt,
                               "prompt_selection": selection.as_dict() if selection else None,
                               "held_out_examples": len(held_out), "majority_rate": majority_rate(labels),
                               "zero_shot_accuracy": zero_shot and zero_shot["accuracy"], "zero_shot": zero_shot,
                               "partition": partition, "methods": {}}
    run_info = {"model": model_args.model_name_or_path, "dataset": data_args.source, "task": data_args.task,
                "peft": model_args.peft, "lora_r": model_args.lora_r, "lora_last_layers": model_args.lora_last_layers,
                "lora_target_modules": model_args.lora_target_modules,
                "prompt": prompt}  # in the resume fingerprint: a run with another prompt is never reused
    curves, budget = {}, federation.flop_budget
    for index, method in enumerate(methods):
        config = dataclasses.replace(federation, method=method, flop_budget=budget)
        if index and federation.flop_budget is None:  # run until the first method's compute is spent
            config = dataclasses.replace(config, rounds=20 * federation.rounds)
        model = model if index == 0 else model_for_run()
        state.print(f"{method}: {config.num_clients} clients, {config.clients_per_round} per round"
                    + (f", until {budget / 1e12:.1f} forward TFLOPs" if budget else f", {config.rounds} rounds")
                    + f"; eval = accuracy on {len(validation)} validation examples"
                    + (f" every {config.eval_every} rounds and at the end" if config.eval_every else " at the end"))
        started = time.perf_counter()
        plot = RoundPlot(label=method, start=validation_zero_shot, references=references, ylabel=curve_label)
        result = simulate_federation(model, task_batch_loss(task), clients, config, output_dir=output / method,
                                     resume=run.resume, evaluate=evaluate, run_info=run_info, plot=plot)
        seconds = time.perf_counter() - started
        budget = budget if budget is not None else result.total_flops
        if state.is_main_process:
            # The adapter folder is what `hf-fedzo push` publishes: its card reads these two files.
            adapter, figures = output / method / "adapter", federation_figures(config, result)
            model.save_pretrained(adapter)
            save_task(task, adapter, selection.as_dict() if selection else None)
            metrics = held_out_metrics(model)
            state.print(f"{method}: accuracy on {len(held_out)} held-out examples {metrics['accuracy']:.4f} "
                        f"(balanced {metrics['balanced_accuracy']:.4f}; zero-shot {summary['zero_shot_accuracy']:.4f})")
            write_json(adapter / "federation.json", figures)
            write_json(adapter / "metrics.json", {"eval_accuracy": metrics["accuracy"],
                                                  "eval_balanced_accuracy": metrics["balanced_accuracy"],
                                                  "zero_shot_accuracy": summary["zero_shot_accuracy"]})
            summary["methods"][method] = {
                "held_out_accuracy": metrics["accuracy"], "held_out": metrics, "rounds": figures["rounds"],
                "forward_tflops": figures["forward_tflops"],
                "wall_time_s": seconds, "bytes_up_per_client_round": figures["uplink_bytes_per_client_round"],
                "bytes_down_per_client_round": figures["downlink_bytes_per_client_round"],
                "settings": {"lr": config.fedavg_lr, "optimizer": "adamw"} if METHODS[method].first_order
                else config.round_settings().to_json(),
            }
            evaluated = [r for r in result.rounds if r.eval is not None]
            curves[method] = ([0.0, *(r.cumulative_flops / 1e12 for r in evaluated)],
                              [validation_zero_shot, *(r.eval["accuracy"] for r in evaluated)])
        state.wait_for_everyone()

    if state.is_main_process:
        summary["wall_time_s"] = time.perf_counter() - started_run
        write_json(output / "summary.json", summary)
        plot = draw_curves(output / "accuracy_vs_flops.png", curves, xlabel="cumulative forward TFLOPs (all clients)",
                           ylabel=curve_label, title=f"{data_args.source}: methods at an equal forward-FLOP budget",
                           min_yspan=0.1, y_bounds=(0.0, 1.0),
                           reference=[(name, y) for name, y in references if y is not None])
        print(f"\n{model_args.model_name_or_path} ({model_args.peft}) on {data_args.source}: "
              f"{federation.num_clients} clients ({partition_name(federation)}), "
              f"{federation.clients_per_round} per round")
        print(f"prompt {task.template.text!r} with label words {list(task.label_words)}"
              + (f", chosen on {selection.examples} {selection.split} rows" if selection else ""))
        print(comparison_table(summary))
        # The plot scores the validation rows, the table the held-out ones: show the plot's numbers too.
        print(f"{curve_label} (the plot's split): " + ", ".join(
            [f"zero-shot {validation_zero_shot:.4f}", *(f"{m} {ys[-1]:.4f}" for m, (_, ys) in curves.items())]
            + ([f"majority class {validation_majority:.4f}"] if validation_majority is not None else [])))
        print(f"total wall time {summary['wall_time_s']:.0f} s (loading, evaluations and every method); "
              f"validation curves: {plot}")
    return summary


def partition_name(config: FederationConfig) -> str:
    return f"dirichlet alpha={config.dirichlet_alpha}" if config.partition == "dirichlet" else config.partition


if __name__ == "__main__":
    run_recipe(main)
