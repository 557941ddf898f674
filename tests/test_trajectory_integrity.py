"""Trajectory replays say which check failed, refuse another base and unverifiable files, and leave the
caller's model untouched when they refuse; resuming without the update history is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.trajectory import TrajectoryMismatchError, from_trajectory, load_trajectory, save_trajectory
from tests.test_trainer import pattern_dataset
from tests.tiny_models import llama

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _args(out: Path, **overrides: object) -> ZOConfig:
    kw: dict[str, object] = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=8, learning_rate=3e-2,
                                 zo_eps=1e-2, zo_p2=2, zo_split="none", report_to=[], use_cpu=True,
                                 save_strategy="no", disable_tqdm=True)
    return ZOConfig(**(kw | overrides))


def _base(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return llama()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("lora")
    trainer = ZOSplitTrainer(model=get_peft_model(_base(), LoraConfig(**LORA)), args=_args(out),
                             train_dataset=pattern_dataset())
    trainer.train()
    return json.loads(save_trajectory(out / "traj.json", trainer).read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "traj.json"
    path.write_text(json.dumps(data))
    return path


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_trajectory_refuses_a_different_base(lora_run: dict, tmp_path: Path) -> None:
    other = _base(seed=1)  # same architecture and config, other weights
    before = _state(other)
    with pytest.raises(TrajectoryMismatchError, match="base fingerprint check failed"):
        from_trajectory(other, _write(tmp_path, lora_run))
    assert not hasattr(other, "peft_config")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    from_trajectory(_base(), _write(tmp_path, lora_run))  # the right base still replays


@pytest.mark.parametrize(("path", "value", "check"), [
    (("updates", 0, "scalars", 0, 0, 0), 123.0, "log digest check failed"),
    (("updates", 1, "lr"), 0.5, "log digest check failed"),
    (("settings", "eps"), 0.5, "log digest check failed"),
])
def test_a_tampered_log_is_named_as_such(lora_run: dict, tmp_path: Path, path: tuple, value: float,
                                        check: str) -> None:
    data = json.loads(json.dumps(lora_run))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(TrajectoryMismatchError, match=check):
        from_trajectory(_base(), _write(tmp_path, data))


def test_a_changed_platform_is_blamed_only_when_everything_else_matched(lora_run: dict, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import hf_fedzo.trajectory.replay as module

    real = module.apply_updates
    monkeypatch.setattr(module, "apply_updates", lambda est, ups, retrace: real(est, ups[:-1], retrace=retrace))
    with pytest.raises(TrajectoryMismatchError, match=r"final fingerprint check failed .*log, base and start"):
        from_trajectory(_base(), _write(tmp_path, lora_run))


@pytest.mark.parametrize("field", ["final_fingerprint", "initial_fingerprint"])
def test_a_trajectory_without_fingerprints_needs_an_explicit_opt_out(lora_run: dict, tmp_path: Path,
                                                                    field: str) -> None:
    data = {k: v for k, v in lora_run.items() if k != field}
    with pytest.raises(TrajectoryMismatchError, match=f"no {field}.*verify=False"):
        from_trajectory(_base(), _write(tmp_path, data))
    from_trajectory(_base(), _write(tmp_path, data), verify=False)


def test_a_failed_final_check_leaves_the_callers_model_unchanged(tmp_path: Path) -> None:
    trainer = ZOSplitTrainer(model=_base(), args=_args(tmp_path / "out"), train_dataset=pattern_dataset())
    trainer.train()
    data = json.loads(save_trajectory(tmp_path / "full.json", trainer).read_text())
    data["final_fingerprint"] = "sha256:" + "0" * 64
    model = _base()
    for name, p in model.named_parameters():
        p.requires_grad_("embed" not in name)  # the caller's own flags
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _state(model)
    with pytest.raises(TrajectoryMismatchError, match="final fingerprint check failed"):
        from_trajectory(model, _write(tmp_path, data))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_resume_without_the_update_history_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    trainer = ZOSplitTrainer(model=_base(), args=_args(out, max_steps=2, save_strategy="steps", save_steps=2),
                             train_dataset=pattern_dataset())
    trainer.train()
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    resumed = ZOSplitTrainer(model=_base(), args=_args(out, max_steps=4), train_dataset=pattern_dataset())
    with pytest.raises(ValueError, match=r"optimizer\.pt is missing: it holds the ZO update history"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert load_trajectory(out / "checkpoint-2").updates  # nothing was overwritten
