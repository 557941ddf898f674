"""The recipe's task alignment: the --task preset, a literal --prompt / --label_words, or --prompt auto."""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedTokenizerBase

from hf_fedzo.runs.cli import DataArguments
from hf_fedzo.tasks import (
    GenerationTask,
    LabelWordTask,
    PromptSelection,
    PromptTemplate,
    get_preset,
    load_task,
    select_prompt,
)

logger = logging.getLogger(__name__)


def needs_model(data_args: DataArguments) -> bool:
    """Whether the task can only be built once the model is loaded (--prompt auto scores candidates with it)."""
    return data_args.prompt == "auto"


def build_task(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, model_kind: str, *,
               model: Any = None, validation: Any = None,
               batch_size: int = 32) -> tuple[LabelWordTask | GenerationTask, PromptSelection | None]:
    """The task a recipe trains, and the prompt-selection table when --prompt auto chose it.

    --prompt auto needs `model` (as it starts fine-tuning) and the `validation` rows; the selection never sees
    the test split.
    """
    preset = get_preset(data_args.task)
    if data_args.prompt == "auto":
        if model is None or validation is None:
            raise ValueError("--prompt auto: the model and the validation split are needed to score the candidates")
        task, selection = select_prompt(model, tokenizer, validation, data_args.task, model_kind=model_kind,
                                             num_examples=data_args.prompt_examples, batch_size=batch_size,
                                             **data_args.task_kwargs)
        logger.info("prompt selection:\n%s", selection.table())
        return task, selection
    overrides: dict[str, Any] = {}
    if data_args.prompt is not None:
        overrides["template"] = PromptTemplate(data_args.prompt, truncate=preset.template.truncate)
    if data_args.label_words:
        if preset.label_words is None:
            raise ValueError(f"--label_words: --task {data_args.task} generates free text and has no label words")
        overrides["label_words"] = tuple(data_args.label_words)
    task = load_task(data_args.task, tokenizer, model_kind=model_kind, **data_args.task_kwargs, **overrides)
    return task, None
