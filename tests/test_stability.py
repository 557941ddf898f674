"""Step control (--zo_clip): off is bit-identical, on bounds every applied scalar, and replays need nothing more."""

from __future__ import annotations

import math

import pytest
import torch

from hf_fedzo import ZOConfig
from hf_fedzo.engine import (
    ZOEstimator,
    ZOOptimizer,
    ZOSettings,
    apply_updates,
    clip_scalars,
    clip_threshold,
    recent_scalars,
)
from hf_fedzo.engine.stability import MIN_HISTORY
from hf_fedzo.federation import simulate_federation
from hf_fedzo.federation.server import FederatedServer
from tests import federation_setup as fed
from tests.tiny_models import llama, random_batch


def test_threshold_arithmetic() -> None:
    records = [[[1.0, -2.0]], [[3.0]], [[-4.0, 5.0]]]
    assert recent_scalars(records, window=4) == [-2.0, 3.0, -4.0, 5.0]
    assert recent_scalars(records) == [1.0, -2.0, 3.0, -4.0, 5.0]
    assert clip_threshold([1.0] * (MIN_HISTORY - 1), 3.0) is None  # too little history to know the scale
    assert clip_threshold([2.0, -2.0] * MIN_HISTORY, 0.0) is None  # off
    assert clip_threshold([2.0, -2.0] * MIN_HISTORY, 3.0) == pytest.approx(6.0)
    clipped, count = clip_scalars(torch.tensor([[1.0, -7.0, 9.0]]), 6.0)
    assert clipped.tolist() == [[1.0, -6.0, 6.0]] and count == 2
    same = torch.tensor([[100.0]])
    assert clip_scalars(same, None) == (same, 0)


def _train(clip_factor: float, steps: int = 24, lr: float = 1e-2) -> tuple[torch.nn.Module, ZOOptimizer]:
    torch.manual_seed(0)
    model = llama()
    estimator = ZOEstimator(model, ZOSettings(eps=1e-3, p1=1, p2=2, split=2))
    optimizer = ZOOptimizer(list(model.parameters()), estimator, lr=lr, clip_factor=clip_factor)
    for step in range(steps):
        batch = random_batch("llama", seed=step)
        optimizer.accumulate(estimator.estimate(lambda b=batch: model(**b).loss, step))
        optimizer.step()
    return model, optimizer


def test_clipping_off_or_never_reached_is_bit_identical() -> None:
    reference, plain = _train(0.0)
    never, loose = _train(1e12)  # the clipping code runs, and never cuts
    assert loose.clipped_scalars == 0 and loose.history == plain.history
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), never.parameters(), strict=True))


def test_clipping_bounds_each_scalar_and_replays_exactly() -> None:
    factor = 0.8
    model, optimizer = _train(factor)
    assert optimizer.clipped_scalars > 0
    for index, update in enumerate(optimizer.history):
        threshold = clip_threshold(recent_scalars([u.scalars for u in optimizer.history[:index]]), factor)
        if threshold is not None:
            assert max(abs(g) for m in update.scalars for row in m for g in row) <= threshold * (1 + 1e-6)
    # The history holds what was applied: replaying it onto the initial weights rebuilds the model.
    torch.manual_seed(0)
    rebuilt = llama()
    estimator = ZOEstimator(rebuilt, ZOSettings(eps=1e-3, p1=1, p2=2, split=2))
    estimator.prepare(lambda: rebuilt(**random_batch("llama")).loss)
    apply_updates(estimator, optimizer.history, retrace=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), rebuilt.parameters(), strict=True))


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_bad_clip_values_are_refused_by_name(value: float, tmp_path) -> None:
    with pytest.raises(ValueError, match="zo_clip"):
        ZOConfig(output_dir=str(tmp_path), zo_clip=value)
    with pytest.raises(ValueError, match="zo_clip"):
        fed.config(zo_clip=value)
    with pytest.raises(ValueError, match="clip_factor"):
        ZOOptimizer([torch.nn.Parameter(torch.zeros(1))], None, clip_factor=value)  # type: ignore[arg-type]


def _federate(**overrides: object) -> tuple[torch.nn.Module, list]:
    model = fed.tiny_model()
    result = simulate_federation(model, fed.batch_loss, fed.client_data(), fed.config(rounds=6, **overrides))
    return model, result.rounds


def test_server_clipping_off_is_bit_identical_and_on_is_resumable() -> None:
    plain, _ = _federate()
    loose, _ = _federate(zo_clip=1e12)
    assert fed.checksum(plain) == fed.checksum(loose)

    config = fed.config(rounds=6, zo_clip=0.5, learning_rate=2e-2)
    clipped_model, _ = _federate(zo_clip=0.5, learning_rate=2e-2)
    assert fed.checksum(clipped_model) != fed.checksum(plain)
    # A server rebuilt from the saved log clips the next records exactly as the original did.
    server = FederatedServer(config)
    reports = {}
    for round_id in range(config.rounds):
        server.open_round(round_id)
        reports[round_id] = [_fake_report(round_id, k, config) for k in server.current.sampled]
        for data in reports[round_id]:
            server.receive(data)
        server.finish_round()
        if round_id == 3:
            saved = server.state_dict()
    assert server.clipped_scalars > 0
    resumed = FederatedServer(config)
    resumed.load_state_dict(saved)
    for round_id in range(4, config.rounds):
        resumed.open_round(round_id)
        for data in reports[round_id]:
            resumed.receive(data)
        resumed.finish_round()
    assert resumed.state_dict() == server.state_dict()


def _fake_report(round_id: int, client_id: int, config) -> bytes:
    import numpy as np

    from hf_fedzo.federation.protocol import ClientReport, encode

    generator = np.random.default_rng(round_id * 100 + client_id)
    scalars = generator.standard_normal(config.round_settings().scalar_shape).astype(np.float32)
    scalars[0, 0, 0] *= 50 if round_id % 2 else 1  # an outlier every other round
    return encode(ClientReport(round_id, client_id, 10, scalars, 1.0, 1.0))


def test_round_records_count_the_scalars_the_server_clipped() -> None:
    """A clipped federation says so, per round, in its records; one that never clips adds nothing to them."""
    from hf_fedzo.federation.records import RoundRecord

    _, clipped_rounds = _federate(zo_clip=0.5, learning_rate=2e-2)
    assert sum(r.zo_clipped for r in clipped_rounds) > 0
    for record in clipped_rounds:
        assert RoundRecord.from_dict(record.to_dict()) == record
        assert ("zo_clipped" in record.to_dict()) == (record.zo_clipped > 0)
    _, loose_rounds = _federate(zo_clip=1e12)
    assert all(r.zo_clipped == 0 and "zo_clipped" not in r.to_dict() for r in loose_rounds)
