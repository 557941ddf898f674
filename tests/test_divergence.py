"""Silent NaN models: non-finite settings are refused by name; a run that breaks its model stops loudly and
saves nothing over the last good checkpoint; the logged loss ignores dropped directions; odd settings warn."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.engine import DivergenceError, ZOEstimator, ZOSettings
from hf_fedzo.federation import FederatedServer, ZOClient
from hf_fedzo.federation.protocol import LogRecord
from tests.federation_setup import batch_loss, client_data, config, tiny_model
from tests.test_trainer import pattern_dataset
from tests.tiny_models import llama


def _args(tmp_path: Path, **overrides: object) -> ZOConfig:
    kw: dict[str, object] = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                                 learning_rate=1e-3, zo_eps=1e-3, zo_p2=2, zo_split="none", report_to=[],
                                 use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1)
    return ZOConfig(**(kw | overrides))


@pytest.mark.parametrize("name", ["learning_rate", "weight_decay", "zo_eps"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_zo_config_refuses_non_finite_values_by_name(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        _args(tmp_path, **{name: value})


@pytest.mark.parametrize("name", ["learning_rate", "weight_decay", "zo_eps", "trim_fraction", "dirichlet_alpha",
                                  "flop_budget", "max_norm_ratio"])
def test_federation_config_refuses_non_finite_values_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        config(**{name: math.nan})


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = _args(tmp_path, learning_rate=1e3, save_strategy="steps", save_steps=1, max_steps=40)
    trainer = ZOSplitTrainer(model=llama(), args=args, train_dataset=pattern_dataset())
    with pytest.raises(DivergenceError, match=r"step \d+: .*smaller --learning_rate") as info:
        trainer.train()
    step = int(str(info.value).split()[1].rstrip(":"))
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "out").glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) < step  # nothing saved once the loss went flat
    if "one saved at step" in str(info.value):
        since = int(str(info.value).split("one saved at step ")[1].split(" ")[0].rstrip(","))
        assert max(checkpoints) <= since  # the message names the last checkpoint that may hold the broken model
    saved = torch.load(tmp_path / "out" / f"checkpoint-{max(checkpoints)}" / "optimizer.pt", weights_only=False)
    assert saved["zo_history"]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / f"checkpoint-{max(checkpoints)}" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_saturated_model_stops_instead_of_training_on_zero_gradients(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = llama()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every perturbation leaves the loss unchanged: projected gradients are all zero
    trainer = ZOSplitTrainer(model=model, args=_args(tmp_path, max_steps=40, zo_eps=1e-30),
                             train_dataset=pattern_dataset())
    with pytest.raises(DivergenceError, match="no perturbation has changed the loss"):
        trainer.train()


def test_logged_loss_is_the_mean_of_the_finite_losses() -> None:
    torch.manual_seed(0)
    model = llama()
    calls = iter(range(1000))

    def loss_fn() -> torch.Tensor:
        index = next(calls)
        return torch.tensor(float("nan") if index == 0 else float(index))

    estimator = ZOEstimator(model, ZOSettings(eps=1e-3, p1=1, p2=2, split="none"))
    ids = torch.tensor([[5, 6, 7, 8]])
    estimator.prepare(lambda: model(input_ids=ids, labels=ids).loss)
    estimate = estimator.estimate(loss_fn, 1)
    assert estimate.extras["nonfinite_scalars"] == 1
    assert estimate.loss == pytest.approx((1 + 2 + 3) / 3)  # the NaN direction is dropped, not averaged in


def test_trainer_logs_finite_loss_and_dropped_count(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = ZOSplitTrainer(model=llama(), args=_args(tmp_path, max_steps=2), train_dataset=pattern_dataset())
    original = trainer.compute_loss
    count = iter(range(1000))

    def flaky(*args: object, **kwargs: object) -> torch.Tensor:
        loss = original(*args, **kwargs)
        return loss * float("nan") if next(count) % 4 == 0 else loss

    trainer.compute_loss = flaky  # type: ignore[method-assign]
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(e["loss"] > 1.0 for e in logged)
    assert all(e["zo/nonfinite_scalars"] >= 1 for e in logged)
    assert trainer.state.log_history[-1]["train_loss"] > 1.0


def test_federation_replay_that_breaks_the_model_stops() -> None:
    cfg = config(learning_rate=1e19)
    server = FederatedServer(cfg)
    client = ZOClient(tiny_model(), batch_loss)
    batch = client_data()[0].round_batches(0, 0, 0, 1, 4)[0]
    from hf_fedzo.engine import ZOUpdate

    update = ZOUpdate((1,), (((1e19, 1e19),),), 1e19, 0.0)
    with pytest.raises(DivergenceError, match=r"round 0: .*non-finite"):
        client.replay([LogRecord(0, update)], 0, server.settings, batch)


def test_odd_settings_warn_and_frozen_models_get_a_clear_message(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="zo_eps=2.0 is larger than typical weights"):
        _args(tmp_path, zo_eps=2.0)
    with pytest.warns(UserWarning, match="forwards"):
        _args(tmp_path, zo_p1=100, zo_p2=100)
    with pytest.warns(UserWarning, match="zo_eps=2.0"):
        config(zo_eps=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _args(tmp_path)
    model = llama()
    model.requires_grad_(False)
    trainer = ZOSplitTrainer(model=model, args=_args(tmp_path), train_dataset=pattern_dataset())
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainer.train()
