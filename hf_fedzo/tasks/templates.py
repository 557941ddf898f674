"""Prompt templates, label words and the registry of task presets.

Zeroth-order fine-tuning only converges when the task is phrased the way the model was pre-trained: a
prompt whose continuation (causal LM) or masked slot (masked LM) is a *label word*. MeZO reports SST-2 at
89.6% with a prompt and 51.9% without (RoBERTa-large, k=16). This module holds the phrasing; the scoring
lives in `classification.py` and `generation.py`.

A template is a `str.format`-style string with named fields and exactly one `{label}` slot, e.g.
`"{sentence} It was{label}"`. The slot is where the label word (or the `<mask>` token, or the answer of a
generative task) goes. Label words carry their own leading space (`" great"`): byte-level BPE tokenizers
(GPT-2, RoBERTa, SmolLM2) encode a word after a space as its own token (`Ġgreat`), and that is the token a
pre-trained model predicts after `"It was"`. So the text before `{label}` has no trailing space.

Fields and literal text are tokenized piece by piece (that is what makes truncation safe), with the space
before a field tokenized together with the field. This matches whole-string tokenization for byte-level
BPE and WordPiece tokenizers (GPT-2, RoBERTa, BERT, SmolLM2, Llama 3, Qwen). SentencePiece tokenizers that
prepend `▁` to every call (Llama 2, T5) would see an extra word start at each piece; check `render` and
`tokenizer.convert_ids_to_tokens(task.preprocess(example)["input_ids"])` before using one.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from transformers import PreTrainedTokenizerBase

from hf_fedzo.registry import Registry

LABEL_SLOT = "label"
"""Name of the template slot filled by the label word, the mask token or the answer."""

TruncationSide = Literal["right", "left"]


@dataclass(frozen=True)
class _Piece:
    """One literal text run or one field of a parsed template."""

    text: str
    is_field: bool


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of a rendered template, split around the label slot (no special tokens added)."""

    prefix: list[int]
    suffix: list[int]


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with named fields and one `{label}` slot.

    Fields are tokenized one by one and concatenated, so truncation can shorten the fields named in
    `truncate` (longest first) and never touches the literal template text or the label slot: the mask or
    answer position always survives.

    Args:
        text: the template, e.g. `'{premise}\\nQuestion: Does this mean that "{hypothesis}" is true?'`
            `' Yes or No?\\nAnswer:{label}'`. Literal braces are written `{{` and `}}`.
        truncate: fields that may be shortened when the prompt exceeds the length budget; `None` means
            every field.
        truncation_side: cut a field's tokens from its end (`"right"`) or its beginning (`"left"`).
    """

    text: str
    truncate: tuple[str, ...] | None = None
    truncation_side: TruncationSide = "right"
    _pieces: tuple[tuple[_Piece, ...], tuple[_Piece, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        before: list[_Piece] = []
        after: list[_Piece] = []
        current, slots = before, 0
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as err:
            raise ValueError(f"`text` is not a valid template ({err}): {self.text!r}") from err
        for literal, name, spec, conversion in parsed:
            if literal:
                current.append(_Piece(literal, is_field=False))
            if name is None:
                continue
            if spec or conversion or not name.isidentifier():
                raise ValueError(
                    f"`text` field {{{name}}} must be a plain name without format spec: {self.text!r}"
                )
            if name == LABEL_SLOT:
                slots += 1
                current = after
            else:
                current.append(_Piece(name, is_field=True))
        if slots != 1:
            raise ValueError(
                f"`text` must contain exactly one {{{LABEL_SLOT}}} slot, found {slots}: {self.text!r}"
            )
        if before and not before[-1].is_field and before[-1].text.endswith((" ", "\t")):
            raise ValueError(
                f"`text` has a space right before {{{LABEL_SLOT}}}: {self.text!r}. Put the space in the "
                "label words or answer prefix instead (`It was{label}` with `' great'`), as BPE tokenizers "
                "encode it as part of the word"
            )
        object.__setattr__(self, "_pieces", (tuple(before), tuple(after)))
        if self.truncate is not None:
            unknown = set(self.truncate) - set(self.fields)
            if unknown:
                raise ValueError(f"`truncate` names fields not in the template: {sorted(unknown)}")
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"`truncation_side` must be 'right' or 'left', got {self.truncation_side!r}")

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """Field names in order of first appearance (the label slot excluded)."""
        names = [p.text for part in self._pieces for p in part if p.is_field]
        return tuple(dict.fromkeys(names))

    @property
    def has_suffix(self) -> bool:
        """Whether text or fields follow the label slot (only a masked LM can use them)."""
        return bool(self._pieces[1])

    def render(self, values: Mapping[str, object], label: str) -> str:
        """The prompt as a string, for display and debugging."""
        return self.text.format(
            **{name: _field_text(values[name]) for name in self.fields}, **{LABEL_SLOT: label}
        )

    @staticmethod
    def _tokenize_part(
        tokenizer: PreTrainedTokenizerBase, part: tuple[_Piece, ...], values: Mapping[str, object]
    ) -> list[list[int]]:
        # Spacing before a field travels with the field: BPE tokenizers encode "Question: what" as
        # `Question : Ġwhat`, but "Question: " + "what" tokenized apart as `Question : Ġ what`.
        out: list[list[int]] = []
        carry = ""
        for i, piece in enumerate(part):
            if piece.is_field:
                value = _field_text(values[piece.text])
                out.append(_tokenize(tokenizer, carry + value, data=True) if value else [])
                carry = ""
                continue
            text = piece.text
            if i + 1 < len(part) and part[i + 1].is_field:
                stripped = text.rstrip(" \t")
                text, carry = stripped, text[len(stripped) :]
            out.append(_tokenize(tokenizer, text))
        return out

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, values: Mapping[str, object], budget: int
    ) -> EncodedPrompt:
        """Tokenize the template around the label slot, truncating fields so that at most `budget` ids remain.

        Field values are tokenized with `split_special_tokens=True`, so a sentence containing the literal
        text `"<mask>"` cannot inject a mask token; the template's own text may use special tokens.

        Raises:
            ValueError: if the template text alone (with truncatable fields emptied) exceeds `budget`.
        """
        ids = [self._tokenize_part(tokenizer, part, values) for part in self._pieces]
        flat = [(part, i) for part in range(2) for i in range(len(ids[part]))]
        truncatable = [
            (part, i)
            for part, i in flat
            if self._pieces[part][i].is_field
            and (self.truncate is None or self._pieces[part][i].text in self.truncate)
        ]
        overflow = sum(len(ids[part][i]) for part, i in flat) - budget
        while overflow > 0:
            lengths = sorted(((len(ids[p][i]), (p, i)) for p, i in truncatable), reverse=True)
            if not lengths or lengths[0][0] == 0:
                raise ValueError(
                    f"prompt needs {budget + overflow} tokens after emptying the truncatable fields "
                    f"{self.truncate or self.fields}, but only {budget} fit; "
                    "raise `max_length` or shorten the template"
                )
            longest, (p, i) = lengths[0]
            runner_up = lengths[1][0] if len(lengths) > 1 else 0
            cut = min(overflow, max(1, longest - runner_up))  # longest-first, in as few steps as possible
            ids[p][i] = ids[p][i][: longest - cut] if self.truncation_side == "right" else ids[p][i][cut:]
            overflow -= cut
        return EncodedPrompt(
            prefix=[t for piece in ids[0] for t in piece], suffix=[t for piece in ids[1] for t in piece]
        )


def _field_text(value: object) -> str:
    if value is None:  # an empty CSV cell: never prompt with the text "None"
        raise ValueError("a prompt field is empty (None)")
    # GLUE-style sentences often end in a stray space; the template supplies all spacing.
    return str(value).strip()


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str, data: bool = False) -> list[int]:
    if not text:
        return []
    kwargs = {"split_special_tokens": True} if data else {}
    return list(tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"])


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after one sequence (`<s>`/`</s>`, `[CLS]`/`[SEP]`, ...).

    Found by encoding a probe with and without special tokens, which works for every tokenizer family
    (transformers 5 dropped `build_inputs_with_special_tokens` from the fast tokenizers).
    """
    probe = "a"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


TaskType = Literal["label_words", "generation"]


@dataclass(frozen=True)
class TaskPreset:
    """A named, reusable task definition: template, label words and the column holding the target.

    Args:
        name: registry key.
        template: the prompt.
        label_words: one word per class, indexed by the integer label (`label_words[0]` for label 0).
            `None` makes a generative task whose target is free text (SQuAD-style answers).
        target: the column with the gold label (classification) or the answers (generation).
        description: one line for listings.
    """

    name: str
    template: PromptTemplate
    label_words: tuple[str, ...] | None = None
    target: str = LABEL_SLOT
    description: str = ""

    @property
    def task_type(self) -> TaskType:
        return "generation" if self.label_words is None else "label_words"


PRESETS: Registry[TaskPreset] = Registry("preset")


def register_preset(preset: TaskPreset, *, overwrite: bool = False) -> TaskPreset:
    """Add a preset to the registry so `load_task(preset.name, ...)` and `*.from_preset` find it."""
    return PRESETS.register(preset.name, preset, overwrite=overwrite)


def get_preset(name: str) -> TaskPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown task preset {name!r}; available: {', '.join(list_presets())}")
    return PRESETS[name]


def list_presets() -> tuple[str, ...]:
    return tuple(sorted(PRESETS))


# Presets: our own wording of the standard prompt forms (MeZO/LM-BFF style). Label ids follow the
# GLUE/SuperGLUE datasets: SST-2 0=negative; RTE 0=entailment; BoolQ and WiC 0=False. One row a preset:
# name, template, the fields truncated first, label words by label id (None: generation), description.
_BUILTIN_PRESETS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...] | None, str], ...] = (
    ("sst2", "{sentence} It was{label}", ("sentence",), (" terrible", " great"),
     "binary sentiment: '<sentence> It was great|terrible'"),
    ("rte", '{premise}\nQuestion: Does this mean that "{hypothesis}" is true? Yes or No?\nAnswer:{label}',
     ("premise", "hypothesis"), (" Yes", " No"),
     "entailment as a yes/no question (super_glue columns premise/hypothesis, 0=entailment)"),
    ("boolq", "{passage}\nQuestion: {question}? Yes or No?\nAnswer:{label}", ("passage",), (" No", " Yes"),
     "yes/no question about a passage (0=False)"),
    ("wic", 'Does the word "{word}" have the same meaning in these two sentences? Yes or No?\n'
     "{sentence1}\n{sentence2}\nAnswer:{label}", ("sentence1", "sentence2"), (" No", " Yes"),
     "word-in-context as a yes/no question (0=different meaning)"),
    ("squad", "{context}\nQuestion: {question}\nAnswer:{label}", ("context",), None,
     "extractive QA answered by generation; LM loss on the answer tokens, exact match and F1"),
)

def _register_builtin_presets() -> None:
    for name, text, truncate, label_words, description in _BUILTIN_PRESETS:
        target = LABEL_SLOT if label_words is not None else "answers"
        template = PromptTemplate(text, truncate=truncate)
        register_preset(TaskPreset(name, template, label_words, target=target, description=description))


_register_builtin_presets()
