"""Zeroth-order fine-tuning of a causal LM on SQuAD, answering by generation (MeZO's generative setting).

Training minimizes the LM loss of the answer tokens after "<context>\nQuestion: <question>\nAnswer:";
evaluation generates greedily and scores exact match and token F1 against every gold answer.

    accelerate launch recipes/squad.py --output_dir out/opt_squad
    accelerate launch recipes/squad.py --output_dir out/opt_squad_lora --peft lora --learning_rate 1e-4 --zo_eps 1e-2
    # offline, with a saved model and local data:
    HF_HUB_OFFLINE=1 python recipes/squad.py --output_dir out/local --model_name_or_path /path/to/model \
        --train_file train.jsonl --validation_file dev.jsonl

Columns: `context`, `question` and `answers` (a SQuAD dict {"text": [...], ...}, a list or one string).
Outputs: the model or adapter, metrics.json (exact_match and f1 of generated answers; the eval_teacher_forced_*
keys come from Trainer's own loop), f1_vs_flops.png.
"""

from __future__ import annotations

# Before torch: importing hf_fedzo makes OpenMP threads wait passively, so a busy machine slows a run far less
# (hf_fedzo/__init__.py says why and by how much).
import hf_fedzo  # noqa: F401

# isort: split

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import Trainer

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.runs import (
    DataArguments,
    MetricHistory,
    ModelArguments,
    build_task,
    configure_console,
    configure_threads,
    load_model,
    load_splits,
    load_tokenizer,
    recipe_parser,
    run_recipe,
    write_run_outputs,
)
from hf_fedzo.tasks import get_preset


@dataclass
class GenerationArguments:
    max_new_tokens: int = field(default=32, metadata={"help": "Longest generated answer, in tokens."})


# MeZO's SQuAD settings; LoRA/QLoRA want a larger step: --learning_rate 1e-4 --zo_eps 1e-2.
DEFAULTS: dict[str, Any] = {
    "model_name_or_path": "facebook/opt-1.3b",
    "task": "squad",
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant",  # as MeZO; ZOConfig keeps TrainingArguments' linear
    "zo_eps": 1e-3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 8,
    "max_steps": 20_000,
    "max_eval_samples": 1000,  # every evaluation generates; MeZO also scores 1,000 validation questions
    "logging_steps": 100,
    "eval_strategy": "steps",
    "eval_steps": 0.1,  # a fraction of max_steps: ten points on the F1-vs-FLOPs curve
    "save_steps": 0.1,
    "save_total_limit": 1,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    parser = recipe_parser((ModelArguments, DataArguments, GenerationArguments, ZOConfig), **DEFAULTS)
    model_args, data_args, gen_args, args = parser.parse_args_into_dataclasses(args=argv)
    # Trainer's own flags: --log_level (transformers' meaning) and --disable_tqdm also govern hf_fedzo's output.
    configure_console(args.log_level, bars=not args.disable_tqdm)
    configure_threads()
    if get_preset(data_args.task).task_type != "generation":
        parser.error(f"--task {data_args.task} is a label-word task: use recipes/causal_lm.py")

    # The tokenizer and the data come first: offline, each fails in a second with the flag to use instead.
    tokenizer = load_tokenizer(model_args, kind="causal")
    task, _ = build_task(data_args, tokenizer, "causal", max_new_tokens=gen_args.max_new_tokens)
    with args.main_process_first(desc="load and tokenize the data"):
        raw = load_splits(data_args)
        train, validation = task.preprocess_dataset(raw["train"]), task.preprocess_dataset(raw["validation"])
    model = load_model(model_args, "causal", args.device)

    # Trainer's evaluation loop cannot generate: each evaluation also generates answers to the raw questions.
    def generated_answer_scores(model: nn.Module) -> Mapping[str, float]:
        return task.evaluate(model, raw["validation"], batch_size=args.per_device_eval_batch_size)

    history = MetricHistory(extra_metrics=generated_answer_scores)  # F1 against forward FLOPs spent
    trainer_cls = Trainer if model_args.first_order else ZOSplitTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train, eval_dataset=validation,
                          processing_class=tokenizer, callbacks=[history], **task.trainer_kwargs())

    history.evaluate(trainer)  # zero-shot: the prompt alone
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    history.evaluate(trainer)  # final (reuses the evaluation of the last step when there was one)

    trainer.save_model()  # full weights, or only the adapter with --peft; the tokenizer too
    return write_run_outputs(trainer, history, recipe="squad", metric="f1", wall_time_s=time.perf_counter() - started,
                             arguments=(model_args, data_args, gen_args), task=task)


if __name__ == "__main__":
    run_recipe(main)
