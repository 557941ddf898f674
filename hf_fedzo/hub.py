"""Share a finished ZO run on the Hugging Face Hub: adapter or merged weights, card, metrics, trajectory.

:func:`push_run` (and ``hf-fedzo push``) never writes into the run folder. It copies what should be
published into a temporary staging folder, adds the generated files there (``README.md`` rendered from
``model_cards/zo_model_card.md``, ``training_args.json``, and for ``merged=True`` the merged weights),
and uploads the staging folder as **one** commit with ``HfApi.create_commit``:

* a failed push (server error, time-out, bad token, unreachable endpoint) raises :class:`PushError`
  naming the repo id and the cause; the run folder is untouched and nothing partial is committed;
* a retried push is idempotent: the Hub reports which files it already holds with the same content,
  ``create_commit`` skips them, and a push with nothing new creates no commit at all.

Merging: a LoRA adapter is merged into a base reloaded in full precision (float32 by default, or
bfloat16). For QLoRA this matters: merging into the 4-bit base would re-quantize the merged weights and
shift the logits, so the base is reloaded without quantization before ``merge_and_unload``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_fedzo.model_card import card_info_from_record, card_tags, render_model_card
from hf_fedzo.redaction import redact_command, redact_mapping
from hf_fedzo.trajectory.format import TRAJECTORY_NAME

__all__ = ["PushError", "PushResult", "collect_metrics", "merge_adapter", "push_run", "stage_run"]

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# Resume-only state (optimizer/scheduler/RNG) and files the push regenerates are not published.
_SKIP_FILES = {"README.md", "optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.json"}
# Trainer pickles its TrainingArguments, hub_token included; the redacted training_args.json replaces it.
TRAINING_ARGS_BIN = "training_args.bin"
_SKIP_SUFFIXES = (".tmp", ".lock", ".pth")
_SKIP_DIRS = ("checkpoint-", "runs", "__pycache__", "wandb")
_METRIC_FILES = ("eval_results.json", "test_results.json", "all_results.json", "metrics.json")
FEDERATION_FILE = "federation.json"
FULL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")  # federation figures a federated run leaves for its card


class PushError(RuntimeError):
    """A push to the Hub failed; the local run folder is unchanged and the push can simply be retried."""

    def __init__(self, repo_id: str, cause: str, output_dir: str | os.PathLike[str] | None = None) -> None:
        self.repo_id = repo_id
        self.cause = cause
        where = f" of {output_dir}" if output_dir is not None else ""
        untouched = f" The local folder {output_dir} was not modified;" if output_dir is not None else ""
        super().__init__(f"push{where} to {repo_id!r} failed: {cause}.{untouched} retrying the push is safe "
                         "(files the Hub already holds are skipped).")


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    variant: str  # "adapter", "merged" or "full"
    commit_oid: str | None
    commit_url: str | None
    files: tuple[str, ...]


# --------------------------------------------------------------------------------------------- staging
def _published(output_dir: Path, variant: str, include_training_args_bin: bool = False) -> Iterator[Path]:
    """Files of the run folder that belong in the repo, relative to it."""
    for root, dirs, files in os.walk(output_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.startswith(_SKIP_DIRS))
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(output_dir)
            top_level = len(rel.parts) == 1
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                continue
            if top_level and (name in _SKIP_FILES or (variant == "merged" and name in ADAPTER_FILES)):
                continue
            if name == TRAINING_ARGS_BIN and not include_training_args_bin:
                continue
            yield rel


def check_weights(output_dir: Path, is_adapter: bool) -> None:
    """Refuse a folder without weights: it would publish a README-only repo labelled as a model."""
    expected = ADAPTER_FILES[1:] if is_adapter else FULL_WEIGHT_FILES
    if any((output_dir / name).is_file() for name in expected):
        return
    if not any(output_dir.iterdir()):
        raise ValueError(f"run folder {output_dir} is empty: nothing to publish")
    what = "adapter weights" if is_adapter else "model weights (and no adapter_config.json)"
    raise ValueError(f"run folder {output_dir} has no {what}: expected one of {', '.join(expected)}")


def redact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A trajectory record without secrets in its recorded command line and training arguments.

    Trajectories written before redaction existed may hold a ``--hub_token``; what is published never does.
    """
    record = dict(record)
    run = dict(record.get("run") or {})
    if run.get("command"):
        run["command"] = redact_command(str(run["command"]))
    if run.get("training_args"):
        run["training_args"] = redact_mapping(run["training_args"])
    if run:
        record["run"] = run
    return record


def collect_metrics(output_dir: str | os.PathLike[str]) -> dict[str, float]:
    """Evaluation metrics of a run folder: the last eval in ``trainer_state.json``, then the
    ``*_results.json``/``metrics.json`` files that ``Trainer.save_metrics`` and recipes write."""
    output_dir = Path(output_dir)
    metrics: dict[str, Any] = {}
    state = output_dir / "trainer_state.json"
    if state.is_file():
        for entry in json.loads(state.read_text()).get("log_history", []):
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    for name in _METRIC_FILES:
        path = output_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            if isinstance(data, Mapping):
                numbers = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
                metrics.update(numbers)
    return metrics


def merge_adapter(adapter_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                  base_model: str | None = None, base_revision: str | None = None, dtype: str = "float32",
                  model_class: str | None = None) -> Path:
    """Merge the LoRA adapter in ``adapter_dir`` into a full-precision base and save it to ``out_dir``.

    The base is ``base_model`` or the adapter config's ``base_model_name_or_path``; it is loaded in
    ``dtype`` *without* quantization (a QLoRA run's 4-bit base would re-quantize the merged weights).
    """
    import torch
    import transformers
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(adapter_dir))
    base = base_model or config.base_model_name_or_path
    if not base:
        raise ValueError("the adapter config names no base model: pass base_model (--base-model)")
    if model_class is None:
        architectures = transformers.AutoConfig.from_pretrained(base, revision=base_revision).architectures or []
        model_class = architectures[0] if architectures else None
    cls = getattr(transformers, model_class or "", None)
    if cls is None:
        raise ValueError(f"cannot tell which class to load {base!r} with (got {model_class!r})")
    model = cls.from_pretrained(base, revision=base_revision, dtype=getattr(torch, dtype), device_map="cpu")
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise ValueError(f"{base!r} loads quantized: merging needs a full-precision base (merging into 4-bit "
                         "re-quantizes the merged weights); pass the unquantized base with base_model (--base-model)")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    return Path(out_dir)


def stage_run(output_dir: str | os.PathLike[str], staging: str | os.PathLike[str], *, merged: bool = False,
              repo_id: str | None = None, base_model: str | None = None, merge_dtype: str = "float32",
              metrics: Mapping[str, float] | None = None, federation: Mapping[str, Any] | None = None,
              memory: Mapping[str, Any] | None = None, include_training_args_bin: bool = False, **card: Any) -> str:
    """Fill ``staging`` with what a push publishes; returns the variant (``adapter``/``merged``/``full``).

    ``card`` sets model-card fields (``datasets``, ``dataset_name``, ``task_type``, ``license``, ``tags``,
    ``command``, ``model_name``, ``description``, …; see :class:`hf_fedzo.model_card.CardInfo`).
    Without ``federation``, a ``federation.json`` object in the run folder (clients, rounds, bytes per
    round, …) fills the card's federation section. ``training_args.bin`` (a pickle holding the token the
    run was given) is left out unless ``include_training_args_bin``; the redacted ``training_args.json``
    describes the arguments.
    """
    output_dir, staging = Path(output_dir), Path(staging)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"run folder {output_dir} does not exist")
    is_adapter = (output_dir / "adapter_config.json").is_file()
    variant = "merged" if merged and is_adapter else ("adapter" if is_adapter else "full")
    check_weights(output_dir, is_adapter)
    if merged and not is_adapter:
        logger.info("%s holds full weights (no adapter_config.json): nothing to merge, pushing them as they are",
                    output_dir)
    record_path = output_dir / TRAJECTORY_NAME
    raw_record: dict[str, Any] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record = redact_record(raw_record) if raw_record else {}
    if not record:
        logger.warning("%s has no %s: the card will lack the method details and the replay block", output_dir,
                       TRAJECTORY_NAME)

    for rel in _published(output_dir, variant, include_training_args_bin):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() == TRAJECTORY_NAME and record != raw_record:
            (staging / rel).write_text(json.dumps(record, indent=1) + "\n")
        else:
            shutil.copyfile(output_dir / rel, staging / rel)
    training_args = (record.get("run") or {}).get("training_args")
    if training_args:
        (staging / "training_args.json").write_text(json.dumps(training_args, indent=2, sort_keys=True) + "\n")
    if variant == "merged":
        merge_adapter(output_dir, staging, base_model=base_model or record.get("base_model"),
                      base_revision=None if base_model else record.get("base_revision"), dtype=merge_dtype,
                      model_class=record.get("model_class"))

    all_metrics = {**collect_metrics(output_dir), **(metrics or {})}
    if federation is None and (output_dir / FEDERATION_FILE).is_file():
        federation = json.loads((output_dir / FEDERATION_FILE).read_text())
    from hf_fedzo.tasks.alignment import TASK_FILE  # here: the module needs torch, the card helpers do not

    task_path = output_dir / TASK_FILE
    task = json.loads(task_path.read_text()) if task_path.is_file() else None
    card = {k: v for k, v in card.items() if v is not None}
    for key in ("datasets", "tags"):
        if key in card:
            card[key] = card_tags(card[key])
    info = card_info_from_record(
        record, model_name=card.pop("model_name", None) or (repo_id or output_dir.name).split("/")[-1],
        repo_id=repo_id, variant=variant, metrics=all_metrics, federation=dict(federation) if federation else None,
        memory=dict(memory or {}), merge_dtype=merge_dtype if variant == "merged" else None,
        trajectory_file=TRAJECTORY_NAME if record else None, task=task, **card,
    )
    render_model_card(info).save(str(staging / "README.md"))
    return variant


# ---------------------------------------------------------------------------------------------- upload
@contextlib.contextmanager
def _client_timeout(seconds: float | None) -> Iterator[None]:
    """huggingface_hub's shared HTTP client has no time-out: give it one for the push, then restore it."""
    if seconds is None:
        yield
        return
    import huggingface_hub
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory() -> Any:
        client = previous()
        client.timeout = seconds  # httpx applies it to connect, read, write and pool waits
        return client

    huggingface_hub.set_client_factory(factory)
    try:
        yield
    finally:
        huggingface_hub.set_client_factory(previous)


def _describe(err: BaseException, endpoint: str, timeout: float | None) -> str:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set (offline mode); unset it to push"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        request = err.response.request
        if status == 401:
            what = "authentication failed: the token is missing or invalid (pass --token or set HF_TOKEN)"
        elif status == 403:
            what = "permission denied: the token cannot write to this repo"
        elif status >= 500:
            what = "the Hub had a server error"
        else:
            what = "the Hub refused the request"
        message = err.server_message or str(err).splitlines()[0]
        return f"{what} (HTTP {status} on {request.method} {request.url}): {message}"
    if isinstance(err, httpx2.TimeoutException):
        return f"timed out after {timeout} s waiting for {endpoint} ({type(err).__name__})"
    if isinstance(err, httpx2.TransportError):
        return f"could not reach {endpoint}: {err}"
    return f"{type(err).__name__}: {err}"


def push_run(output_dir: str | os.PathLike[str], repo_id: str, *, merged: bool = False, private: bool | None = None,
             revision: str | None = None, token: str | None = None, commit_message: str | None = None,
             base_model: str | None = None, merge_dtype: str = "float32", endpoint: str | None = None,
             timeout: float | None = 300.0, metrics: Mapping[str, float] | None = None,
             federation: Mapping[str, Any] | None = None, memory: Mapping[str, Any] | None = None,
             datasets: str | Sequence[str] | None = None, dataset_name: str | None = None,
             dataset_config: str | None = None, dataset_split: str | None = None, task_type: str | None = None,
             license: str | None = None, language: str | None = None, tags: str | Sequence[str] | None = None,
             command: str | None = None, model_name: str | None = None, description: str | None = None,
             include_training_args_bin: bool = False) -> PushResult:
    """Publish the run in ``output_dir`` to ``repo_id`` as one commit on ``revision`` (a branch, default main).

    Adapter runs push the adapter (``merged=False``) or the base with the adapter merged in
    (``merged=True``; ``base_model`` overrides the recorded base, ``merge_dtype`` is ``"float32"`` or
    ``"bfloat16"``). Also published: tokenizer and config files, metrics JSON, plots (``*.png``),
    ``trainer_state.json``, ``training_args.json`` (redacted; ``training_args.bin`` only with
    ``include_training_args_bin``: it pickles the token the run was given), the trajectory
    ``zo_trajectory.json``, and a rendered ``README.md`` whose ``model-index`` carries the eval metrics
    (``metrics`` adds to or overrides those found in the folder; ``datasets``/``dataset_name``/``task_type``
    label them). ``federation`` is an optional dict of federation figures (clients, rounds, bytes per
    round, …) shown in its own card section; ``memory`` adds measured memory figures.

    ``endpoint`` defaults to ``HF_ENDPOINT``; ``timeout`` (seconds, per network wait) bounds each request.
    Raises :class:`PushError` (repo id and cause) when the Hub cannot be updated; ``output_dir`` is only read.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    with tempfile.TemporaryDirectory(prefix="hf_fedzo-push-") as tmp:
        staging = Path(tmp)
        try:
            variant = stage_run(output_dir, staging, merged=merged, repo_id=repo_id, base_model=base_model,
                                merge_dtype=merge_dtype, metrics=metrics, federation=federation, memory=memory,
                                datasets=datasets, dataset_name=dataset_name, dataset_config=dataset_config,
                                dataset_split=dataset_split, task_type=task_type, license=license, language=language,
                                tags=tags, command=command, model_name=model_name, description=description,
                                include_training_args_bin=include_training_args_bin)
        except Exception as err:  # a missing base, a bad adapter, a full disk: same contract as the upload
            raise PushError(repo_id, f"could not prepare the upload: {type(err).__name__}: {err}", output_dir) from err
        files = tuple(sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()))
        message = commit_message or f"hf_fedzo: upload {variant} from {Path(output_dir).name}"
        try:
            with _client_timeout(timeout):
                api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
                if branch != "main":
                    api.create_branch(repo_id, branch=branch, exist_ok=True)
                operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(staging / f)) for f in files]
                info = api.create_commit(repo_id, operations=operations, commit_message=message, revision=branch)
        except Exception as err:  # every failure of the network phase becomes one clear error
            raise PushError(repo_id, _describe(err, api.endpoint, timeout), output_dir) from err
    logger.info("pushed %s (%d files) to %s@%s: %s", variant, len(files), repo_id, branch, info.commit_url)
    return PushResult(repo_id, branch, variant, info.oid, info.commit_url, files)
