"""Generative tasks (SQuAD-style): LM loss on the answer tokens for training, generation for evaluation.

Training rows are `prompt + answer[:-1]`: the last answer token is only ever a target, so it is not fed,
and the kept logits (`logits_to_keep` = longest answer in the batch) are exactly the positions that
predict answer tokens. Evaluation generates greedily and scores exact match and token F1 with the packaged
`squad` metric, the way MeZO evaluates SQuAD.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

from hf_fedzo.tasks.base import (
    IGNORE_INDEX,
    Examples,
    ModelKind,
    PromptTask,
    cached_metric,
    check_columns,
    check_filled,
    evaluating,
    evaluation_batches,
    logits_from,
    pad_token_id_of,
    read_column,
    reduce_loss,
)
from hf_fedzo.tasks.collator import CausalGenerationCollator, pad_sequences
from hf_fedzo.tasks.templates import LABEL_SLOT, PromptTemplate, get_preset, special_tokens_around


def gold_answers(value: Any) -> list[str]:
    """Answers from a SQuAD `answers` dict (`{"text": [...], "answer_start": [...]}`), a string or a list."""
    if isinstance(value, Mapping):
        value = value.get("text", [])
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"answers must be a string, a list of strings or a SQuAD answers dict, got {value!r}")


@dataclass(eq=False)  # identity semantics: tasks hold tokenizers and are used as hooks
class GenerationTask(PromptTask):
    """A prompt-based generative task for causal LMs (`Trainer` baseline and `ZOSplitTrainer`).

    Example:
        ```python
        task = GenerationTask.from_preset("squad", tokenizer)
        train = task.preprocess_dataset(raw_train)
        trainer = Trainer(model, args, train_dataset=train, **task.trainer_kwargs())
        print(task.evaluate(model, raw_dev, batch_size=8))   # {"exact_match": ..., "f1": ...}
        ```

    Labels are `(B, 1 + k)` target ids aligned with the `k` kept logits (see `hf_fedzo.tasks.collator`).
    Trainer's own evaluation loop cannot generate, so `compute_metrics` reports teacher-forced scores
    (token accuracy; exact match and F1 of the argmax answer); use `evaluate` for real generation.

    Args:
        tokenizer: the model's tokenizer.
        template: the prompt; `{label}` must end it and marks where the answer starts.
        columns: maps the names this task reads (template fields and `target`) to dataset columns.
        max_length: longest training row; the template's truncatable fields are shortened to fit.
        target: the answers column (before `columns` mapping); the first answer is the training target.
        answer_prefix: text put before the answer, a space by default (`"Answer:" + " Paris"`).
        append_eos: train the model to end its answer with EOS, so generation stops there.
        max_new_tokens: generation budget; generation prompts are truncated to leave room for it.
        stop_at_newline: cut generated answers at the first newline.
        The keyword-only collator options are `PromptTask`'s.
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    template: PromptTemplate
    columns: Mapping[str, str] | None = None
    max_length: int = 512
    target: str = "answers"
    answer_prefix: str = " "
    append_eos: bool = True
    max_new_tokens: int = 32
    stop_at_newline: bool = True
    model_kind: ModelKind = "causal"
    collator: CausalGenerationCollator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_kind != "causal":
            raise ValueError(f"`model_kind` must be 'causal' for a generative task, got {self.model_kind!r}")
        if self.template.has_suffix:
            raise ValueError(
                f"`template` {self.template.text!r} must end with {{{LABEL_SLOT}}}, where the answer starts"
            )
        if self.append_eos and self.tokenizer.eos_token_id is None:
            raise ValueError("`append_eos=True` needs a tokenizer with an EOS token")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        self.columns = check_columns(self.columns, (*self.template.fields, self.target))
        self._prefix_special = special_tokens_around(self.tokenizer)[0] if self.add_special_tokens else []
        self._pad_token_id = pad_token_id_of(self.tokenizer)
        self.collator = CausalGenerationCollator(pad_token_id=self._pad_token_id, **self.collator_options())

    @classmethod
    def from_preset(
        cls, name: str, tokenizer: PreTrainedTokenizerBase, model_kind: ModelKind = "causal", **overrides: Any
    ) -> GenerationTask:
        """Build a task from a registered generation preset (`squad`, or your own)."""
        preset = get_preset(name)
        if preset.label_words is not None:
            raise ValueError(
                f"preset {name!r} is a label-word task; use LabelWordTask.from_preset or load_task"
            )
        kwargs: dict[str, Any] = {"template": preset.template, "target": preset.target, "name": name}
        return cls(tokenizer=tokenizer, model_kind=model_kind, **(kwargs | overrides))

    # --- data -----------------------------------------------------------------------------------------

    def answers(self, example: Mapping[str, Any]) -> list[str]:
        return gold_answers(read_column(example, self.target, self.columns))

    def target_ids(self, answer: str) -> list[int]:
        """Token ids the model is trained to produce: `answer_prefix + answer`, then EOS."""
        answer = answer.strip()
        ids = (
            list(self.tokenizer(self.answer_prefix + answer, add_special_tokens=False)["input_ids"])
            if answer
            else []
        )
        if self.append_eos:
            ids.append(int(self.tokenizer.eos_token_id))
        if not ids:
            raise ValueError("empty answer and `append_eos=False`: nothing to train on")
        return ids

    def encode_prompt(self, example: Mapping[str, Any], reserve: int) -> list[int]:
        """Prompt ids (special prefix included), truncated so `reserve` more tokens fit in `max_length`."""
        budget = self.max_length - len(self._prefix_special) - reserve
        if budget <= 0:
            raise ValueError(
                f"`max_length`={self.max_length} leaves no room for a prompt after {reserve} answer tokens"
            )
        values = {name: read_column(example, name, self.columns) for name in self.template.fields}
        return self._prefix_special + self.template.encode(self.tokenizer, values, budget).prefix

    def preprocess(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """`input_ids = prompt + target[:-1]`, `labels = target` (the first gold answer)."""
        answers = self.answers(example)
        target = self.target_ids(answers[0] if answers else "")
        prompt = self.encode_prompt(example, reserve=len(target) - 1)
        return {"input_ids": prompt + target[:-1], "labels": target}

    def check_rows(self, dataset: Any) -> None:
        """Refuse an empty prompt field with a `DataError` naming its row (before any training)."""
        check_filled(dataset, self.template.fields, self.columns)

    def preprocess_dataset(self, dataset: Any, **map_kwargs: Any) -> Any:
        self.check_rows(dataset)
        map_kwargs.setdefault("remove_columns", dataset.column_names)
        return dataset.map(self.preprocess, **map_kwargs)

    # --- Trainer hooks -------------------------------------------------------------------------------

    def token_losses(self, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of every scored target token, flattened."""
        targets = labels[:, 1:]
        logits = logits_from(outputs)[:, -targets.shape[1] :].float()
        targets = targets.to(logits.device)
        scored = targets != IGNORE_INDEX
        return F.cross_entropy(logits[scored], targets[scored], reduction="none")

    def compute_loss(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Mean NLL over answer tokens (the accumulated batch's, when Trainer passes `num_items_in_batch`)."""
        return reduce_loss(self.token_losses(outputs, labels), num_items_in_batch)

    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """Greedy teacher-forced predictions laid out like `labels` (`(B, 1 + k)`, column 0 = -100)."""
        keep = labels.shape[1] - 1
        predicted = logits_from(logits)[:, -keep:].argmax(-1)
        return torch.cat([torch.full_like(predicted[:, :1], IGNORE_INDEX), predicted], dim=1)

    def compute_metrics(self, eval_pred: EvalPrediction) -> dict[str, float]:
        """Teacher-forced token accuracy, exact match and F1 (generation-free; see `evaluate`)."""
        predictions = np.asarray(
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        labels = np.asarray(
            eval_pred.label_ids[0] if isinstance(eval_pred.label_ids, tuple) else eval_pred.label_ids
        )
        scored = labels != IGNORE_INDEX
        texts = [
            (self._decode(p[m]), self._decode(g[m]))
            for p, g, m in zip(predictions, labels, scored, strict=True)
        ]
        squad = cached_metric("squad").compute(
            predictions=[p for p, _ in texts], references=[[g] for _, g in texts]
        )
        return {
            "token_accuracy": cached_metric("accuracy").compute(
                predictions=predictions[scored], references=labels[scored]
            )["accuracy"],
            "teacher_forced_exact_match": squad["exact_match"],
            "teacher_forced_f1": squad["f1"],
        }

    # --- generation -------------------------------------------------------------------------------------

    def _decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        if self.stop_at_newline:
            text = text.split("\n", 1)[0]
        return text.strip()

    def _generate(
        self, model: PreTrainedModel, data: Examples, batch_size: int, max_new_tokens: int | None
    ) -> Iterator[tuple[str, Mapping[str, Any]]]:
        max_new_tokens = max_new_tokens or self.max_new_tokens
        with evaluating(model) as device:
            for rows in evaluation_batches(data, batch_size):
                prompts = [self.encode_prompt(row, reserve=max_new_tokens) for row in rows]
                input_ids = pad_sequences(prompts, self._pad_token_id, "left")
                attention_mask = pad_sequences([[1] * len(p) for p in prompts], 0, "left")
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self._pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
                for row, new_tokens in zip(rows, output[:, input_ids.shape[1] :].tolist(), strict=True):
                    yield self._decode(new_tokens), row

    def generate(
        self, model: PreTrainedModel, data: Examples, batch_size: int = 8, max_new_tokens: int | None = None
    ) -> list[str]:
        """Greedy answers for raw examples, batched with left padding, without gradients."""
        return [answer for answer, _ in self._generate(model, data, batch_size, max_new_tokens)]

    def evaluate(
        self, model: PreTrainedModel, data: Examples, batch_size: int = 8, max_new_tokens: int | None = None
    ) -> dict[str, float]:
        """Exact match and token F1 (fractions) of generated answers against every gold answer."""
        predictions, references = [], []
        for answer, row in self._generate(model, data, batch_size, max_new_tokens):
            predictions.append(answer)
            references.append(self.answers(row) or [""])
        if not predictions:
            raise ValueError("`data` is empty")
        return cached_metric("squad").compute(predictions=predictions, references=references)
