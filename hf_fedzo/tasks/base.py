"""Pieces shared by the prompt tasks: column mapping, loss reduction, batched inference."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_fedzo.progress import progress_bar

ModelKind = Literal["mlm", "causal"]
AnyModel = PreTrainedModel | torch.nn.Module
"""A model the tasks score: a transformers model, or any module taking the same batch keywords."""
Examples = Iterable[Mapping[str, Any]]
"""Raw dataset rows (column name → value) or already preprocessed features."""
IGNORE_INDEX = -100


def logits_from(outputs: Any) -> torch.Tensor:
    """The logits of a model output: a `ModelOutput`/dict, a tuple (logits first, as Trainer passes them to
    `preprocess_logits_for_metrics` when the model returns extra tensors) or a tensor."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return logits_from(outputs[0])
    raise TypeError(f"cannot find logits in model outputs of type {type(outputs).__name__}")


def reduce_loss(per_item: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Mean of per-item losses, or their sum over `num_items_in_batch` when Trainer supplies that count.

    Trainer counts `labels != -100` over the whole (gradient-accumulated, multi-device) batch and, when a
    `compute_loss_func` is set, does not divide the loss by the accumulation steps itself. Our label
    encodings make that count equal to the number of loss items, so `sum / num_items_in_batch` is the
    exact mean over the accumulated batch.
    """
    if num_items_in_batch is None:
        return per_item.mean()
    count = (
        num_items_in_batch.to(per_item.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    )
    if (count <= 0).item() if torch.is_tensor(count) else count <= 0:
        return per_item.mean()
    return per_item.sum() / count


@functools.cache
def cached_metric(name: str) -> Any:
    """One shared instance per packaged metric (computing with explicit inputs leaves no state behind)."""
    from hf_fedzo.metrics import load_metric

    return load_metric(name)


def pad_token_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id: the pad token, else EOS (causal tokenizers often have no pad token; padded positions are
    masked out anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def check_columns(columns: Mapping[str, str] | None, known: Iterable[str]) -> dict[str, str]:
    """Validate a `{name the task reads: dataset column}` mapping (typos would otherwise surface as KeyError
    deep inside `datasets.map`)."""
    columns = dict(columns or {})
    known = tuple(known)
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise ValueError(f"`columns` maps unknown names {unknown}; this task reads {list(known)}")
    return columns


def read_column(example: Mapping[str, Any], name: str, columns: Mapping[str, str]) -> Any:
    column = columns.get(name, name)
    try:
        return example[column]
    except KeyError:
        hint = f" (mapped from {name!r})" if column != name else ""
        raise KeyError(
            f"example has no column {column!r}{hint}; columns: {sorted(example)}. "
            "Pass `columns={...}` to map the task's names to your dataset's columns."
        ) from None


def check_filled(dataset: Any, fields: Iterable[str], columns: Mapping[str, str]) -> None:
    """Refuse a row whose prompt field is empty: a blank CSV cell arrives as None and would be trained on as
    the literal text "None". The error names the row (0-based, header excluded) and the column."""
    from hf_fedzo.data.errors import DataError

    for name in fields:
        column = columns.get(name, name)
        if column not in getattr(dataset, "column_names", ()):
            continue  # read_column names the missing column when the row is preprocessed
        for index, value in enumerate(dataset[column]):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"row {index}: column {column!r} is empty; fill in or remove that row")


def chunks(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    if size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {size}")
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def evaluation_batches(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    """:func:`chunks` under an "evaluating" progress bar (counted when the rows have a length; gone when done)."""
    total = -(-len(rows) // size) if isinstance(rows, Sized) and size >= 1 else None
    return progress_bar(chunks(rows, size), total=total, desc="evaluating", unit="batch", leave=False)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.device]:
    """Eval mode and ``inference_mode`` for the block, training mode restored after; yields the model's device."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model_device(model)
    finally:
        model.train(was_training)


@dataclass(eq=False, kw_only=True)
class PromptTask:
    """What every prompt task shares: keyword-only collator options (keyword-only, so each task keeps its own
    positional fields) and the bundle of Trainer hooks. A task defines `collator`, `compute_loss`,
    `preprocess_logits_for_metrics` and `compute_metrics`.

    Args:
        add_special_tokens: add the tokenizer's special tokens around the prompt (BOS/CLS; for masked LMs
            also EOS/SEP).
        logits_to_keep, position_ids: collator options for causal LMs whose forward lacks those kwargs.
        pad_to_multiple_of: pad batch length to a multiple of this.
        name: free-form task name (set by `from_preset`).
    """

    add_special_tokens: bool = True
    logits_to_keep: bool = True
    position_ids: bool = True
    pad_to_multiple_of: int | None = None
    name: str | None = None

    def collator_options(self) -> dict[str, Any]:
        """The padding and forward options every task's collator takes."""
        return {
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "logits_to_keep": self.logits_to_keep,
            "position_ids": self.position_ids,
        }

    def trainer_kwargs(self) -> dict[str, Any]:
        """`Trainer(..., **task.trainer_kwargs())`: collator, loss, logits reduction and metrics."""
        return {
            "data_collator": self.collator,
            "compute_loss_func": self.compute_loss,
            "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics,
            "compute_metrics": self.compute_metrics,
        }


class InferenceMixin:
    """Batched, gradient-free forwards over raw or preprocessed examples (zero-shot scoring, evaluation)."""

    collator: Any

    def preprocess(self, example: Mapping[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward_batches(
        self, model: PreTrainedModel | torch.nn.Module, data: Iterable[Mapping[str, Any]], batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield `(logits, labels)` per batch under `inference_mode`, in eval mode (restored after)."""
        with evaluating(model) as device:
            for rows in evaluation_batches(data, batch_size):
                features = [row if "input_ids" in row else self.preprocess(row) for row in rows]
                batch = self.collator(features)
                labels = batch.pop("labels")
                outputs = model(**to_device(batch, device))
                yield logits_from(outputs), labels.to(device)


def infer_model_kind(model: torch.nn.Module) -> ModelKind:
    """`"mlm"` or `"causal"` from the model class (a PEFT wrapper is looked through)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values():
        return "mlm"
    if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    raise ValueError(f"cannot tell whether {name} is a masked or a causal LM; pass `model_kind` explicitly")
