# Copyright 2020 The HuggingFace Inc. team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The drop-in promise: Hugging Face's own example scripts with only `Trainer` and `TrainingArguments` swapped.

`run_clm` and `run_classification` below are trimmed copies of transformers'
examples/pytorch/language-modeling/run_clm.py (commit 00d481d18f914b55e65faa31e82321629691eadb) and
examples/pytorch/text-classification/run_classification.py (commit 005c23ae8f6dca810fa2a0e5cecabe0cfb24aaf3),
both for transformers 4.57 (the newest stored; the suite runs transformers 5.x). Trimmed: Hub datasets,
streaming, logging set-up, regression and multi-label branches; the one other change is
`evaluate.load("accuracy")` → the packaged offline copy of the same metric. The swap is the two import
lines marked "ZO SWAP". The tests run them with the scripts' own flags on a tiny model.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    default_data_collator,
    set_seed,
)

from hf_fedzo import ZOConfig as TrainingArguments  # ZO SWAP
from hf_fedzo import ZOSplitTrainer as Trainer  # ZO SWAP
from hf_fedzo.metrics import load_metric
from hf_fedzo.trajectory import from_trajectory, load_trajectory
from tests.tiny_models import bert_cls, build_tokenizer, llama


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None)
    cache_dir: str | None = field(default=None)


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(default=None)
    validation_file: str | None = field(default=None)
    test_file: str | None = field(default=None)
    block_size: int | None = field(default=None)
    max_seq_length: int = field(default=128)


def run_clm(argv: list[str]) -> Trainer:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    set_seed(training_args.seed)
    data_files = {"train": data_args.train_file, "validation": data_args.validation_file}
    raw_datasets = load_dataset("text", data_files=data_files, cache_dir=model_args.cache_dir, keep_linebreaks=True)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    column_names = list(raw_datasets["train"].features)
    tokenized_datasets = raw_datasets.map(lambda examples: tokenizer(examples["text"]), batched=True,
                                          remove_columns=column_names)
    block_size = data_args.block_size

    def group_texts(examples):
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated_examples[next(iter(examples.keys()))])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated_examples.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm_datasets = tokenized_datasets.map(group_texts, batched=True)

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    metric = load_metric("accuracy")

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        labels = labels[:, 1:].reshape(-1)
        preds = preds[:, :-1].reshape(-1)
        return metric.compute(predictions=preds, references=labels)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm_datasets["train"] if training_args.do_train else None,
        eval_dataset=lm_datasets["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
    )
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["perplexity"] = math.exp(metrics["eval_loss"])
        trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="text-generation")
    return trainer


def run_classification(argv: list[str]) -> Trainer:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    set_seed(training_args.seed)
    data_files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    raw_datasets = load_dataset("json", data_files=data_files, cache_dir=model_args.cache_dir)
    label_list = sorted(str(label) for label in raw_datasets["train"].unique("label"))
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=len(label_list),
                                        finetuning_task="text-classification")
    config.problem_type = "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, config=config)
    label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = label_to_id
    model.config.id2label = {id: label for label, id in label_to_id.items()}

    def preprocess_function(examples):
        result = tokenizer(examples["sentence"], padding="max_length", max_length=data_args.max_seq_length,
                           truncation=True)
        result["label"] = [label_to_id[str(label)] for label in examples["label"]]
        return result

    raw_datasets = raw_datasets.map(preprocess_function, batched=True)
    metric = load_metric("accuracy")

    def compute_metrics(p):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return metric.compute(predictions=np.argmax(preds, axis=1), references=p.label_ids)

    trainer = Trainer(model=model, args=training_args, train_dataset=raw_datasets["train"],
                      eval_dataset=raw_datasets["validation"], compute_metrics=compute_metrics,
                      processing_class=tokenizer, data_collator=default_data_collator)
    if training_args.do_train:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
    if training_args.do_eval:
        trainer.save_metrics("eval", trainer.evaluate(eval_dataset=raw_datasets["validation"]))
    if training_args.do_predict:
        predict_dataset = raw_datasets["test"].remove_columns("label")
        predictions = np.argmax(trainer.predict(predict_dataset, metric_key_prefix="predict").predictions, axis=1)
        with open(Path(training_args.output_dir) / "predict_results.txt", "w") as writer:
            writer.write("index\tprediction\n")
            for index, item in enumerate(predictions):
                writer.write(f"{index}\t{model.config.id2label[item]}\n")
    return trainer


# ------------------------------------------------------------------------------------------------ the tests
SENTENCES = ["the film was great and the acting was wonderful", "the film was terrible and the plot was boring",
             "a moving and beautiful story", "a dull and pointless mess", "it was great", "it was terrible"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dropin")
    tokenizer = build_tokenizer()
    for name, factory in (("llama", llama), ("bert", bert_cls)):
        torch.manual_seed(0)
        factory().save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    lines = [SENTENCES[(7 * i) % len(SENTENCES)] for i in range(60)]
    (root / "train.txt").write_text("\n".join(lines[:48]) + "\n")
    (root / "valid.txt").write_text("\n".join(lines[48:]) + "\n")
    for split, rows in (("train", 32), ("valid", 8), ("test", 6)):
        with open(root / f"cls_{split}.json", "w") as handle:
            for i in range(rows):
                sentence = SENTENCES[(5 * i + len(split)) % len(SENTENCES)]
                handle.write(json.dumps({"sentence": sentence, "label": int("great" in sentence
                                                                            or "moving" in sentence)}) + "\n")
    return {"root": root}


def clm_flags(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    root = assets["root"]
    return ["--model_name_or_path", str(root / "llama"), "--train_file", str(root / "train.txt"),
            "--validation_file", str(root / "valid.txt"), "--cache_dir", str(root / "cache"), "--block_size", "8",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-2",
            "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--output_dir", str(out), *extra]


def replayed_equals_saved(base: Path, out: Path) -> None:
    """`from_trajectory` on the output folder rebuilds exactly the weights saved there."""
    rebuilt = from_trajectory(str(base), out)
    saved = load_file(out / "model.safetensors")
    for name, tensor in rebuilt.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name


def test_clm_train_eval_save_resume_with_accumulation_and_warmup(assets: dict[str, Path], tmp_path: Path) -> None:
    flags = ["--do_train", "--do_eval", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
             "--gradient_accumulation_steps", "2", "--warmup_steps", "1", "--seed", "3"]
    whole = run_clm(clm_flags(assets, tmp_path / "whole", *flags))
    # The scheduler is TrainingArguments' default (linear), whichever half of the swap a script made.
    assert whole.args.lr_scheduler_type == "linear"
    rates = [entry["learning_rate"] for entry in whole.state.log_history if "loss" in entry]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1e-2) and rates[1] > rates[2] > rates[3] > 0
    record = load_trajectory(tmp_path / "whole")
    assert [len(update.step_seeds) for update in record.updates] == [2, 2, 2, 2]  # accumulated micro-batches
    assert [update.lr for update in record.updates] == rates
    eval_results = json.loads((tmp_path / "whole" / "eval_results.json").read_text())
    assert 0.0 <= eval_results["eval_accuracy"] <= 1.0 and eval_results["perplexity"] > 1.0  # compute_metrics ran
    replayed_equals_saved(assets["root"] / "llama", tmp_path / "whole")

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = run_clm(clm_flags(assets, resumed_dir, *flags, "--resume_from_checkpoint",
                                str(resumed_dir / "checkpoint-2")))
    assert load_file(resumed_dir / "model.safetensors").keys() == load_file(tmp_path / "whole" /
                                                                            "model.safetensors").keys()
    for name, tensor in load_file(tmp_path / "whole" / "model.safetensors").items():
        assert torch.equal(tensor, load_file(resumed_dir / "model.safetensors")[name]), name
    again = load_trajectory(resumed_dir)
    assert again.final_fingerprint == record.final_fingerprint
    assert again.run["totals"] == record.run["totals"] == resumed.zo_work.to_dict()  # work counted on from the save


def test_clm_bf16_autocast_with_a_cosine_warmup_schedule(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    trainer = run_clm(clm_flags(assets, out, "--do_train", "--max_steps", "4", "--logging_steps", "1", "--bf16",
                                "--lr_scheduler_type", "cosine", "--warmup_steps", "1", "--seed", "7"))
    assert trainer.args.bf16 and trainer.args.lr_scheduler_type == "cosine"
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1e-2) and rates[1] > rates[2] > rates[3] > 0
    assert [update.lr for update in load_trajectory(out).updates] == rates
    replayed_equals_saved(assets["root"] / "llama", out)  # the weights stay float32; autocast only runs the forwards
    fp32 = run_clm(clm_flags(assets, tmp_path / "fp32", "--do_train", "--max_steps", "1", "--logging_steps", "1",
                             "--lr_scheduler_type", "cosine", "--warmup_steps", "1", "--seed", "7"))
    fp32_loss = next(entry["loss"] for entry in fp32.state.log_history if "loss" in entry)
    assert fp32_loss != losses[0] and fp32_loss == pytest.approx(losses[0], rel=0.05)  # bf16 forwards really ran


def test_clm_load_best_model_at_end_saves_a_replayable_trajectory(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "best"
    trainer = run_clm(clm_flags(assets, out, "--do_train", "--do_eval", "--max_steps", "6", "--eval_strategy",
                                "steps", "--eval_steps", "2", "--save_steps", "2", "--load_best_model_at_end",
                                "--metric_for_best_model", "loss", "--greater_is_better", "true", "--seed", "5"))
    best = Path(trainer.state.best_model_checkpoint)
    best_step = int(best.name.split("-")[1])
    assert best_step < 6, "precondition: the best checkpoint must not be the last one for this test to bite"
    record = load_trajectory(out)
    assert len(record.updates) == best_step and record.run["weights_from_checkpoint"] == best.name
    assert record.final_fingerprint == load_trajectory(best).final_fingerprint
    replayed_equals_saved(assets["root"] / "llama", out)


def test_classification_compute_metrics_and_predict(assets: dict[str, Path], tmp_path: Path) -> None:
    root, out = assets["root"], tmp_path / "cls"
    run_classification(["--model_name_or_path", str(root / "bert"), "--train_file", str(root / "cls_train.json"),
                        "--validation_file", str(root / "cls_valid.json"), "--test_file",
                        str(root / "cls_test.json"), "--cache_dir", str(root / "cache"), "--max_seq_length", "12",
                        "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--max_steps", "2",
                        "--do_train", "--do_eval", "--do_predict", "--report_to", "none", "--use_cpu",
                        "--disable_tqdm", "true", "--save_strategy", "no", "--output_dir", str(out)])
    assert 0.0 <= json.loads((out / "eval_results.json").read_text())["eval_accuracy"] <= 1.0
    rows = (out / "predict_results.txt").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 7 and {r.split("\t")[1] for r in rows[1:]} <= {"0", "1"}
    # The script relabels the config before training, so the run's base is the base weights with the saved config.
    base = AutoModelForSequenceClassification.from_pretrained(root / "bert", config=AutoConfig.from_pretrained(out))
    replayed = from_trajectory(base, out)
    for name, tensor in load_file(out / "model.safetensors").items():
        assert torch.equal(replayed.state_dict()[name], tensor), name


@pytest.mark.parametrize(("flags", "named"), [
    (["--optim", "adafactor"], "optim='adafactor' is ignored"),
    (["--adam_beta1", "0.8"], "adam_beta1=0.8 is ignored"),
    (["--activation_checkpointing"], "activation_checkpointing=True has no effect"),
    (["--gradient_checkpointing"], "gradient_checkpointing=True has no effect"),
])
def test_ignored_trainer_options_are_named(flags: list[str], named: str, tmp_path: Path) -> None:
    parser = HfArgumentParser((TrainingArguments,))
    with pytest.warns(UserWarning, match=named):
        (args,) = parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), *flags])
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False


def test_fp16_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^fp16: AMP fp16 needs gradients"):
        HfArgumentParser((TrainingArguments,)).parse_args_into_dataclasses(
            args=["--output_dir", str(tmp_path), "--fp16"])


@pytest.mark.parametrize("split", ["none", "0.5"])
def test_torch_compile_does_not_recompile_and_counts_the_same_flops(split: str, tmp_path: Path) -> None:
    # --torch_compile: after the first step compiled the model, no later forward may recompile it (counting and
    # split hooks did, until dynamo's recompile limit), and the FLOPs counted once per shape equal the eager run's.
    import datasets
    from torch._dynamo.utils import counters
    from transformers import TrainerCallback

    class FailOnRecompile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.compiler.set_stance("fail_on_recompile")

    ids = torch.arange(48).remainder(7).add(5).view(6, 8).tolist()
    data = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})

    def train(compiled: bool) -> tuple[Trainer, int]:
        torch.manual_seed(0)
        args = TrainingArguments(output_dir=str(tmp_path / str(compiled)), max_steps=3, per_device_train_batch_size=2,
                                 learning_rate=1e-3, zo_split=split, report_to=[], use_cpu=True,
                                 save_strategy="no", disable_tqdm=True, torch_compile=compiled,
                                 torch_compile_backend="eager" if compiled else None)
        trainer = Trainer(model=llama(num_hidden_layers=2), args=args, train_dataset=data,
                          callbacks=[FailOnRecompile()] if compiled else None)
        torch._dynamo.reset()
        counters.clear()
        try:
            trainer.train()
            return trainer, counters["stats"]["unique_graphs"]
        finally:
            torch.compiler.set_stance("default")
            torch._dynamo.reset()

    (eager_run, _), (compiled_run, graphs) = train(False), train(True)
    assert compiled_run.zo_work == eager_run.zo_work and compiled_run.zo_work.flops > 0
    # Without a split the training forwards run compiled; split forwards run eagerly (README: Migrating).
    assert graphs == (1 if split == "none" else 0)
