"""Choosing the prompt from data: score candidate templates × label words zero-shot on validation examples.

Zeroth-order fine-tuning starts where the prompt leaves the model: on the VADER movie sentences SmolLM2-135M
scores 0.59 with MeZO's "<sentence> It was great|terrible" (it answers "great" 98% of the time) and 0.83
with "Review: <sentence>\\nSentiment: positive|negative" (docs/benchmarks.md has the table). So the
recipes' `--prompt auto` runs every candidate registered for the task on a few hundred *validation*
examples (forward only) and keeps the best by balanced accuracy, which a constant answer cannot game.

Each candidate is also scored with contextual calibration (Zhao et al., 2021: subtract the class scores of
content-free inputs such as "N/A"), which costs three extra forwards, and the calibrated variant competes as
a candidate of its own; a selected calibration is saved with the task (`score_bias`) and applied in training
and evaluation alike. Test data is refused: a prompt chosen on the test split would overstate every result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hf_fedzo.progress import progress_bar
from hf_fedzo.registry import Registry
from hf_fedzo.tasks.classification import LabelWordTask, classification_metrics
from hf_fedzo.tasks.templates import LABEL_SLOT, PromptTemplate, get_preset

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")
SELECTION_METRICS = ("balanced_accuracy", "accuracy", "f1")


@dataclasses.dataclass(frozen=True)
class PromptCandidate:
    """One template with its label words (`chat=True`: wrapped in the tokenizer's chat template first)."""

    name: str
    template: str
    label_words: tuple[str, ...]
    chat: bool = False


PROMPT_CANDIDATES: Registry[list[PromptCandidate]] = Registry("prompt candidates")


def register_prompt_candidates(task: str, candidates: Sequence[PromptCandidate], *, overwrite: bool = False) -> None:
    """Add the candidates `--prompt auto` tries for the preset `task` (the preset's own prompt always competes)."""
    PROMPT_CANDIDATES.register(task, list(candidates), overwrite=overwrite)


def chat_wrapped(template: str, tokenizer: PreTrainedTokenizerBase, answer_prefix: str = "") -> str:
    """`template`'s text before `{label}` as a user turn of the tokenizer's chat template, the label slot opening
    the assistant's reply (after `answer_prefix`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat template")
    question = template.split("{" + LABEL_SLOT + "}")[0].rstrip()
    sentinel = "\x00QUESTION\x00"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                             add_generation_prompt=True)
    escaped = rendered.replace("{", "{{").replace("}", "}}")  # literal braces of the chat markup
    return escaped.replace(sentinel, question) + answer_prefix + "{" + LABEL_SLOT + "}"


def prompt_candidates(task: str, tokenizer: PreTrainedTokenizerBase | None = None) -> list[PromptCandidate]:
    """The preset's own prompt, the registered candidates and, for chat models, their chat-wrapped versions."""
    preset = get_preset(task)
    if preset.label_words is None:
        raise ValueError(f"task {task!r} is a generation task: prompt selection scores label words")
    own = PromptCandidate(f"{task} preset", preset.template.text, preset.label_words)
    plain = [own, *(c for c in PROMPT_CANDIDATES.get(task, []) if (c.template, c.label_words) != (own.template,
                                                                                             own.label_words))]
    chat = []
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        chat = [dataclasses.replace(c, name=f"{c.name} (chat)", chat=True) for c in plain if not c.chat]
    return plain + chat


@dataclasses.dataclass(frozen=True)
class PromptScore:
    """Zero-shot validation metrics of one candidate, raw or calibrated."""

    name: str
    template: str
    label_words: tuple[str, ...]
    calibrated: bool
    metrics: Mapping[str, float]
    score_bias: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class PromptSelection:
    """Every candidate's score and the winner; `as_dict` is what a run records."""

    best: PromptScore
    scores: tuple[PromptScore, ...]
    metric: str
    split: str
    examples: int

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "split": self.split, "examples": self.examples,
                "selected": self.best.name + (" + calibration" if self.best.calibrated else ""),
                "candidates": [dataclasses.asdict(s) for s in self.scores]}

    def table(self) -> str:
        """A Markdown table of every candidate, best first."""
        lines = [f"zero-shot on {self.examples} {self.split} examples, ranked by {self.metric}",
                 "| candidate | label words | calibrated | accuracy | balanced acc. | macro-F1 | predicted rates |",
                 "| --- | --- | --- | ---: | ---: | ---: | --- |"]
        for s in sorted(self.scores, key=lambda s: -s.metrics[self.metric]):
            rates = " / ".join(f"{v:.2f}" for k, v in s.metrics.items() if k.startswith("prediction_rate_"))
            lines.append(f"| {s.name} | {'/'.join(w.strip() for w in s.label_words)} | "
                         f"{'yes' if s.calibrated else 'no'} | {s.metrics['accuracy']:.3f} | "
                         f"{s.metrics['balanced_accuracy']:.3f} | {s.metrics['f1']:.3f} | {rates} |")
        return "\n".join(lines)


def _split_name(data: Any, split: str | None) -> str:
    name = split if split is not None else str(getattr(data, "split", None) or "validation")
    if "test" in name.lower():
        raise ValueError(f"validation: prompt selection must not see test data (got the {name!r} split); pass the "
                         "validation split, so that the test split measures the chosen prompt once")
    return name


def select_prompt(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    validation: Any,
    task: str = "sst2",
    *,
    candidates: Sequence[PromptCandidate] | None = None,
    model_kind: str = "causal",
    num_examples: int | None = 256,
    metric: str = "balanced_accuracy",
    calibrate: bool = True,
    batch_size: int = 32,
    split: str | None = None,
    **task_options: Any,
) -> tuple[LabelWordTask, PromptSelection]:
    """Score every candidate zero-shot on `validation` and return the best task with the full table.

    Args:
        model, tokenizer: the model as it will start fine-tuning (forward passes only).
        validation: labeled rows (a `datasets.Dataset` or a list of dicts) with the task's columns; a
            dataset whose split is named `test` (or `split="test"`) is refused.
        task: the preset whose candidates compete (`prompt_candidates(task, tokenizer)` by default).
        num_examples: the first N rows are scored (`None`: all).
        metric: `balanced_accuracy` (default: a constant answer scores 1/C), `accuracy` or `f1`.
        calibrate: also score each candidate with contextual calibration.
        task_options: other `LabelWordTask` arguments (`max_length`, `columns`, ...).
    """
    split_name = _split_name(validation, split)
    if metric not in SELECTION_METRICS:
        raise ValueError(f"metric must be one of {SELECTION_METRICS}, got {metric!r}")
    rows = list(validation) if num_examples is None else [validation[i] for i in range(min(num_examples,
                                                                                             len(validation)))]
    if not rows:
        raise ValueError("validation: no examples to score the prompts on")
    candidates = list(candidates) if candidates is not None else prompt_candidates(task, tokenizer)
    preset = get_preset(task)
    results: list[tuple[PromptScore, LabelWordTask]] = []
    for candidate in progress_bar(candidates, desc=f"scoring prompts on {len(rows)} {split_name} rows",
                                  unit="prompt", leave=False):
        text = chat_wrapped(candidate.template, tokenizer) if candidate.chat else candidate.template
        words = tuple(w.lstrip() for w in candidate.label_words) if candidate.chat else candidate.label_words
        built = LabelWordTask(tokenizer=tokenizer, template=PromptTemplate(text, truncate=preset.template.truncate),
                              label_words=words, model_kind=model_kind, target=preset.target, name=candidate.name,
                              **task_options)
        scores, gold = built.scores_and_gold(model, rows, batch_size)
        raw = classification_metrics(scores.argmax(-1).numpy(), gold.numpy(), built.num_classes)
        results.append((PromptScore(candidate.name, text, words, False, raw), built))
        if calibrate:
            bias = _content_free_bias(built, model, batch_size)
            calibrated = classification_metrics((scores + torch.tensor(bias)).argmax(-1).numpy(), gold.numpy(),
                                                built.num_classes)
            results.append((PromptScore(candidate.name, text, words, True, calibrated, bias),
                            dataclasses.replace(built, score_bias=bias)))
    # Ties go to the earlier candidate: the preset, then uncalibrated before calibrated.
    best_index = int(np.argmax([score.metrics[metric] for score, _ in results]))
    best, best_task = results[best_index]
    return best_task, PromptSelection(best, tuple(s for s, _ in results), metric, split_name, len(rows))


def _content_free_bias(task: LabelWordTask, model: Any, batch_size: int) -> tuple[float, ...]:
    """Minus the mean class log-probabilities of content-free inputs: adding it centres them (Zhao et al.)."""
    probes = [{**{name: text for name in task.template.fields}, task.target: 0} for text in CONTENT_FREE_INPUTS]
    probes = [{task.columns.get(k, k): v for k, v in row.items()} for row in probes]
    scores, _ = task.scores_and_gold(model, probes, batch_size)
    return tuple(float(-v) for v in scores.mean(0))


# Candidates for binary sentiment (SST-2 / VADER label order: 0 = negative, 1 = positive). Our own wordings of
# the common forms: review + "Sentiment:", a question, and a statement about the reviewer's opinion.
register_prompt_candidates("sst2", [
    PromptCandidate("review/sentiment", "Review: {sentence}\nSentiment:{label}", (" negative", " positive")),
    PromptCandidate("review/sentiment good-bad", "Review: {sentence}\nSentiment:{label}", (" bad", " good")),
    PromptCandidate("question", "{sentence}\nQuestion: Is this review positive or negative?\nAnswer:{label}",
                    (" negative", " positive")),
    PromptCandidate("opinion", "Movie review: {sentence}\nThe reviewer's opinion of the movie is{label}",
                    (" negative", " positive")),
])
