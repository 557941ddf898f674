"""Task alignment: prompts, label words and the losses/collators/metrics that go with them.

Zeroth-order fine-tuning converges only when the task looks like pre-training (MeZO: SST-2 89.6% with a
prompt vs 51.9% without), so a task here is a prompt template plus either label words (classification,
scored by a masked or causal LM) or a free-text target (generation). Each task object plugs into
`transformers.Trainer` (the first-order baseline) and `ZOSplitTrainer` alike::

    task = load_task("sst2", tokenizer, model_kind="causal")
    trainer = Trainer(model, args, train_dataset=task.preprocess_dataset(raw), **task.trainer_kwargs())
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from hf_fedzo.tasks.base import IGNORE_INDEX, ModelKind, infer_model_kind
from hf_fedzo.tasks.classification import (
    SCORERS,
    CausalLMScorer,
    LabelWordScorer,
    LabelWordTask,
    MaskedLMScorer,
    label_word_ids,
)
from hf_fedzo.tasks.collator import (
    CausalGenerationCollator,
    CausalLabelWordCollator,
    MaskedLMCollator,
    pad_sequences,
)
from hf_fedzo.tasks.generation import GenerationTask, gold_answers
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
    name: str, tokenizer: PreTrainedTokenizerBase, model_kind: ModelKind = "causal", **overrides: Any
) -> LabelWordTask | GenerationTask:
    """The task object for a registered preset (`sst2`, `rte`, `boolq`, `wic`, `squad`, or your own).

    Keyword arguments go to the task constructor, e.g. `columns={"sentence": "text"}` or `max_length=128`.
    """
    preset = get_preset(name)
    return TASK_CLASSES[preset.task_type].from_preset(name, tokenizer, model_kind=model_kind, **overrides)


__all__ = [
    "IGNORE_INDEX",
    "LABEL_SLOT",
    "SCORERS",
    "TASK_CLASSES",
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
    "PromptTemplate",
    "TaskPreset",
    "get_preset",
    "gold_answers",
    "infer_model_kind",
    "label_word_ids",
    "list_presets",
    "load_task",
    "pad_sequences",
    "register_preset",
    "special_tokens_around",
]
