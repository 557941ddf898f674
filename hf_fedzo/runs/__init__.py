"""What the scripts in `recipes/` share: flags, model loading with PEFT, data splits, metric history, outputs.

Recipes stay short, user-readable scripts; everything two of them would otherwise copy lives here, one
module per concern. This package never imports `recipes/`.
"""

from hf_fedzo.runs.arguments import DataArguments, ModelArguments, recipe_parser
from hf_fedzo.runs.console import ConsoleArguments, configure_console
from hf_fedzo.runs.data import load_splits
from hf_fedzo.runs.entry import run_recipe
from hf_fedzo.runs.history import MetricHistory
from hf_fedzo.runs.models import ModelUnavailableError, load_model, load_tokenizer
from hf_fedzo.runs.outputs import comparison_table, write_run_outputs
from hf_fedzo.runs.task import build_task
from hf_fedzo.runs.threads import configure_threads

__all__ = [
    "ConsoleArguments",
    "DataArguments",
    "MetricHistory",
    "ModelArguments",
    "ModelUnavailableError",
    "build_task",
    "comparison_table",
    "configure_console",
    "configure_threads",
    "load_model",
    "load_splits",
    "load_tokenizer",
    "recipe_parser",
    "run_recipe",
    "write_run_outputs",
]
