"""Task alignment: prompts, label words and the losses/collators/metrics that go with them.

Zeroth-order fine-tuning converges only when the task looks like pre-training (MeZO: SST-2 89.6% with a
prompt vs 51.9% without), so a task here is a prompt template plus either label words (classification,
scored by a masked or causal LM) or a free-text target (generation). Each task object plugs into
`transformers.Trainer` (the first-order baseline) and `ZOSplitTrainer` alike::

    task = load_task("sst2", tokenizer, model_kind="causal")
    trainer = Trainer(model, args, train_dataset=task.preprocess_dataset(raw), **task.trainer_kwargs())

A run saves its alignment as `task.json` (`save_task`); `load_task(run_dir_or_repo)` reads it back, and
`select_prompt` chooses the template and label words from validation data (`--prompt auto` in the recipes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from hf_fedzo.tasks.alignment import TASK_FILE, TaskFileError, TaskSpec, save_task
from hf_fedzo.tasks.base import IGNORE_INDEX, ModelKind, infer_model_kind
from hf_fedzo.tasks.classification import (
    SCORERS,
    CausalLMScorer,
    LabelWordScorer,
    LabelWordTask,
    MaskedLMScorer,
    classification_metrics,
    label_word_ids,
    majority_rate,
)
from hf_fedzo.tasks.collator import (
    CausalGenerationCollator,
    CausalLabelWordCollator,
    MaskedLMCollator,
    pad_sequences,
)
from hf_fedzo.tasks.generation import GenerationTask, gold_answers
from hf_fedzo.tasks.selection import (
    PromptCandidate,
    PromptSelection,
    prompt_candidates,
    register_prompt_candidates,
    select_prompt,
)
from hf_fedzo.tasks.templates import (
    LABEL_SLOT,
    EncodedPrompt,
    PromptTemplate,
    TaskPreset,
    TaskType,
    get_preset,
    list_presets,
    register_preset,
    special_tokens_around,
)

TASK_CLASSES: dict[TaskType, type[LabelWordTask] | type[GenerationTask]] = {
    "label_words": LabelWordTask,
    "generation": GenerationTask,
}


def load_task(
    name_or_path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_kind: ModelKind = "causal",
    **overrides: Any,
) -> LabelWordTask | GenerationTask | TaskSpec:
    """A task from a registered preset, or the alignment a run saved.

    * A preset name (`sst2`, `rte`, `boolq`, `wic`, `squad`, or your own) with the model's `tokenizer`: the
      task object. Keyword arguments go to its constructor, e.g. `columns={"sentence": "text"}`.
    * A run folder, a `task.json` file or a Hub repo id holding `task.json`: its `TaskSpec`, whose
      `.accuracy(model, tokenizer, texts, labels)` scores any texts exactly as the run was trained; with
      `tokenizer`, the task object built from it.
    """
    name = os.fspath(name_or_path)
    if name in list_presets():
        if tokenizer is None:
            raise ValueError(f"tokenizer: preset {name!r} needs the model's tokenizer to build its task")
        preset = get_preset(name)
        return TASK_CLASSES[preset.task_type].from_preset(name, tokenizer, model_kind=model_kind, **overrides)
    if "/" not in name and not Path(name).exists():
        get_preset(name)  # raises the unknown-preset error, which lists the presets
    if overrides:
        raise ValueError(f"{sorted(overrides)}: a saved task alignment is loaded as recorded; build it with "
                         "`TaskSpec.load(...)` and change the spec instead")
    spec = TaskSpec.load(name)
    return spec if tokenizer is None else spec.build(tokenizer)


__all__ = [
    "IGNORE_INDEX",
    "LABEL_SLOT",
    "SCORERS",
    "TASK_CLASSES",
    "TASK_FILE",
    "CausalGenerationCollator",
    "CausalLMScorer",
    "CausalLabelWordCollator",
    "EncodedPrompt",
    "GenerationTask",
    "LabelWordScorer",
    "LabelWordTask",
    "MaskedLMCollator",
    "MaskedLMScorer",
    "ModelKind",
    "PromptCandidate",
    "PromptSelection",
    "PromptTemplate",
    "TaskFileError",
    "TaskPreset",
    "TaskSpec",
    "classification_metrics",
    "get_preset",
    "gold_answers",
    "infer_model_kind",
    "label_word_ids",
    "list_presets",
    "load_task",
    "majority_rate",
    "pad_sequences",
    "prompt_candidates",
    "register_preset",
    "register_prompt_candidates",
    "save_task",
    "select_prompt",
    "special_tokens_around",
]
