"""ZOSplitTrainer end to end: learning with full weights, LoRA and QLoRA; resume; DDP; config checks."""

import json
from pathlib import Path

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback, TrainingArguments

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.engine import ZOOptimizer
from tests.launch import launch_two_processes
from tests.tiny_models import llama, quantized_llama

REPO = Path(__file__).resolve().parents[1]


def pattern_dataset(rows: int = 32) -> datasets.Dataset:
    """Token pairs (a, a+10): a causal LM can learn to predict every second token."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 12, (rows, 8), generator=gen)
    ids[:, 1::2] = ids[:, 0::2] + 10
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def _args(tmp_path: Path, **overrides: object) -> ZOConfig:
    kw: dict[str, object] = dict(output_dir=str(tmp_path / "out"), max_steps=100, per_device_train_batch_size=16,
                                 per_device_eval_batch_size=32, learning_rate=3e-3, zo_eps=1e-3, zo_p2=4,
                                 report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=50)
    kw.update(overrides)
    return ZOConfig(**kw)


def _train_and_eval(model: torch.nn.Module, args: ZOConfig) -> tuple[float, float, ZOSplitTrainer]:
    data = pattern_dataset()
    trainer = ZOSplitTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    return before, trainer.evaluate()["eval_loss"], trainer


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj",
                                                                                "down_proj"]))


def test_full_weights_loss_falls(tmp_path: Path) -> None:
    torch.manual_seed(0)
    before, after, trainer = _train_and_eval(llama(), _args(tmp_path))
    assert after < before - 0.2, (before, after)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and "grad_norm" not in logs[0]
    assert logs[-1]["zo/forwards_block1"] == 2 * 100 and logs[-1]["zo/forwards_block2"] == 2 * 4 * 100
    assert logs[-1]["zo/flops_block2"] > 0 and "zo/projected_grad_abs_mean" in logs[-1]
    flops = logs[-1]["zo/flops_block1"] + logs[-1]["zo/flops_block2"]
    assert trainer.state.total_flos == pytest.approx(flops)


def test_lora_loss_falls(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _lora(llama())
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before, after, _ = _train_and_eval(model, _args(tmp_path, learning_rate=3e-2, zo_eps=1e-2))
    assert after < before - 0.05, (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_qlora_loss_falls(tmp_path: Path) -> None:
    model = _lora(quantized_llama(tmp_path / "base"))
    before, after, trainer = _train_and_eval(model, _args(tmp_path, learning_rate=3e-2, zo_eps=1e-2, max_steps=60))
    assert after < before - 0.05, (before, after)
    perturbed = {p.name for p in trainer.zo_estimator.parameters}
    assert perturbed and all("lora_" in name for name in perturbed)


def test_gradient_accumulation_averages_micro_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = _args(tmp_path, max_steps=3, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    trainer = ZOSplitTrainer(model=llama(), args=args, train_dataset=pattern_dataset())
    trainer.train()
    history = trainer.zo_optimizer.history
    assert len(history) == 3 and all(len(u.step_seeds) == 2 for u in history)
    assert len({s for u in history for s in u.step_seeds}) == 6


class _KillAt(TrainerCallback):
    """Stops training right after a given step, like a job killed after writing its checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    def run(out: str, resume: bool, kill_at: int | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = llama()
        args = _args(tmp_path, output_dir=str(tmp_path / out), max_steps=6, save_strategy="steps", save_steps=3,
                     per_device_train_batch_size=8, lr_scheduler_type="linear")
        callbacks = [_KillAt(kill_at)] if kill_at else None
        trainer = ZOSplitTrainer(model=model, args=args, train_dataset=pattern_dataset(), callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return {k: v.clone() for k, v in model.state_dict().items()}

    uninterrupted = run("a", False)
    interrupted = run("b", False, kill_at=3)
    assert not torch.equal(interrupted["model.norm.weight"], uninterrupted["model.norm.weight"])
    resumed = run("b", True)
    for name, value in uninterrupted.items():
        assert torch.equal(value, resumed[name]), name
    state = torch.load(tmp_path / "b" / "checkpoint-6" / "optimizer.pt", weights_only=False)
    assert len(state["zo_history"]) == 6


def test_compute_loss_func_sees_labels_in_every_forward(tmp_path: Path) -> None:
    """Trainer.compute_loss pops "labels" when `compute_loss_func` is set; each ZO forward must still get them."""
    seen: list[bool] = []

    def loss_func(outputs: object, labels: torch.Tensor | None, num_items_in_batch: object = None) -> torch.Tensor:
        seen.append(labels is not None)
        logits = outputs.logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    trainer = ZOSplitTrainer(model=llama(), args=_args(tmp_path, max_steps=1, zo_p2=2),
                             train_dataset=pattern_dataset(8), compute_loss_func=loss_func)
    trainer.train()
    assert len(seen) >= 2 * 2 and all(seen)  # at least the 2·P1·P2 block-2 losses


def test_accepts_plain_training_arguments(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             per_device_train_batch_size=4, disable_tqdm=True)
    trainer = ZOSplitTrainer(model=llama(), args=args, train_dataset=pattern_dataset(8))
    assert isinstance(trainer.args, ZOConfig) and trainer.args.max_grad_norm == 0.0
    trainer.train()
    assert isinstance(trainer.zo_optimizer, ZOOptimizer)
    predictions = trainer.predict(pattern_dataset(4))
    assert predictions.predictions.shape[0] == 4


def test_ignores_foreign_optimizer_with_a_warning(tmp_path: Path) -> None:
    # A Trainer script's optimizers=(opt, scheduler) cannot drive ZO steps: both are dropped, each named.
    model = llama()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="optimizers: the given SGD is ignored") as caught:
        trainer = ZOSplitTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=pattern_dataset(8),
                                 optimizers=(sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1.0)))
    assert any("LambdaLR is ignored" in str(w.message) for w in caught)
    trainer.train()
    assert isinstance(trainer.zo_optimizer, ZOOptimizer) and len(trainer.zo_optimizer.history) == 1


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"zo_eps": 0.0}, "zo_eps"),
        ({"zo_eps": -1e-3}, "zo_eps"),
        ({"zo_p1": 0}, "zo_p1"),
        ({"zo_p2": 0}, "zo_p2"),
        ({"zo_split": "middle"}, "zo_split"),
        ({"zo_split": "1.5"}, "zo_split"),
        ({"zo_split": "0"}, "zo_split"),
        ({"zo_perturbation": "uniform"}, "zo_perturbation"),
        ({"zo_difference": "backward"}, "zo_difference"),
        ({"fp16": True}, "fp16"),
        ({"deepspeed": {"zero_optimization": {"stage": 2}}}, "deepspeed"),
        ({"fsdp": "full_shard"}, "fsdp"),
        ({"max_grad_norm": 1.0}, "max_grad_norm"),
        ({"average_tokens_across_devices": True}, "average_tokens_across_devices"),
    ],
)
def test_invalid_config_names_the_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        ZOConfig(output_dir="unused", report_to=[], **overrides)


def test_split_beyond_the_stack_names_the_flag(tmp_path: Path) -> None:
    trainer = ZOSplitTrainer(model=llama(), args=_args(tmp_path, max_steps=1, zo_split="7"),
                             train_dataset=pattern_dataset(8))
    with pytest.raises(ValueError, match="zo_split=7"):
        trainer.train()


@pytest.mark.slow
def test_ddp_replicas_end_identical(tmp_path: Path) -> None:
    launch_two_processes(REPO / "tests" / "ddp_train_script.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 4
