"""`task.json`: the task alignment a fine-tuned model was trained with, saved beside its weights.

A ZO fine-tune is only as good as its prompt: the adapter learned to move the probability of *these* label
words after *this* template, so scoring it with another prompt measures something else. Every run saves its
alignment (template, label words, calibration, max length, how the prompt was chosen) as `task.json`, and
`load_task(run_dir_or_repo)` reads it back, so a downloaded adapter is evaluated exactly as it was trained::

    task = load_task("you/smollm2-vader-fedspzo")            # reads task.json (a folder or a Hub repo)
    model = AutoPeftModelForCausalLM.from_pretrained("you/smollm2-vader-fedspzo")
    tokenizer = AutoTokenizer.from_pretrained("you/smollm2-vader-fedspzo")
    print(task.accuracy(model, tokenizer, ["A gem of a film.", "Two hours I will never get back."], [1, 0]))

The file format (version 1) is a JSON object with the fields of `TaskSpec`; `format_version` must be 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from hf_fedzo.reporting import write_json
from hf_fedzo.tasks.classification import LabelWordTask
from hf_fedzo.tasks.generation import GenerationTask
from hf_fedzo.tasks.templates import PromptTemplate

TASK_FILE = "task.json"
TASK_FORMAT_VERSION = 1

# Constructor options of each task class that a spec records beyond template and label words.
_OPTIONS: dict[type, tuple[str, ...]] = {
    LabelWordTask: ("model_kind", "max_length", "target", "add_special_tokens", "columns", "score_bias"),
    GenerationTask: ("model_kind", "max_length", "target", "add_special_tokens", "columns", "answer_prefix",
                     "append_eos", "max_new_tokens", "stop_at_newline"),
}


class TaskFileError(ValueError):
    """A `task.json` that cannot be read as a task alignment; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task alignment without a tokenizer: what `task.json` holds.

    Args:
        template: the prompt text with one `{label}` slot (see `PromptTemplate`).
        label_words: one word per class (classification); `None` for a generation task.
        options: the task constructor's other settings (`max_length`, `score_bias` for calibration, ...).
        truncate / truncation_side: which template fields may be shortened, and from which end.
        name: the preset or candidate name, for display.
        selection: how the prompt was chosen (metric, split, examples, score), when it was selected from data.
    """

    template: str
    label_words: tuple[str, ...] | None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    truncate: tuple[str, ...] | None = None
    truncation_side: str = "right"
    name: str | None = None
    selection: Mapping[str, Any] | None = None

    @classmethod
    def from_task(cls, task: LabelWordTask | GenerationTask, selection: Mapping[str, Any] | None = None) -> TaskSpec:
        """The alignment of a built task (what a run saves)."""
        options = {key: getattr(task, key) for key in _OPTIONS[type(task)]}
        options = {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
                   for k, v in options.items() if v is not None}
        label_words = tuple(task.label_words) if isinstance(task, LabelWordTask) else None
        return cls(template=task.template.text, label_words=label_words, options=options,
                   truncate=task.template.truncate, truncation_side=task.template.truncation_side, name=task.name,
                   selection=dict(selection) if selection else None)

    def build(self, tokenizer: PreTrainedTokenizerBase) -> LabelWordTask | GenerationTask:
        """The task object for `tokenizer`: the same template, label words and options."""
        template = PromptTemplate(self.template, truncate=self.truncate, truncation_side=self.truncation_side)
        if self.label_words is None:
            return GenerationTask(tokenizer=tokenizer, template=template, name=self.name, **self.options)
        return LabelWordTask(tokenizer=tokenizer, template=template, label_words=self.label_words, name=self.name,
                             **self.options)

    # --- scoring anyone's data ------------------------------------------------------------------------

    def _rows(self, texts: Sequence[str | Mapping[str, Any]], labels: Sequence[int], target: str) -> list[dict]:
        fields = PromptTemplate(self.template).fields
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length ({len(texts)} vs {len(labels)})")
        rows = []
        for text, label in zip(texts, labels, strict=True):
            if isinstance(text, str):
                if len(fields) != 1:
                    raise ValueError(f"texts: this template has fields {list(fields)}; pass one dict per example")
                rows.append({fields[0]: text, target: label})
            else:
                rows.append({**text, target: label})
        return rows

    def evaluate(self, model: Any, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | Mapping[str, Any]],
                 labels: Sequence[int], batch_size: int = 16) -> dict[str, float]:
        """Accuracy, macro-F1, balanced accuracy and per-class prediction rates on `texts` (strings when the
        template has one field, else dicts of field values) with integer `labels`."""
        if self.label_words is None:
            raise ValueError("evaluate/accuracy score label-word tasks; this task generates free text")
        task = self.build(tokenizer)
        assert isinstance(task, LabelWordTask)
        columns = dict(self.options.get("columns") or {})
        target = columns.get(task.target, task.target)
        return task.evaluate(model, self._rows(texts, labels, target), batch_size=batch_size)

    def accuracy(self, model: Any, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | Mapping[str, Any]],
                 labels: Sequence[int], batch_size: int = 16) -> float:
        """Accuracy of `model` on `texts`/`labels`, scored with exactly this alignment."""
        return self.evaluate(model, tokenizer, texts, labels, batch_size)["accuracy"]

    # --- file format ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["options"] = dict(self.options)
        return {"format_version": TASK_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Any, source: str = TASK_FILE) -> TaskSpec:
        if not isinstance(data, Mapping):
            raise TaskFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format_version") != TASK_FORMAT_VERSION:
            raise TaskFileError(f"{source}: format_version must be {TASK_FORMAT_VERSION}, got "
                                f"{data.get('format_version')!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise TaskFileError(f"{source}: unknown fields {unknown}")
        if not isinstance(data.get("template"), str):
            raise TaskFileError(f"{source}: template must be a string")
        words = data.get("label_words")
        if words is not None and not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise TaskFileError(f"{source}: label_words must be a list of strings or null")
        if not isinstance(data.get("options", {}), Mapping):
            raise TaskFileError(f"{source}: options must be an object")
        truncate = data.get("truncate")
        spec = cls(template=data["template"], label_words=tuple(words) if words is not None else None,
                   options=dict(data.get("options", {})), truncate=tuple(truncate) if truncate else None,
                   truncation_side=data.get("truncation_side", "right"), name=data.get("name"),
                   selection=data.get("selection"))
        try:  # the template and options must make a task (a tokenizer is only needed for the label words)
            PromptTemplate(spec.template, truncate=spec.truncate, truncation_side=spec.truncation_side)
        except ValueError as err:
            raise TaskFileError(f"{source}: {err}") from None
        return spec

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/task.json` atomically; returns its path."""
        return write_json(Path(directory) / TASK_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir_or_repo: str | os.PathLike[str], *, revision: str | None = None,
             token: str | bool | None = None) -> TaskSpec:
        """Read `task.json` from a run folder (or the file itself), else from a Hub repo id."""
        path = Path(run_dir_or_repo)
        if path.is_dir():
            path = path / TASK_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: this run folder records no task alignment")
        elif not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(run_dir_or_repo), TASK_FILE, revision=revision, token=token))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TaskFileError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


def save_task(task: LabelWordTask | GenerationTask, directory: str | os.PathLike[str],
              selection: Mapping[str, Any] | None = None) -> Path:
    """Record `task`'s alignment as `directory/task.json` (what every recipe does beside the weights)."""
    return TaskSpec.from_task(task, selection).save(directory)
