"""Label-word scorers: how a masked or causal LM turns the logits at the label slot into one score per class.

* Masked LM: the class scores are the log-probabilities of the label-word ids at the ``<mask>`` position.
* Causal LM: each candidate scores the mean log-probability of its tokens after the prompt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from hf_fedzo.tasks.base import IGNORE_INDEX
from hf_fedzo.tasks.collator import CausalLabelWordCollator, MaskedLMCollator


def label_word_ids(
    tokenizer: PreTrainedTokenizerBase, label_words: Sequence[str]
) -> tuple[tuple[int, ...], ...]:
    """Token ids of each label word, validated: non-empty, no unknown token, pairwise distinct."""
    if len(label_words) < 2:
        raise ValueError(f"`label_words` needs at least two words, got {list(label_words)}")
    ids: list[tuple[int, ...]] = []
    for word in label_words:
        if not isinstance(word, str) or not word:
            raise ValueError(f"label word {word!r} must be a non-empty string")
        word_ids = tuple(tokenizer(word, add_special_tokens=False)["input_ids"])
        if not word_ids:
            raise ValueError(f"label word {word!r} tokenizes to nothing")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in word_ids:
            raise ValueError(
                f"label word {word!r} contains the unknown token "
                f"({tokenizer.convert_ids_to_tokens(list(word_ids))}); the model cannot score it"
            )
        for other, other_ids in zip(label_words, ids, strict=False):
            if other_ids == word_ids:
                raise ValueError(
                    f"label words {other!r} and {word!r} tokenize to the same ids {list(word_ids)}"
                )
        ids.append(word_ids)
    return tuple(ids)


class LabelWordScorer(ABC):
    """How one model family reads class scores out of its logits. Subclasses are registered in `SCORERS`."""

    model_kind: ClassVar[str]
    keeps_suffix: ClassVar[bool]
    """Whether template text after `{label}` and the closing special tokens stay in the input."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, label_words: Sequence[str]) -> None:
        self.candidate_ids = label_word_ids(tokenizer, label_words)
        self.label_words = tuple(label_words)

    @property
    @abstractmethod
    def slot_tokens(self) -> int:
        """Input tokens the label slot occupies in the longest row."""

    @abstractmethod
    def features(self, prefix: list[int], suffix: list[int], gold: int) -> dict[str, Any]:
        """One preprocessed example (what `datasets.map` stores)."""

    @abstractmethod
    def collator(self, pad_token_id: int, **options: Any) -> Any:
        """The data collator matching `features`; `options` are the task's collator settings
        (`pad_to_multiple_of`, `logits_to_keep`, `position_ids`), each used where it applies."""

    @abstractmethod
    def scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-candidate log-probabilities, `(B, C)` float32, differentiable."""


class MaskedLMScorer(LabelWordScorer):
    model_kind = "mlm"
    keeps_suffix = True

    def __init__(self, tokenizer: PreTrainedTokenizerBase, label_words: Sequence[str]) -> None:
        super().__init__(tokenizer, label_words)
        if tokenizer.mask_token_id is None:
            raise ValueError(
                f"`tokenizer` ({type(tokenizer).__name__}) has no mask token; use model_kind='causal'"
            )
        self.mask_token_id = int(tokenizer.mask_token_id)
        for word, ids in zip(self.label_words, self.candidate_ids, strict=True):
            if len(ids) != 1:
                raise ValueError(
                    f"label word {word!r} is {len(ids)} tokens {tokenizer.convert_ids_to_tokens(list(ids))}; "
                    "a masked LM scores a single <mask>, so each label word must be one token "
                    "(mind the leading space)"
                )
        self._ids = torch.tensor([ids[0] for ids in self.candidate_ids])

    @property
    def slot_tokens(self) -> int:
        return 1

    def features(self, prefix: list[int], suffix: list[int], gold: int) -> dict[str, Any]:
        labels = [IGNORE_INDEX] * (len(prefix) + 1 + len(suffix))
        labels[len(prefix)] = gold
        return {"input_ids": [*prefix, self.mask_token_id, *suffix], "labels": labels}

    def collator(self, pad_token_id: int, **options: Any) -> MaskedLMCollator:
        return MaskedLMCollator(
            pad_token_id=pad_token_id, pad_to_multiple_of=options.get("pad_to_multiple_of")
        )

    def scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        marked = labels != IGNORE_INDEX
        if not bool((marked.sum(-1) == 1).all()):
            raise ValueError("each row of masked-LM `labels` must mark exactly one <mask> position")
        at_mask = logits[marked].float()  # (B, V), rows in batch order
        return at_mask[:, self._ids.to(at_mask.device)] - at_mask.logsumexp(-1, keepdim=True)


class CausalLMScorer(LabelWordScorer):
    model_kind = "causal"
    keeps_suffix = False

    def __init__(self, tokenizer: PreTrainedTokenizerBase, label_words: Sequence[str]) -> None:
        super().__init__(tokenizer, label_words)
        self.keep = max(len(ids) for ids in self.candidate_ids)
        # Candidate tokens right-aligned in the `keep` final positions, as the collator lays rows out.
        self._targets = torch.full((len(self.candidate_ids), self.keep), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(self.candidate_ids):
            self._targets[row, self.keep - len(ids) :] = torch.tensor(ids)

    @property
    def slot_tokens(self) -> int:
        return self.keep - 1  # the last candidate token is only ever a target, never an input

    def features(self, prefix: list[int], suffix: list[int], gold: int) -> dict[str, Any]:
        return {"input_ids": prefix, "labels": gold}

    def collator(self, pad_token_id: int, **options: Any) -> CausalLabelWordCollator:
        return CausalLabelWordCollator(pad_token_id=pad_token_id, candidate_ids=self.candidate_ids, **options)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, num_candidates = labels.shape[0], len(self.candidate_ids)
        logits = logits[:, -self.keep :].float()  # no-op with logits_to_keep; slices when a model ignores it
        if self.keep == 1:
            last = logits[:, -1]
            return last[:, self._targets[:, 0].to(last.device)] - last.logsumexp(-1, keepdim=True)
        if logits.shape[0] != batch * num_candidates:
            raise ValueError(
                f"expected {batch} x {num_candidates} candidate rows for multi-token label words, "
                f"got {logits.shape[0]}"
            )
        logits = logits.view(batch, num_candidates, self.keep, -1)
        targets = self._targets.to(logits.device).expand(batch, -1, -1)
        scored = targets != IGNORE_INDEX
        token_logp = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        return (token_logp * scored).sum(-1) / scored.sum(-1)


SCORERS: dict[str, type[LabelWordScorer]] = {cls.model_kind: cls for cls in (MaskedLMScorer, CausalLMScorer)}
