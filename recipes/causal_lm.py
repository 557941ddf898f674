"""Zeroth-order fine-tuning of a causal LM on a label-word task (MeZO's large-model setting).

Default: OPT-1.3B on SST-2. The prompt ends where the label word starts ("<sentence> It was") and the model
scores each label word (" great" / " terrible") as the continuation. Other presets: --task rte|boolq|wic.

    accelerate launch recipes/causal_lm.py --output_dir out/opt_sst2
    # Llama-3.2-3B with LoRA, or QLoRA on a 4-bit nf4 base (bitsandbytes):
    accelerate launch recipes/causal_lm.py --output_dir out/llama_rte --model_name_or_path meta-llama/Llama-3.2-3B \
        --task rte --peft qlora --dtype bfloat16 --learning_rate 1e-4 --zo_eps 1e-2
    # offline, with the SmolLM2 asset (`hf-fedzo prepare-assets`) and the VADER movie sentences:
    HF_HUB_OFFLINE=1 python recipes/causal_lm.py --output_dir out/smollm2 --dataset vader \
        --model_name_or_path "$(python -c 'from hf_fedzo.data import smollm2_path; print(smollm2_path())')"

Local data (--train_file/--validation_file) needs the preset's columns (sst2: sentence, label; rte: premise,
hypothesis, label; ...); rename with --columns. Outputs: the model or adapter, metrics.json,
accuracy_vs_flops.png.
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
from hf_fedzo.tasks import get_preset

# MeZO's OPT settings; LoRA/QLoRA want a larger step: --learning_rate 1e-4 --zo_eps 1e-2.
DEFAULTS: dict[str, Any] = {
    "model_name_or_path": "facebook/opt-1.3b",
    "task": "sst2",
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant",  # as MeZO; ZOConfig keeps TrainingArguments' linear
    "zo_eps": 1e-3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "max_steps": 20_000,
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
    if get_preset(data_args.task).task_type != "label_words":
        parser.error(f"--task {data_args.task} is a generation task: use recipes/squad.py")

    # The tokenizer and the data come first: offline, each fails in a second with the flag to use instead.
    tokenizer = load_tokenizer(model_args, kind="causal")
    with args.main_process_first(desc="load the data"):
        raw = load_splits(data_args)
    model = load_model(model_args, "causal", args.device)
    # --prompt auto scores its candidates on training rows: the validation split reports the result.
    task, selection = build_task(data_args, tokenizer, "causal", model=model, validation=raw["train"], split="train")
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
    return write_run_outputs(trainer, history, recipe="causal_lm", metric="accuracy",
                             wall_time_s=time.perf_counter() - started, arguments=(model_args, data_args),
                             task=task, prompt_selection=selection,
                             validation_rows=raw["validation"])


if __name__ == "__main__":
    run_recipe(main)
