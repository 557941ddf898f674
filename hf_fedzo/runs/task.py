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


def build_task(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, model_kind: str, *,
               model: Any = None, validation: Any = None, split: str | None = None,
               batch_size: int = 32,
               **task_options: Any) -> tuple[LabelWordTask | GenerationTask, PromptSelection | None]:
    """The task a recipe trains, and the prompt-selection table when --prompt auto chose it.

    --prompt auto needs `model` (as it starts fine-tuning) and labeled rows to score the candidates on
    (`validation`, named `split`): pass a split that the reported results are not measured on. The test
    split is refused. `task_options` go to the task constructor besides the --max_length / --columns flags.
    """
    options = data_args.task_kwargs | task_options
    preset = get_preset(data_args.task)
    if data_args.prompt == "auto":
        if preset.label_words is None:
            raise ValueError(f"--prompt auto: --task {data_args.task} generates free text; selection scores label "
                             "words, so pass a literal --prompt or keep the preset's")
        if model is None or validation is None:
            raise ValueError("--prompt auto: the model and the validation split are needed to score the candidates")
        task, selection = select_prompt(model, tokenizer, validation, data_args.task, model_kind=model_kind,
                                        num_examples=data_args.prompt_examples, batch_size=batch_size, split=split,
                                        **options)
        logger.info("prompt selection:\n%s", selection.table())
        return task, selection
    overrides: dict[str, Any] = {}
    if data_args.prompt is not None:
        overrides["template"] = PromptTemplate(data_args.prompt, truncate=preset.template.truncate)
    if data_args.label_words:
        if preset.label_words is None:
            raise ValueError(f"--label_words: --task {data_args.task} generates free text and has no label words")
        overrides["label_words"] = tuple(data_args.label_words)
    task = load_task(data_args.task, tokenizer, model_kind=model_kind, **options, **overrides)
    return task, None
