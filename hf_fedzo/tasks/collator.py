"""Data collators for prompt tasks.

Every key of a collated batch except `labels` is a model forward kwarg, so `Trainer.compute_loss` (which
pops `labels` and calls `model(**rest)`) works unchanged; everything the loss needs is in `labels`.

Label encodings (all `LongTensor`, `-100` = ignored; column 0 of the causal encodings is always -100, so
Trainer's `num_items_in_batch` count is the number of loss items whether or not it skips column 0 the way
it does for causal-LM token labels):

* masked LM, label words: `(B, L)` aligned with `input_ids`; the gold class index at the `<mask>`
  position, -100 elsewhere. One item per example.
* causal LM, label words: `(B, 2)`; `[-100, gold class index]`. One item per example, also when every
  example is expanded to one row per candidate.
* causal LM, generation: `(B, 1 + k)`; `labels[:, 1 + j]` is the token that the `j`-th kept logit
  (the `j`-th of the last `k` positions) must predict, -100 where nothing is scored. One item per target
  token.

Multi-token candidates make the model batch `B * C` rows while `labels` stays `B` rows; that is fine for
DDP (each process collates its own batches) but not for `torch.nn.DataParallel`, which would split the two
unevenly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from hf_fedzo.tasks.base import IGNORE_INDEX

Feature = Mapping[str, Any]


def pad_sequences(
    seqs: Sequence[Sequence[int]],
    value: int,
    side: Literal["left", "right"],
    pad_to_multiple_of: int | None = None,
    length: int | None = None,
) -> torch.Tensor:
    """Stack ragged id lists into a `LongTensor`, padding on `side` to `length` (default: the longest)."""
    width = max(len(s) for s in seqs) if length is None else length
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            target = out[row, width - len(seq) :] if side == "left" else out[row, : len(seq)]
            target.copy_(torch.as_tensor(seq, dtype=torch.long))
    return out


def _ids(feature: Feature, key: str = "input_ids") -> list[int]:
    value = feature[key]
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


@dataclass
class MaskedLMCollator:
    """Right-pads `input_ids` and the `(B, L)` mask-position labels of a masked-LM label-word task.

    Right padding keeps absolute position ids (BERT) correct; RoBERTa derives them from the pad id anyway.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]:
        ids = [_ids(f) for f in features]
        input_ids = pad_sequences(ids, self.pad_token_id, "right", self.pad_to_multiple_of)
        attention_mask = pad_sequences([[1] * len(s) for s in ids], 0, "right", self.pad_to_multiple_of)
        labels = pad_sequences(
            [_ids(f, "labels") for f in features], IGNORE_INDEX, "right", length=input_ids.shape[1]
        )
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class _CausalBatcher:
    """Left padding plus the kwargs that make a causal LM compute only the final `k` positions.

    Left padding puts the scored positions of every row at the same (final) columns, so the int
    `logits_to_keep=k` of transformers 5 causal LMs applies the LM head to exactly those positions.
    Position ids are passed explicitly because several models (GPT-2, Llama) otherwise number left-padded
    tokens from the first pad, not from the first real token.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    logits_to_keep: bool = True
    position_ids: bool = True

    def _inputs(self, rows: Sequence[Sequence[int]], keep: int) -> dict[str, Any]:
        input_ids = pad_sequences(rows, self.pad_token_id, "left", self.pad_to_multiple_of)
        attention_mask = pad_sequences([[1] * len(r) for r in rows], 0, "left", length=input_ids.shape[1])
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.position_ids:
            batch["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
        if self.logits_to_keep:
            batch["logits_to_keep"] = keep
        batch["use_cache"] = False  # a KV cache is dead weight in a scoring forward
        return batch


@dataclass
class CausalLabelWordCollator(_CausalBatcher):
    """Batches a causal-LM label-word task.

    Single-token candidates: one row per example (the prompt), `logits_to_keep=1`. Multi-token candidates:
    one row per (example, candidate) holding `prompt + candidate[:-1]`, example-major, and
    `logits_to_keep = max candidate length`; the last kept logits of a row predict its candidate's tokens.
    """

    candidate_ids: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.candidate_ids or not all(self.candidate_ids):
            raise ValueError("`candidate_ids` must hold at least one non-empty candidate")
        self.keep = max(len(c) for c in self.candidate_ids)

    def __call__(self, features: Sequence[Feature]) -> dict[str, Any]:
        prompts = [_ids(f) for f in features]
        rows = prompts if self.keep == 1 else [p + list(c[:-1]) for p in prompts for c in self.candidate_ids]
        batch = self._inputs(rows, self.keep)
        gold = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
        batch["labels"] = torch.stack([torch.full_like(gold, IGNORE_INDEX), gold], dim=1)
        return batch


@dataclass
class CausalGenerationCollator(_CausalBatcher):
    """Batches a generative task for LM loss on the target tokens only.

    Each feature holds `input_ids = prompt + target[:-1]` and `labels = target`; rows are left-padded and
    `logits_to_keep = k`, the longest target in the batch, so no prompt position gets head logits except
    the last one of the longest-target row (it predicts that target's first token).
    """

    def __call__(self, features: Sequence[Feature]) -> dict[str, Any]:
        targets = [_ids(f, "labels") for f in features]
        if not all(targets):
            raise ValueError("every feature needs a non-empty `labels` target")
        keep = max(len(t) for t in targets)
        batch = self._inputs([_ids(f) for f in features], keep)
        batch["labels"] = pad_sequences(
            [[IGNORE_INDEX, *t] for t in targets], IGNORE_INDEX, "left", length=keep + 1
        )
        return batch
