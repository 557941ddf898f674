"""Load a model and tokenizer for a recipe: full weights, LoRA or 4-bit QLoRA, failing fast when offline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hf_fedzo.known_warnings import peft_deprecations_hidden
from hf_fedzo.runs.arguments import ModelArguments
from hf_fedzo.tasks import ModelKind

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ModelUnavailableError(OSError):
    """A model or tokenizer is neither a local folder nor reachable on the Hub (offline, no cache)."""


class ModelArgumentError(ValueError):
    """A model flag that does not fit the model it names (known only once the model is loaded)."""


def _local_hint(kind: ModelKind) -> str:
    """A concrete offline model the user already has (or can get), so the error names a real path."""
    if kind != "causal":
        return ""
    from hf_fedzo.data import AssetNotFoundError, smollm2_path

    try:
        return f" A causal LM prepared on this machine: --model_name_or_path {smollm2_path()} (SmolLM2-135M-Instruct)."
    except AssetNotFoundError:
        return " `hf-fedzo prepare-assets` fetches an offline causal LM (SmolLM2-135M-Instruct) for testing."


def _unavailable(name: str, flag: str, kind: ModelKind, err: Exception) -> ModelUnavailableError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        # transformers treats a missing folder as a malformed repo id; say what is really wrong.
        reason = reason if path.is_dir() else "no such folder"
        fix = f"{flag} must be a folder written by `save_pretrained` (config.json, weights, tokenizer files)."
    else:
        fix = (f"It is not a local folder and not in the Hugging Face cache; offline (HF_HUB_OFFLINE=1) or without "
               f"network pass a local copy instead: {flag} /path/to/local/folder (written by `save_pretrained`).")
    return ModelUnavailableError(f"Cannot load {name!r} ({reason}). {fix}{_local_hint(kind)}")


def load_tokenizer(model_args: ModelArguments, kind: ModelKind = "causal") -> PreTrainedTokenizerBase:
    """The tokenizer; called first because it fails in a second when the model is not available offline."""
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name or model_args.model_name_or_path
    flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise _unavailable(name, flag, kind, err) from err


def load_model(model_args: ModelArguments, kind: ModelKind, device: torch.device | str = "cpu") -> nn.Module:
    """The model for `kind` ("mlm" or "causal"), wrapped in LoRA adapters when `--peft lora|qlora`.

    QLoRA loads the base in 4-bit nf4 with double quantization; only the adapters are trainable, which is
    also all ZO perturbs (4-bit storage cannot be perturbed).
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BitsAndBytesConfig

    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    dtype = getattr(torch, model_args.dtype)
    kwargs: dict[str, object] = {"dtype": dtype}
    if model_args.peft == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        # Quantization happens while loading, so weights must land on this process's device right away.
        kwargs["device_map"] = {"": str(device)}
    try:
        model = auto.from_pretrained(model_args.model_name_or_path, **kwargs)
    except OSError as err:
        raise _unavailable(model_args.model_name_or_path, "--model_name_or_path", kind, err) from err
    return apply_peft(model, model_args, kind)


def apply_peft(model: nn.Module, model_args: ModelArguments, kind: ModelKind) -> nn.Module:
    """Add LoRA adapters for `--peft lora|qlora`; `--peft none` returns the model unchanged."""
    if model_args.peft == "none":
        return model
    with peft_deprecations_hidden():  # a deprecation PEFT triggers while wrapping (see hf_fedzo.known_warnings)
        return _wrap(model, model_args, kind)


def _wrap(model: nn.Module, model_args: ModelArguments, kind: ModelKind) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if model_args.peft == "qlora":
        # Checkpointing only saves activation memory for backward passes, which ZO never runs.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    layers = None
    if model_args.lora_last_layers is not None:
        total = model.config.num_hidden_layers
        if not 1 <= model_args.lora_last_layers <= total:
            raise ModelArgumentError(f"--lora_last_layers must be in [1, {total}] for this model "
                             f"(got {model_args.lora_last_layers})")
        layers = list(range(total - model_args.lora_last_layers, total))
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules, layers_to_transform=layers,
        # CAUSAL_LM gives the wrapper `generate` (SQuAD evaluation); a masked LM needs no task wrapper.
        task_type="CAUSAL_LM" if kind == "causal" else None,
    )
    return get_peft_model(model, config)
