"""Zeroth-order fine-tuning of RoBERTa-large on SST-2 with a masked-LM prompt (MeZO's medium-model setting).

The sentence becomes "<sentence> It was<mask>" and the model picks " great" or " terrible" at the mask, as
in pre-training; that prompt is what makes forward-only training converge.

    accelerate launch recipes/roberta_sst2.py --output_dir out/roberta_sst2
    accelerate launch recipes/roberta_sst2.py --output_dir out/roberta_lora --peft lora \
        --learning_rate 1e-4 --zo_eps 1e-2
    # offline: a saved model and local data
    HF_HUB_OFFLINE=1 python recipes/roberta_sst2.py --output_dir out/local \
        --model_name_or_path /path/to/roberta-large --train_file train.csv --validation_file dev.csv

Columns: `sentence` (text) and `label` (0 = negative, 1 = positive); rename with `--columns sentence=text`.
Outputs in --output_dir: the model (or adapter) and tokenizer, metrics.json, accuracy_vs_flops.png.
"""

from __future__ import annotations

# Before torch: importing hf_fedzo makes OpenMP threads wait passively, so a busy machine slows a run far less
# (hf_fedzo/__init__.py says why and by how much).
import hf_fedzo  # noqa: F401

# isort: split

import time
from typing import Any

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

# MeZO's RoBERTa-large SST-2 settings; --peft lora wants a larger step: --learning_rate 1e-4 --zo_eps 1e-2.
DEFAULTS: dict[str, Any] = {
    "model_name_or_path": "roberta-large",
    "task": "sst2",
    "dataset": "glue/sst2",
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant",  # as MeZO; ZOConfig keeps TrainingArguments' linear
    "zo_eps": 1e-3,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 64,
    "max_steps": 100_000,
    "logging_steps": 100,
    "eval_strategy": "steps",
    "eval_steps": 0.1,  # a fraction of max_steps: ten points on the accuracy-vs-FLOPs curve
    "save_steps": 0.1,
    "save_total_limit": 1,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    parser = recipe_parser((ModelArguments, DataArguments, ZOConfig), **DEFAULTS)
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    # Trainer's own flags: --log_level (transformers' meaning) and --disable_tqdm also govern hf_fedzo's output.
    configure_console(args.log_level, bars=not args.disable_tqdm)
    configure_threads()

    # The tokenizer and the data come first: offline, each fails in a second with the flag to use instead.
    tokenizer = load_tokenizer(model_args, kind="mlm")
    with args.main_process_first(desc="load the data"):
        raw = load_splits(data_args)
    model = load_model(model_args, "mlm", args.device)
    # --prompt auto scores its candidates on training rows: the validation split reports the result.
    task, selection = build_task(data_args, tokenizer, "mlm", model=model, validation=raw["train"], split="train")
    with args.main_process_first(desc="tokenize the data"):
        train, validation = task.preprocess_dataset(raw["train"]), task.preprocess_dataset(raw["validation"])

    history = MetricHistory()  # accuracy against the forward FLOPs spent, at every evaluation
    trainer_cls = Trainer if model_args.first_order else ZOSplitTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train, eval_dataset=validation,
                          processing_class=tokenizer, callbacks=[history], **task.trainer_kwargs())

    history.evaluate(trainer)  # zero-shot: the prompt alone
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    history.evaluate(trainer)  # final (reuses the evaluation of the last step when there was one)

    trainer.save_model()  # full weights, or only the adapter with --peft; the tokenizer too
    return write_run_outputs(trainer, history, recipe="roberta_sst2", metric="accuracy",
                             wall_time_s=time.perf_counter() - started, arguments=(model_args, data_args),
                             task=task, prompt_selection=selection,
                             validation_rows=raw["validation"])


if __name__ == "__main__":
    run_recipe(main)
