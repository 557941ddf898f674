"""The command line of a recipe: model and data flags as `HfArgumentParser` dataclasses, and their parser.

Training flags are not redeclared here: recipes parse `ZOConfig` itself, so every `TrainingArguments` flag
and every `--zo_*` flag works as documented there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import HfArgumentParser


@dataclass
class ModelArguments:
    """Which model to load and which of its weights train, and how."""

    model_name_or_path: str = field(
        default="roberta-large",
        metadata={"help": "Hub model id or local folder written by `save_pretrained` (needed offline)."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer id or folder, when it differs from --model_name_or_path."}
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "Weight dtype (and QLoRA compute dtype). ZO finite differences are precision-"
                  "sensitive: keep float32 unless memory forces bfloat16/float16 (never --fp16 with ZO)."},
    )
    peft: Literal["none", "lora", "qlora"] = field(
        default="none",
        metadata={"help": "'none': train all weights; 'lora': LoRA adapters; 'qlora': LoRA on a 4-bit nf4 base "
                  "(bitsandbytes; also runs on CPU)."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (ZO forwards run in eval mode)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt, e.g. q_proj v_proj; default: PEFT's choice for the model type."},
    )
    lora_last_layers: int | None = field(
        default=None,
        metadata={"help": "Adapt only the last N layers of the decoder stack (default: every layer). The frozen "
                  "layers below then run once per ZO step under --zo_split auto (the cheapest split)."},
    )
    first_order: bool = field(
        default=False,
        metadata={"help": "Baseline: train with plain transformers.Trainer (backprop + AdamW) instead of "
                  "ZOSplitTrainer; the --zo_* flags are then ignored."},
    )


@dataclass
class DataArguments:
    """Which task (prompt) and which data."""

    task: str = field(
        default="sst2",
        metadata={"help": "Task preset (hf_fedzo.tasks): sst2, rte, boolq, wic (label words) or squad (generation)."},
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Data source name: glue/sst2, super_glue/rte|boolq|wic, squad (Hub), or vader (offline, "
                  "after `hf-fedzo prepare-assets`). Default: the --task name. Ignored with --train_file."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Local training data (csv, tsv, json, jsonl or parquet)."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation data (csv, tsv, json, jsonl or parquet)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation examples."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Longest prompt in tokens (default: the task's own, 256 or 512)."}
    )
    columns: list[str] | None = field(
        default=None,
        metadata={"help": "Map the task's field names to your columns, e.g. sentence=text label=stars."},
    )
    prompt: str | None = field(
        default=None,
        metadata={"help": "'auto': score the task's candidate prompts (templates x label words, raw and calibrated) "
                  "zero-shot on --prompt_examples validation rows and keep the best; or a literal template with "
                  "one {label} slot, e.g. 'Review: {sentence}\\nSentiment:{label}'. Default: the --task preset's."},
    )
    label_words: list[str] | None = field(
        default=None,
        metadata={"help": "Label words replacing the preset's, one per class in label order, each with its leading "
                  "space (e.g. ' negative' ' positive'). Not with --prompt auto, which chooses them."},
    )
    prompt_examples: int = field(
        default=256, metadata={"help": "Validation rows --prompt auto scores each candidate on."}
    )

    def __post_init__(self) -> None:
        if self.prompt is not None and self.prompt != "auto" and "{label}" not in self.prompt:
            raise ValueError(f"--prompt must be 'auto' or a template with one {{label}} slot, got {self.prompt!r}")
        if self.prompt == "auto" and self.label_words:
            raise ValueError("--label_words: --prompt auto chooses the label words; drop one of the two flags")
        if self.prompt_examples < 1:
            raise ValueError(f"--prompt_examples must be >= 1, got {self.prompt_examples}")
        if self.prompt is not None and self.prompt != "auto":
            self.prompt = self.prompt.replace("\\n", "\n")  # a shell passes the two characters \n

    @property
    def source(self) -> str:
        return self.dataset or self.task

    @property
    def task_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `load_task` (only what was set, so task defaults stay in charge)."""
        kwargs: dict[str, Any] = {}
        if self.max_length is not None:
            kwargs["max_length"] = self.max_length
        if self.columns:
            pairs = [item.split("=", 1) for item in self.columns]
            if any(len(pair) != 2 or not all(pair) for pair in pairs):
                raise ValueError(f"--columns expects name=column pairs, got {self.columns}")
            kwargs["columns"] = dict(pairs)
        return kwargs


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose bad input ends like argparse's: usage, one `error:` line naming the flag, exit 2.

    Unknown flags and values the dataclasses refuse in `__post_init__` (e.g. `--dropout 1.0`) arrive as
    `ValueError`s; a traceback would only bury the message, which already names the flag.
    """

    def parse_args_into_dataclasses(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        try:
            return super().parse_args_into_dataclasses(*args, **kwargs)
        except ValueError as err:
            self.error(str(err))


def recipe_parser(dataclass_types: Sequence[type], **defaults: Any) -> HfArgumentParser:
    """`HfArgumentParser` over `dataclass_types` with the recipe's own defaults (shown by `--help`).

    Defaults go through `set_defaults`, so one dataclass serves every recipe; an unknown name is a bug in the
    recipe and raises instead of being silently ignored as argparse would.
    """
    parser = RecipeArgumentParser(dataclass_types)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f"recipe defaults name unknown flags: {unknown}")
    parser.set_defaults(**defaults)
    return parser
