"""What the server and every client build from the run config: the federation, the model, the task and the data.

Both sides call these with the same run config, so they agree on the initial weights (the LoRA initialisation is
seeded), the prompt, the partition of the training set and the ZO settings without any of it travelling.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Context
from torch import nn

from hf_fedzo.data import load_task_dataset
from hf_fedzo.federation import ClientData, FederationConfig, task_batch_loss, task_clients
from hf_fedzo.integrations.flower import federation_config
from hf_fedzo.runs import DataArguments, ModelArguments, load_model, load_tokenizer
from hf_fedzo.tasks import load_task


@dataclass(frozen=True)
class AppConfig:
    """The run config keys that are not FederationConfig fields (see pyproject.toml for their meaning)."""

    model_path: str = "smollm2"
    peft: str = "lora"
    lora_r: int = 8
    lora_target_modules: str = "q_proj v_proj"
    task: str = "sst2"
    dataset: str = "vader"
    train_file: str = ""
    validation_file: str = ""
    max_train_samples: int = 512
    max_length: int = 64
    eval_samples: int = 64
    eval_batch_size: int = 32
    output_dir: str = "outputs/flower"
    threads: int = 1
    round_timeout: float = 600.0
    wait_for_nodes: float = 300.0


APP_KEYS = tuple(f.name.replace("_", "-") for f in dataclasses.fields(AppConfig))


def read_config(context: Context) -> tuple[AppConfig, FederationConfig]:
    run_config = dict(context.run_config)
    values = {}
    for field in dataclasses.fields(AppConfig):
        key = field.name.replace("_", "-")
        if key in run_config:
            values[field.name] = type(field.default)(run_config[key])  # TOML gives 600 for a float 600.0
    app = AppConfig(**values)
    torch.set_num_threads(app.threads)
    return app, federation_config(run_config, app_keys=APP_KEYS)


def _model_path(app: AppConfig) -> str:
    if app.model_path == "smollm2":
        from hf_fedzo.data import smollm2_path

        return str(smollm2_path())
    return app.model_path


def model_arguments(app: AppConfig) -> ModelArguments:
    return ModelArguments(model_name_or_path=_model_path(app), peft=app.peft,  # type: ignore[arg-type]
                          lora_r=app.lora_r, lora_target_modules=app.lora_target_modules.split() or None)


@functools.cache
def task_for(app: AppConfig) -> Any:
    data_args = DataArguments(task=app.task, max_length=app.max_length)
    tokenizer = load_tokenizer(model_arguments(app), kind="causal")
    return load_task(app.task, tokenizer, model_kind="causal", **data_args.task_kwargs)


@functools.cache
def _splits(app: AppConfig) -> Any:
    files = {"train_file": app.train_file or None, "validation_file": app.validation_file or None}
    return load_task_dataset(app.dataset or app.task, **files)


def model_and_loss(app: AppConfig, config: FederationConfig) -> tuple[nn.Module, Any]:
    """The model at the federation's initial weights, identical on every party, and its batch loss."""
    torch.manual_seed(config.seed)  # the LoRA initialisation is random: every party draws the same one
    model = load_model(model_arguments(app), "causal", "cpu")
    return model, task_batch_loss(task_for(app))


def client_data(app: AppConfig, config: FederationConfig, client_id: int) -> ClientData:
    """Client ``client_id``'s share of the training split (the seeded partition every client computes alike)."""
    train = _splits(app)["train"]
    train = train.select(range(min(app.max_train_samples, len(train))))
    clients, _ = task_clients(task_for(app), train, config)
    return clients[client_id]


def validation(app: AppConfig) -> Any:
    validation = _splits(app)["validation"]
    return validation.select(range(min(app.eval_samples, len(validation))))


def run_info(app: AppConfig) -> dict[str, Any]:
    return {"model": app.model_path, "dataset": app.train_file or app.dataset, "task": app.task, "peft": app.peft,
            "lora_r": app.lora_r, "runtime": "flower"}


def trainable_checksum(model: nn.Module) -> str:
    """sha256 of the trainable tensors' bytes: equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
