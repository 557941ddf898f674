"""No secret given to a run (``--hub_token``, ``HF_TOKEN``) is ever recorded in a file that is kept or pushed."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.hub import stage_run
from hf_fedzo.model_card import CardInfo, render_model_card
from hf_fedzo.redaction import REDACTED, redact_command, redact_mapping
from tests.test_trainer import pattern_dataset
from tests.tiny_models import llama

SECRET = "hf_" + "S3cr3tT0kenValue" * 3  # token-shaped
OTHER = "not-token-shaped-but-secret-42"


@pytest.mark.parametrize("command, hidden, kept", [
    (f"python train.py --hub_token {OTHER} --lr 1", OTHER, "--lr 1"),
    (f"python train.py --hub_token={OTHER}", OTHER, "--hub_token=<redacted>"),
    (f"python train.py --token {OTHER} --push_to_hub", OTHER, "--push_to_hub"),
    (f"python train.py --api-key {OTHER}", OTHER, "--api-key"),
    (f"python train.py --note {SECRET}", SECRET, "--note"),
    (f"python train.py --max_new_tokens 20 --tokenizer_name gpt2 --hub_token '{OTHER}", OTHER, "--max_new_tokens 20"),
])
def test_commands_lose_their_secrets(command: str, hidden: str, kept: str) -> None:
    redacted = redact_command(command)
    assert hidden not in redacted and REDACTED in redacted and kept in redacted


def test_environment_token_values_are_redacted_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", OTHER)
    assert OTHER not in redact_command(f"python x.py --note prefix{OTHER}")
    assert redact_mapping({"hub_token": "x", "nested": [{"value": OTHER}], "tokenizer_name": "gpt2"}) == {
        "hub_token": REDACTED, "nested": [{"value": REDACTED}], "tokenizer_name": "gpt2"}


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_hub_token_never_reaches_trajectory_card_or_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--hub_token", SECRET, "--output_dir", str(tmp_path / "out")])
    torch.manual_seed(0)
    out = tmp_path / "out"
    args = ZOConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2,
                    zo_eps=1e-2, zo_p2=2, zo_split="none", report_to=[], use_cpu=True, save_strategy="no",
                    disable_tqdm=True, hub_token=SECRET)
    trainer = ZOSplitTrainer(model=llama(), args=args, train_dataset=pattern_dataset())
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    leaks = [name for name, data in _all_bytes(out).items() if SECRET.encode() in data and name != "training_args.bin"]
    assert not leaks, f"the token was written to {leaks}"
    command = json.loads((out / "zo_trajectory.json").read_text())["run"]["command"]
    assert shlex.split(command)[2:4] == ["--hub_token", REDACTED]

    staging = tmp_path / "staging"
    staging.mkdir()
    stage_run(out, staging, command=f"python train.py --hub_token {SECRET}")
    staged = _all_bytes(staging)
    assert "training_args.bin" not in staged and "training_args.json" in staged
    assert not [name for name, data in staged.items() if SECRET.encode() in data]


def test_an_old_trajectory_holding_a_token_is_published_redacted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    record = {"format": "hf_fedzo.zo_trajectory", "run": {"command": f"python t.py --hub_token {SECRET}",
                                                        "training_args": {"hub_token": SECRET}}}
    (out / "zo_trajectory.json").write_text(json.dumps(record))
    staging = tmp_path / "staging"
    staging.mkdir()
    stage_run(out, staging)
    assert not [name for name, data in _all_bytes(staging).items() if SECRET.encode() in data]
    assert SECRET in (out / "zo_trajectory.json").read_text()  # the run folder itself is only read


def test_card_rendered_from_any_source_is_redacted() -> None:
    card = render_model_card(CardInfo(model_name="m", command=f"python t.py --token {OTHER}"))
    assert OTHER not in str(card)

