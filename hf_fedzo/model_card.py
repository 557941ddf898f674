"""Model cards for ZO runs, rendered with ``huggingface_hub``'s ``ModelCard``."""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from torch import nn
from transformers import TrainerState

from hf_fedzo.config import ZOConfig

_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ model_description }}

## Training procedure

Zeroth-order fine-tuning with split perturbations (FedSPZO) by
[hf_fedzo](https://github.com/hf-fedzo/hf_fedzo): only forward passes, with the update of every step
regenerated from a seed.

| setting | value |
| --- | --- |
{% for key, value in zo_settings.items() %}| {{ key }} | {{ value }} |
{% endfor %}
Compute spent: {{ forwards_block1 }} block-1 and {{ forwards_block2 }} block-2 forwards, {{ tflops }} forward TFLOPs.
"""


def render_model_card(args: ZOConfig, model: nn.Module, state: TrainerState, *, model_name: str | None = None,
                      finetuned_from: str | None = None, dataset: str | list[str] | None = None,
                      tags: list[str] | None = None, language: str | None = None, license: str | None = None,
                      totals: dict[str, int] | None = None) -> ModelCard:
    totals = totals or {}
    base = finetuned_from or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    data = ModelCardData(
        base_model=base if base and not base.startswith(("/", ".")) else None,
        datasets=[dataset] if isinstance(dataset, str) else dataset,
        tags=tags,
        language=language,
        license=license,
        library_name="peft" if hasattr(model, "peft_config") else "transformers",
    )
    settings: dict[str, Any] = {
        "zo_eps": args.zo_eps,
        "zo_p1": args.zo_p1,
        "zo_p2": args.zo_p2,
        "zo_split": args.zo_split,
        "zo_perturbation": args.zo_perturbation,
        "zo_difference": args.zo_difference,
        "learning_rate": args.learning_rate,
        "steps": state.global_step,
    }
    flops = totals.get("flops_block1", 0) + totals.get("flops_block2", 0)
    return ModelCard.from_template(
        data,
        template_str=_TEMPLATE,
        model_name=model_name or args.output_dir.rstrip("/").split("/")[-1],
        model_description=f"Fine-tuned from `{base}`." if base else "Fine-tuned with hf_fedzo.",
        zo_settings=settings,
        forwards_block1=totals.get("forwards_block1", 0),
        forwards_block2=totals.get("forwards_block2", 0),
        tflops=f"{flops / 1e12:.4f}",
    )
