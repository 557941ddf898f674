"""Model cards for ZO runs: one renderer for ``ZOSplitTrainer.create_model_card`` and ``hf-fedzo push``.

The text lives in the Jinja template ``model_cards/zo_model_card.md`` (top level of the repository, so
it is reviewed like documentation); it is rendered with ``huggingface_hub``'s ``ModelCard.from_template``
and ``ModelCardData``, whose ``eval_results`` become the ``model-index`` the Hub reads. Everything the
card says comes from a :class:`CardInfo`, which :func:`card_info_from_record` fills from a trajectory
record (``zo_trajectory.json``): method settings, resolved split, compute and memory figures, and the
exact command. Nothing here imports torch, so a push of an adapter starts in a fraction of a second.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_fedzo.redaction import redact_command

__all__ = [
    "TEMPLATE_ENV_VAR",
    "TEMPLATE_NAME",
    "CardInfo",
    "card_info_from_record",
    "eval_metrics",
    "render_model_card",
    "template_path",
]

TEMPLATE_NAME = "zo_model_card.md"
TEMPLATE_ENV_VAR = "HF_FEDZO_MODEL_CARD_TEMPLATE"
BASE_TAGS = ("hf_fedzo", "zeroth-order", "fedspzo")

# Trainer bookkeeping that is not a quality metric.
_NOT_METRICS = re.compile(r"(runtime|per_second|epoch|step|model_preparation_time|num_tokens|total_flos)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TASK_BY_CLASS = (
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForTokenClassification", "token-classification"),
)


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """Locate a card template: ``$HF_FEDZO_MODEL_CARD_TEMPLATE``, the repository's ``model_cards/`` (source
    checkout or editable install), or the copy a wheel installs under ``<prefix>/share/hf_fedzo/model_cards``."""
    override = os.environ.get(TEMPLATE_ENV_VAR)
    if override:
        return Path(override)
    candidates = [
        Path(__file__).resolve().parent.parent / "model_cards" / name,
        Path(sys.prefix) / "share" / "hf_fedzo" / "model_cards" / name,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"model card template {name!r} not found in {[str(c.parent) for c in candidates]}; "
                            f"set {TEMPLATE_ENV_VAR} to its path")


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id, not a local path (the card's ``base_model`` must be an id the Hub can link)."""
    return bool(name) and bool(_HUB_ID.match(name or "")) and not Path(name or "").exists()


@dataclass
class CardInfo:
    """What a ZO model card says. Unknown figures are simply left out of the card."""

    model_name: str
    variant: str = "full"  # "full" weights, LoRA "adapter", or adapter "merged" into the base
    repo_id: str | None = None
    base_model: str | None = None
    base_revision: str | None = None
    model_class: str | None = None
    license: str | None = None
    language: str | list[str] | None = None
    tags: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids
    dataset_name: str | None = None  # pretty name for the results (defaults to the first dataset id)
    dataset_config: str | None = None
    dataset_split: str | None = None
    task_type: str | None = None  # e.g. "text-classification"; guessed from the model class when None
    description: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # ZOSettings as a dict
    plan: dict[str, Any] = field(default_factory=dict)  # resolved split (trajectory "plan")
    seed: dict[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None
    weight_decay: float | None = None
    steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # eval metrics, e.g. {"eval_accuracy": 0.91}
    totals: dict[str, float] = field(default_factory=dict)  # forwards_block{1,2}, flops_block{1,2}
    parameters: list[dict[str, Any]] = field(default_factory=list)  # trainable tensors (name, shape, dtype)
    num_scalars: int | None = None  # scalars in the update log
    num_seeds: int | None = None
    memory: dict[str, Any] = field(default_factory=dict)  # measured figures from the caller (peak memory, …)
    federation: dict[str, Any] | None = None  # clients, rounds, bytes per round, … (optional section)
    task: dict[str, Any] | None = None  # the run's task.json (prompt section)
    command: str | None = None
    trajectory_file: str | None = None
    device_type: str | None = None
    merge_dtype: str | None = None
    hf_fedzo_version: str | None = None

    @property
    def library_name(self) -> str:
        return "peft" if self.variant == "adapter" else "transformers"

    @property
    def resolved_task_type(self) -> str | None:
        if self.task_type:
            return self.task_type
        for suffix, task in _TASK_BY_CLASS:
            if self.model_class and self.model_class.endswith(suffix):
                return task
        return None


# ------------------------------------------------------------------------------------------ sources
def eval_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The quality metrics among Trainer outputs (``eval_*``/``test_*``, no runtimes or throughputs)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not key.startswith(("eval_", "test_")) or _NOT_METRICS.search(key):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out


def card_info_from_record(record: Mapping[str, Any], **overrides: Any) -> CardInfo:
    """Fill a card from a trajectory record (``Trajectory.to_dict()`` or the parsed JSON file).

    Every key is optional, so a trainer that has not run a step yet can pass a partial record.
    ``overrides`` set :class:`CardInfo` fields directly (``model_name``, ``datasets``, ``metrics``, …).
    """
    run = record.get("run") or {}
    updates = record.get("updates")
    info: dict[str, Any] = {
        "model_name": "zo-fine-tuned-model",
        "variant": "adapter" if record.get("peft_config") else "full",
        "base_model": record.get("base_model"),
        "base_revision": record.get("base_revision"),
        "model_class": record.get("model_class"),
        "settings": dict(record.get("settings") or {}),
        "plan": dict(record.get("plan") or {}),
        "seed": dict(record.get("seed") or {}),
        "learning_rate": run.get("learning_rate"),
        "weight_decay": run.get("weight_decay"),
        "steps": run.get("global_step", len(updates) if updates is not None else None),
        "totals": dict(run.get("totals") or {}),
        "parameters": list(record.get("parameters") or []),
        "command": run.get("command"),
        "device_type": record.get("device_type"),
        "hf_fedzo_version": (record.get("versions") or {}).get("hf_fedzo"),
    }
    if updates is not None:
        info["num_seeds"] = sum(len(u["step_seeds"]) for u in updates)
        info["num_scalars"] = sum(len(row) for u in updates for m in u["scalars"] for row in m)
    info.update({k: v for k, v in overrides.items() if v is not None})
    return CardInfo(**info)


# ------------------------------------------------------------------------------------------- render
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def _split_text(info: CardInfo) -> str:
    requested = info.settings.get("split", "none")
    plan = info.plan
    index, layers = plan.get("split_index"), plan.get("num_layers")
    if index is None:
        return f"`{requested}` → no split (one block; directions span every trainable tensor)"
    where = f" (`{plan['layers_path']}`)" if plan.get("layers_path") else ""
    return f"`{requested}` → block 2 starts at layer {index} of {layers}{where}"


def _method_rows(info: CardInfo) -> list[tuple[str, str]]:
    s = info.settings
    rows: list[tuple[str, str]] = []
    if s:
        p1, p2 = int(s.get("p1", 1)), int(s.get("p2", 1))
        sides = 2 if s.get("difference", "central") == "central" else 1
        rows += [
            ("P1 (block-1 directions per step)", _fmt(p1)),
            ("P2 (block-2 directions per block-1 direction)", _fmt(p2)),
            ("split", _split_text(info)),
            ("ε (perturbation scale)", _fmt(float(s.get("eps", 0.0)))),
            ("perturbation", f"`{s.get('perturbation', 'gaussian')}`"),
            ("difference", f"`{s.get('difference', 'central')}`"),
            ("forwards per step", _forwards_per_step(info, sides, p1, p2)),
        ]
    if info.learning_rate is not None:
        rows.append(("learning rate", _fmt(float(info.learning_rate))))
    if info.weight_decay is not None:
        rows.append(("weight decay", _fmt(float(info.weight_decay))))
    if info.steps is not None:
        rows.append(("optimizer steps", _fmt(int(info.steps))))
    if info.seed:
        rows.append(("seeds", f"base {info.seed.get('base')}, round {info.seed.get('round', 0)}, "
                              f"client {info.seed.get('client', 0)}"))
    return rows


def _forwards_per_step(info: CardInfo, sides: int, p1: int, p2: int) -> str:
    baseline = " + 1 baseline" if sides == 1 else ""
    if "split_index" in info.plan and info.plan["split_index"] is None:
        return f"{sides * p1 * p2} full forwards{baseline}"
    return f"{sides * p1} block-1 + {sides * p1 * p2} block-2{baseline}"


def _compute_rows(info: CardInfo) -> list[tuple[str, str]]:
    t = info.totals
    rows: list[tuple[str, str]] = []
    if info.steps is not None:
        rows.append(("optimizer steps", _fmt(int(info.steps))))
    if t:
        rows.append(("forward passes", f"{_fmt(int(t.get('forwards_block1', 0)))} block-1, "
                                       f"{_fmt(int(t.get('forwards_block2', 0)))} block-2"))
        flops = float(t.get("flops_block1", 0)) + float(t.get("flops_block2", 0))
        rows.append(("forward TFLOPs", f"{flops / 1e12:.4g} (block 1: {float(t.get('flops_block1', 0)) / 1e12:.4g}, "
                                       f"block 2: {float(t.get('flops_block2', 0)) / 1e12:.4g})"))
    if info.device_type:
        rows.append(("device type", f"`{info.device_type}`"))
    return rows or [("figures", "not recorded")]


def _memory_rows(info: CardInfo) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if info.parameters:
        count = 0
        size = 0
        for p in info.parameters:
            n = 1
            for dim in p.get("shape", []):
                n *= int(dim)
            count += n
            size += n * _DTYPE_BYTES.get(p.get("dtype", "float32"), 4)
        rows.append(("trainable parameters", f"{_fmt(count)} in {len(info.parameters)} tensors ({_bytes(size)})"))
    rows.append(("gradients and optimizer state", "none: zeroth-order steps keep no gradients or moments, so "
                 "training memory is inference memory plus one ≤4 MB random-direction buffer per thread"))
    if info.num_scalars is not None:
        log = info.num_scalars * 4 + (info.num_seeds or 0) * 8 + 16 * int(info.steps or 0)
        rows.append(("whole update log", f"{_fmt(info.num_seeds or 0)} seeds and {_fmt(info.num_scalars)} scalars "
                                         f"(≈{_bytes(log)} as int64/float32)"))
    rows += [(key.replace("_", " "), _human(key, value)) for key, value in info.memory.items()]
    return rows


def _human(key: str, value: Any) -> str:
    if "bytes" in key and isinstance(value, int | float) and not isinstance(value, bool):
        return _bytes(float(value))
    return _fmt(value)


def _eval_results(info: CardInfo, metrics: Mapping[str, float]) -> list[EvalResult] | None:
    task = info.resolved_task_type
    dataset_type = info.datasets[0] if info.datasets else None
    dataset_name = info.dataset_name or dataset_type
    if not metrics or not task or not dataset_name:
        return None  # model-index needs a task and a dataset; the results table still lists the metrics
    return [
        EvalResult(task_type=task, dataset_type=dataset_type or dataset_name, dataset_name=dataset_name,
                   dataset_config=info.dataset_config, dataset_split=info.dataset_split,
                   metric_type=name.split("_", 1)[1], metric_value=value)
        for name, value in metrics.items()
    ]


def _task_section(task: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the card says of a run's task.json: template, label words, calibration and how it was chosen."""
    if not task:
        return None
    selection = task.get("selection") or {}
    selected = (f"chosen zero-shot on {selection['examples']} {selection['split']} examples by "
                f"{selection['metric'].replace('_', ' ')}" if {"examples", "split", "metric"} <= set(selection) else "")
    words = task.get("label_words")
    # A newline inside inline code would break the Markdown line: show it as \n, as a user would type it.
    return {"template": task["template"].replace("\n", "\\n"),
            "label_words": " / ".join(f"`{w}`" for w in words) if words else None,
            "calibrated": bool((task.get("options") or {}).get("score_bias")), "selected": selected}


def render_model_card(info: CardInfo, template: str | os.PathLike[str] | None = None) -> ModelCard:
    """Render ``info`` with the ZO card template (or another Jinja template path)."""
    metrics = eval_metrics(info.metrics)
    tags = list(dict.fromkeys([*BASE_TAGS, *(["lora", "peft"] if info.variant != "full" else []),
                               *(["federated-learning"] if info.federation else []), *info.tags]))
    data = ModelCardData(
        base_model=info.base_model if is_hub_id(info.base_model) else None,
        datasets=info.datasets or None,
        eval_results=_eval_results(info, metrics),
        language=info.language,
        library_name=info.library_name,
        license=info.license,
        metrics=sorted({name.split("_", 1)[1] for name in metrics}) or None,
        model_name=info.model_name,
        pipeline_tag=info.resolved_task_type if info.variant != "adapter" else None,
        tags=tags,
    )
    if is_hub_id(info.base_model):
        base_display = f"[`{info.base_model}`](https://huggingface.co/{info.base_model})"
    elif info.base_model:
        base_display = f"`{Path(str(info.base_model)).name}` (a local model)"
    else:
        base_display = f"a `{info.model_class or 'transformers'}` model"
    return ModelCard.from_template(
        data,
        template_path=str(Path(template) if template is not None else template_path()),
        model_name=info.model_name,
        variant=info.variant,
        base_display=base_display,
        merge_dtype=info.merge_dtype or "float32",
        description=info.description,
        hf_fedzo_version=info.hf_fedzo_version or "",
        method=_method_rows(info),
        federation=[(k.replace("_", " "), _human(k, v)) for k, v in (info.federation or {}).items()],
        results=[(name.split("_", 1)[1].replace("_", " "), _fmt(value)) for name, value in metrics.items()],
        dataset_label=_dataset_label(info),
        compute=_compute_rows(info),
        memory=_memory_rows(info),
        command=redact_command(info.command) if info.command else None,  # a card is published: no secrets
        task=_task_section(info.task),
        trajectory_file=info.trajectory_file,
        steps=_fmt(int(info.steps or 0)),
        device_type=info.device_type or "cpu",
        repo_id=info.repo_id or info.model_name,
        replay_base="None" if is_hub_id(info.base_model) else '"path/to/base-model"',
    )


def _dataset_label(info: CardInfo) -> str | None:
    name = info.dataset_name or (info.datasets[0] if info.datasets else None)
    if not name:
        return None
    extras = [x for x in (info.dataset_config, info.dataset_split) if x]
    return f"{name}" + (f" ({', '.join(extras)})" if extras else "")


def card_tags(tags: str | Iterable[str] | None) -> list[str]:
    return [tags] if isinstance(tags, str) else list(tags or [])
