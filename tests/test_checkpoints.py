"""A checkpoint cut short by a kill is skipped on resume; a damaged optimizer.pt is named."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from hf_fedzo import ZOConfig, ZOSplitTrainer
from tests.test_trainer import pattern_dataset
from tests.tiny_models import llama


def _trainer(out: Path, steps: int) -> ZOSplitTrainer:
    torch.manual_seed(0)
    args = ZOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=3e-2,
                    zo_eps=1e-2, zo_p2=2, zo_split="none", report_to=[], use_cpu=True, save_strategy="steps",
                    save_steps=2, disable_tqdm=True)
    return ZOSplitTrainer(model=llama(), args=args, train_dataset=pattern_dataset())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "out"
    _trainer(out, 4).train()  # checkpoint-2 and checkpoint-4
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def test_resume_skips_a_checkpoint_cut_short_and_reports_it(run: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    out = _copy(run, tmp_path)
    (out / "checkpoint-4" / "trainer_state.json").unlink()  # killed before the last file of the save
    (out / "checkpoint-6").mkdir()  # killed right after creating the folder
    (out / "checkpoint-6" / "model.safetensors").write_bytes(b"\0" * 10)
    trainer = _trainer(out, 6)
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-6" in caplog.text
    assert len(trainer.zo_optimizer.history) == 6  # resumed from checkpoint-2 with its history


@pytest.mark.parametrize(("content", "named"), [
    (b"", "cannot be loaded"), (b"\x80\x04random bytes", "cannot be loaded"), (None, "is not a ZOOptimizer state")])
def test_a_damaged_optimizer_file_is_named(run: Path, tmp_path: Path, content: bytes | None, named: str) -> None:
    out = _copy(run, tmp_path)
    target = out / "checkpoint-4" / "optimizer.pt"
    if content is None:
        torch.save({"state": {}, "param_groups": []}, target)  # an ordinary optimizer's file
    else:
        target.write_bytes(content)
    with pytest.raises(ValueError, match=f"{target}.*{named}"):
        _trainer(out, 6).train(resume_from_checkpoint=str(out / "checkpoint-4"))
