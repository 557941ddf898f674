"""Trajectory checkpoints: a finished run is rebuilt bit for bit from its starting point and its log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.trajectory import (
    TRAJECTORY_NAME,
    TrajectoryMismatchError,
    from_trajectory,
    load_trajectory,
    save_trajectory,
)
from tests.test_trainer import pattern_dataset
from tests.tiny_models import llama

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _train(tmp_path: Path, model: torch.nn.Module, steps: int = 4, **overrides: object) -> ZOSplitTrainer:
    kw: dict[str, object] = dict(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
                                 learning_rate=3e-3, zo_eps=1e-3, zo_p1=1, zo_p2=2, zo_split="none", report_to=[],
                                 use_cpu=True, save_strategy="no", disable_tqdm=True, lr_scheduler_type="linear",
                                 weight_decay=0.1)
    kw.update(overrides)
    trainer = ZOSplitTrainer(model=model, args=ZOConfig(**kw), train_dataset=pattern_dataset())
    trainer.train()
    return trainer


def _base(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return llama()


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


@pytest.mark.parametrize(("p1", "p2", "split"), [(1, 2, "none"), (1, 2, "2"), (2, 1, "1")])
def test_full_weights_rebuilt_bit_for_bit(tmp_path: Path, p1: int, p2: int, split: str) -> None:
    trainer = _train(tmp_path, _base(), zo_p1=p1, zo_p2=p2, zo_split=split, gradient_accumulation_steps=2,
                     per_device_train_batch_size=4)
    trainer.save_model()  # writes zo_trajectory.json next to the weights
    path = tmp_path / "out" / TRAJECTORY_NAME
    trajectory = load_trajectory(path)
    assert trajectory.plan["split_index"] == (None if split == "none" else int(split))
    assert len(trajectory.updates) == 4 and all(len(u.step_seeds) == 2 for u in trajectory.updates)
    assert trajectory.device_type == "cpu" and trajectory.peft_config is None

    rebuilt = from_trajectory(_base(), path)
    _assert_same_weights(rebuilt, trainer.model)
    assert not torch.equal(rebuilt.model.norm.weight, _base().model.norm.weight)  # it did move


@pytest.mark.parametrize("perturbation", ["gaussian_table", "rademacher_philox"])
def test_fast_directions_rebuilt_bit_for_bit(tmp_path: Path, perturbation: str) -> None:
    trainer = _train(tmp_path, _base(), zo_split="2", zo_perturbation=perturbation, gradient_accumulation_steps=2,
                     per_device_train_batch_size=4)
    trainer.save_model()
    trajectory = load_trajectory(tmp_path / "out" / TRAJECTORY_NAME)
    assert trajectory.settings["perturbation"] == perturbation
    rebuilt = from_trajectory(_base(), tmp_path / "out" / TRAJECTORY_NAME)
    _assert_same_weights(rebuilt, trainer.model)
    assert not torch.equal(rebuilt.model.norm.weight, _base().model.norm.weight)


def test_lora_rebuilt_from_a_plain_base(tmp_path: Path) -> None:
    trained = get_peft_model(_base(), LoraConfig(**LORA))
    trainer = _train(tmp_path, trained, zo_split="2", learning_rate=3e-2, zo_eps=1e-2)
    path = save_trajectory(tmp_path / "traj.json", trainer)
    trajectory = load_trajectory(path)
    assert trajectory.peft_config is not None and trajectory.initial_adapter is not None
    assert all("lora_" in n for n in trajectory.parameter_names)
    zeros = [n for n, e in trajectory.initial_adapter.items() if e.get("zeros")]
    assert zeros and all("lora_B" in n for n in zeros)  # B starts at zero and is stored as a flag

    torch.manual_seed(123)  # a different global RNG: LoRA A would initialise differently
    rebuilt = from_trajectory(_base(), path)
    _assert_same_weights(rebuilt, trained)


def test_lora_rebuilt_from_a_saved_base_path(tmp_path: Path) -> None:
    _base().save_pretrained(tmp_path / "base")
    from transformers import AutoModelForCausalLM

    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LoraConfig(**LORA))
    trainer = _train(tmp_path, trained, steps=3, learning_rate=3e-2, zo_eps=1e-2)
    trajectory = load_trajectory(trainer.save_trajectory())
    assert trajectory.base_model == str(tmp_path / "base") and trajectory.model_class == "LlamaForCausalLM"
    rebuilt = from_trajectory(None, trajectory)  # loads the recorded base by id/path and class
    _assert_same_weights(rebuilt, trained)


def test_resumed_run_records_the_original_start(tmp_path: Path) -> None:
    args = dict(save_strategy="steps", save_steps=2, learning_rate=3e-2, zo_eps=1e-2)
    first = get_peft_model(_base(), LoraConfig(**LORA))
    _train(tmp_path, first, steps=2, **args)  # checkpoint-2, then a "new job" resumes to step 4
    torch.manual_seed(7)
    resumed_model = get_peft_model(_base(), LoraConfig(**LORA))
    trainer = ZOSplitTrainer(model=resumed_model, args=ZOConfig(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-2,
        zo_eps=1e-2, zo_p2=2, zo_split="none", report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        lr_scheduler_type="linear", weight_decay=0.1), train_dataset=pattern_dataset())
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert (tmp_path / "out" / "checkpoint-2" / TRAJECTORY_NAME).is_file()  # checkpoints carry one too
    trajectory = load_trajectory(trainer.save_trajectory())
    assert len(trajectory.updates) == 4
    rebuilt = from_trajectory(_base(), trajectory)
    _assert_same_weights(rebuilt, resumed_model)


def test_mismatches_are_named(tmp_path: Path) -> None:
    trainer = _train(tmp_path, _base(), steps=2)
    data = json.loads(Path(trainer.save_trajectory()).read_text())
    with pytest.raises(TrajectoryMismatchError, match="do not start where the run started"):
        from_trajectory(_base(seed=1), Path(tmp_path / "out" / TRAJECTORY_NAME))
    data["device_type"] = "cuda"
    (tmp_path / "cuda.json").write_text(json.dumps(data))
    with pytest.raises(TrajectoryMismatchError, match="CPU and CUDA generators"):
        from_trajectory(_base(), tmp_path / "cuda.json")
    data["device_type"] = "cpu"
    data["updates"][0]["scalars"][0][0][0] += 1.0  # a tampered log no longer reproduces the result
    (tmp_path / "tampered.json").write_text(json.dumps(data))
    with pytest.raises(TrajectoryMismatchError, match="log digest check failed"):
        from_trajectory(_base(), tmp_path / "tampered.json")
    data["format"] = "something-else"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a hf_fedzo trajectory"):
        load_trajectory(tmp_path / "bad.json")
