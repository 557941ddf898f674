"""Classification by label words: the model scores one word per class, as in pre-training.

* Masked LM (RoBERTa/BERT): the template's `{label}` slot becomes `<mask>`; the class scores are the
  log-probabilities of the label-word ids at that position, and the loss is cross-entropy over them
  (LM-BFF / MeZO medium models).
* Causal LM: the prompt ends where the label word would start; each candidate scores the mean
  log-probability of its tokens, and the loss is cross-entropy over the candidates (MeZO large models).
  Only the positions that predict candidate tokens get LM-head logits (`logits_to_keep`), and
  single-token candidates need one row and one position per example.

Cross-entropy over log-probabilities restricted to the candidates equals cross-entropy over the restricted
logits (the normalizer cancels), so both paths report log-probabilities as scores.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, PreTrainedTokenizerBase

from hf_fedzo.tasks.base import (
    AnyModel,
    Examples,
    InferenceMixin,
    ModelKind,
    PromptTask,
    cached_metric,
    check_columns,
    check_filled,
    logits_from,
    pad_token_id_of,
    read_column,
    reduce_loss,
)
from hf_fedzo.tasks.scorers import SCORERS, LabelWordScorer
from hf_fedzo.tasks.templates import LABEL_SLOT, PromptTemplate, get_preset, special_tokens_around


def classification_metrics(
    predictions: np.ndarray, references: np.ndarray, num_classes: int | None = None
) -> dict[str, float]:
    """Accuracy and macro-F1 (the packaged `evaluate` modules), balanced accuracy and per-class prediction rates.

    Accuracy alone hides a collapse: a model that always answers the majority class scores the majority rate.
    Balanced accuracy (the mean per-class recall) is 1/C for any constant classifier, and
    `prediction_rate_<k>` (the share of predictions that are class k) shows the collapse directly.
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    num_classes = num_classes or int(max(predictions.max(initial=0), references.max(initial=0))) + 1
    recalls = [float((predictions[references == k] == k).mean()) for k in range(num_classes) if (references == k).any()]
    return {
        "accuracy": cached_metric("accuracy").compute(predictions=predictions, references=references)[
            "accuracy"
        ],
        "f1": cached_metric("f1").compute(predictions=predictions, references=references, average="macro")[
            "f1"
        ],
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        **{f"prediction_rate_{k}": float((predictions == k).mean()) for k in range(num_classes)},
    }


def majority_rate(labels: Sequence[int]) -> float | None:
    """The accuracy of always answering the most frequent class (`None` without labels): the floor to beat."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64)) if len(labels) else None
    return None if counts is None else float(counts.max() / counts.sum())


@dataclass(eq=False)  # identity semantics: tasks hold tokenizers and are used as hooks
class LabelWordTask(PromptTask, InferenceMixin):
    """A prompt-based classification task for `Trainer` (first-order baseline) and `ZOSplitTrainer`.

    Example:
        ```python
        task = LabelWordTask.from_preset("sst2", tokenizer, model_kind="causal")
        train = task.preprocess_dataset(raw_train)
        trainer = Trainer(model, args, train_dataset=train, eval_dataset=task.preprocess_dataset(raw_dev),
                          **task.trainer_kwargs())
        print(task.evaluate(model, raw_dev, batch_size=32))   # zero-shot accuracy
        ```

    Labels are encoded as described in `hf_fedzo.tasks.collator`; `labels.amax(-1)` is always the gold
    class index.

    Args:
        tokenizer: the model's tokenizer.
        template: the prompt; its `{label}` slot is the mask (masked LM) or must end the template (causal LM).
        label_words: one word per class, indexed by the integer label. Include the leading space
            (`" great"`); a masked LM needs each word to be a single token.
        model_kind: `"mlm"` or `"causal"` (see `infer_model_kind`).
        columns: maps the names this task reads (template fields and `target`) to dataset columns, e.g.
            `{"sentence": "text", "label": "stars"}`.
        max_length: the longest row fed to the model; template fields are truncated to fit.
        target: the name of the gold-label column (before `columns` mapping).
        score_bias: one number per class added to the class log-probabilities before the loss and the
            prediction: contextual calibration (Zhao et al., 2021) stores minus the scores of content-free
            inputs here (see `hf_fedzo.tasks.selection`). `None`: no calibration.
        The keyword-only collator options are `PromptTask`'s.
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    template: PromptTemplate
    label_words: Sequence[str]
    model_kind: ModelKind = "causal"
    columns: Mapping[str, str] | None = None
    max_length: int = 256
    target: str = LABEL_SLOT
    score_bias: Sequence[float] | None = None
    scorer: LabelWordScorer = field(init=False, repr=False)
    collator: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_kind not in SCORERS:
            raise ValueError(f"`model_kind` must be one of {sorted(SCORERS)}, got {self.model_kind!r}")
        if isinstance(self.label_words, str):
            raise ValueError("`label_words` must be a sequence of words, not one string")
        self.label_words = tuple(self.label_words)
        self.scorer = SCORERS[self.model_kind](self.tokenizer, self.label_words)
        if self.score_bias is not None:
            bias = tuple(float(b) for b in self.score_bias)
            if len(bias) != len(self.label_words) or not all(np.isfinite(bias)):
                raise ValueError(
                    f"`score_bias` needs one finite number per label word ({len(self.label_words)}), got {bias}"
                )
            self.score_bias = bias
        if self.template.has_suffix and not self.scorer.keeps_suffix:
            raise ValueError(
                f"`template` {self.template.text!r} has text after {{{LABEL_SLOT}}}; a causal LM scores the "
                "label word as the continuation of the prompt, so the slot must end the template"
            )
        self.columns = check_columns(self.columns, (*self.template.fields, self.target))
        prefix, suffix = special_tokens_around(self.tokenizer) if self.add_special_tokens else ([], [])
        self._prefix_special = prefix
        self._suffix_special = suffix if self.scorer.keeps_suffix else []
        self._budget = self.max_length - len(prefix) - len(self._suffix_special) - self.scorer.slot_tokens
        if self._budget <= 0:
            raise ValueError(f"`max_length`={self.max_length} leaves no room for the prompt")
        self.collator = self.scorer.collator(pad_token_id_of(self.tokenizer), **self.collator_options())

    @classmethod
    def from_preset(
        cls, name: str, tokenizer: PreTrainedTokenizerBase, model_kind: ModelKind = "causal", **overrides: Any
    ) -> LabelWordTask:
        """Build a task from a registered preset (`sst2`, `rte`, `boolq`, `wic`, or your own); keyword
        arguments override the preset's template/label words or set any other constructor argument."""
        preset = get_preset(name)
        if preset.label_words is None:
            raise ValueError(
                f"preset {name!r} is a generation task; use GenerationTask.from_preset or load_task"
            )
        kwargs: dict[str, Any] = {
            "template": preset.template,
            "label_words": preset.label_words,
            "target": preset.target,
            "name": name,
        }
        return cls(tokenizer=tokenizer, model_kind=model_kind, **(kwargs | overrides))

    @property
    def num_classes(self) -> int:
        return len(self.label_words)

    # --- data -----------------------------------------------------------------------------------------

    def gold_index(self, example: Mapping[str, Any]) -> int:
        value = read_column(example, self.target, self.columns)
        column = self.columns.get(self.target, self.target)
        try:
            index = operator.index(value.item() if hasattr(value, "item") else value)
        except TypeError:
            raise ValueError(f"label {value!r} in column {column!r} must be an integer class index") from None
        if not 0 <= index < self.num_classes:
            raise ValueError(
                f"label {index} in column {column!r} is out of range for {self.num_classes} label words "
                f"{list(self.label_words)}"
            )
        return index

    def _check_labels(self, dataset: Any) -> None:
        from hf_fedzo.data.errors import DataError

        column = self.columns.get(self.target, self.target)
        if column not in getattr(dataset, "column_names", ()):
            return
        values = dataset[column]
        # One bad cell makes a CSV label column text: name that cell, not the first (valid-looking) one.
        as_text = [i for i, v in enumerate(values) if isinstance(v, str) and not v.strip().lstrip("-").isdigit()]
        for index in as_text[:1] or range(len(values)):
            try:
                self.gold_index({column: values[index]})
            except ValueError as err:
                raise DataError(f"row {index}: {err}") from None

    def preprocess(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """Tokenize one raw example into `input_ids` and `labels` (use with `datasets.Dataset.map`)."""
        values = {name: read_column(example, name, self.columns) for name in self.template.fields}
        gold = self.gold_index(example)
        encoded = self.template.encode(self.tokenizer, values, self._budget)
        return self.scorer.features(
            self._prefix_special + encoded.prefix, encoded.suffix + self._suffix_special, gold
        )

    def check_rows(self, dataset: Any) -> None:
        """Refuse an empty prompt field or a bad label with a `DataError` naming its row (before any training)."""
        check_filled(dataset, self.template.fields, self.columns)
        self._check_labels(dataset)

    def preprocess_dataset(self, dataset: Any, **map_kwargs: Any) -> Any:
        """`dataset.map(self.preprocess)`, dropping the raw columns (Trainer would keep a raw `label`).

        Rows are checked first (`check_rows`).
        """
        self.check_rows(dataset)
        map_kwargs.setdefault("remove_columns", dataset.column_names)
        return dataset.map(self.preprocess, **map_kwargs)

    def render(self, example: Mapping[str, Any]) -> str:
        """The prompt text of `example` with its gold label word (the mask token for a masked LM)."""
        values = {name: read_column(example, name, self.columns) for name in self.template.fields}
        slot = (
            self.tokenizer.mask_token
            if self.model_kind == "mlm"
            else self.label_words[self.gold_index(example)]
        )
        return self.template.render(values, slot)

    # --- Trainer hooks -------------------------------------------------------------------------------

    def scores(self, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        """Per-class log-probabilities `(B, C)` from model outputs (or logits) and the batch `labels`, plus
        `score_bias` when the task is calibrated."""
        scores = self.scorer.scores(logits_from(outputs), labels)
        if self.score_bias is not None:
            scores = scores + torch.tensor(self.score_bias, dtype=scores.dtype, device=scores.device)
        return scores

    def compute_loss(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Cross-entropy over the label-word scores; the `compute_loss_func` of `Trainer`."""
        scores = self.scores(outputs, labels)
        per_example = F.cross_entropy(scores, labels.amax(-1).to(scores.device), reduction="none")
        return reduce_loss(per_example, num_items_in_batch)

    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """Reduce `(rows, T, V)` logits to `(B, C)` scores so eval never stores vocabulary-sized tensors."""
        return self.scores(logits, labels)

    def compute_metrics(self, eval_pred: EvalPrediction) -> dict[str, float]:
        """Accuracy and macro-F1 from the scores returned by `preprocess_logits_for_metrics`."""
        predictions = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        label_ids = eval_pred.label_ids[0] if isinstance(eval_pred.label_ids, tuple) else eval_pred.label_ids
        return classification_metrics(
            np.asarray(predictions).argmax(-1), np.asarray(label_ids).max(-1), self.num_classes
        )

    # --- zero-shot / standalone evaluation -------------------------------------------------------------

    def scores_and_gold(self, model: AnyModel, data: Examples, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores `(N, C)` and gold class indices `(N,)` for raw or preprocessed examples, in input order."""
        features = [row if "input_ids" in row else self.preprocess(row) for row in data]
        if not features:
            raise ValueError("`data` is empty")
        # Batching similar lengths together cuts padding (a large share of the FLOPs on short sentences);
        # the results are put back in input order.
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        scores, gold = [], []
        for logits, labels in self._forward_batches(model, [features[i] for i in order], batch_size):
            scores.append(self.scores(logits, labels).cpu())
            gold.append(labels.amax(-1).cpu())
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(scores)[inverse], torch.cat(gold)[inverse]

    def score(self, model: AnyModel, data: Examples, batch_size: int = 16) -> torch.Tensor:
        """Class log-probabilities `(N, C)` for raw or preprocessed examples, batched, without gradients."""
        return self.scores_and_gold(model, data, batch_size)[0]

    def predict(self, model: AnyModel, data: Examples, batch_size: int = 16) -> torch.Tensor:
        """Predicted class indices `(N,)`."""
        return self.score(model, data, batch_size).argmax(-1)

    def evaluate(self, model: AnyModel, data: Examples, batch_size: int = 16) -> dict[str, float]:
        """Accuracy, macro-F1, balanced accuracy and per-class prediction rates of `model` on labeled examples
        (e.g. zero-shot, before fine-tuning); see `classification_metrics`."""
        scores, gold = self.scores_and_gold(model, data, batch_size)
        return classification_metrics(scores.argmax(-1).numpy(), gold.numpy(), self.num_classes)
