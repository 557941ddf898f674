"""Heterogeneous federations: budgets, block allocation, active subsets, per-group aggregation, exact replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_fedzo.engine import SeedScope
from hf_fedzo.federation import ClientReport, ZOClient, simulate_federation
from hf_fedzo.federation.aggregation import aggregate_round
from hf_fedzo.federation.allocation import AllocationError, allocate, check_budgets
from hf_fedzo.federation.budgets import ActiveSet, ClientBudget, LayerCosts, resolve_budgets
from hf_fedzo.federation.client_lr import CLIENT_LR_POLICIES
from tests.federation_setup import batch_loss, checksum, client_data, config, replayed_from_state, tiny_model


def _costs(num_layers: int = 8, split: int | None = 6) -> LayerCosts:
    n = num_layers
    return LayerCosts(n, split, (0, *[100] * n, 50), (1.0,) * (n + 2), (0, *[10] * n, 5), (0.01,) * (n + 2),
                      p1=1, p2=4, sides=2)


def _probe_costs() -> tuple[ZOClient, LayerCosts]:
    cfg = config()
    client = ZOClient(tiny_model(), batch_loss)
    probe = client_data()[0].round_batches(cfg.seed, 0, 0, 1, cfg.batch_size)[0]
    return client, client.layer_costs(cfg.round_settings(), probe)


def test_active_set_ids_round_trip() -> None:
    active = ActiveSet(frozenset({-1, 0, 1, 2, 5, 8}))
    assert active.id == "-1:2,5,8"
    assert ActiveSet.parse(active.id, 8) == active
    with pytest.raises(ValueError, match="outside"):
        ActiveSet.parse("3:9", 8)


@pytest.mark.parametrize("policy", ["none", "top", "zorba"])
def test_allocation_respects_every_budget(policy: str) -> None:
    costs = _costs()
    full = costs.step_flops(ActiveSet.window(-1, 8))
    budgets = [ClientBudget(flops_per_step=full * f) for f in (1.0, 0.62, 0.8, 0.65, 1.0, 0.7)]
    if policy == "none":
        budgets = [ClientBudget(flops_per_step=full)] * 6
    allocation = allocate(policy, list(range(6)), budgets, costs)
    for k, active in allocation.items():
        assert costs.step_flops(active) <= budgets[k].flops_per_step
        assert costs.dimension(active) > 0
    if policy != "none":
        assert len({a.id for a in allocation.values()}) > 1  # the weak clients really got less
        assert max(allocation[1].positions) == 8 or policy == "zorba"


def test_top_gives_the_deepest_affordable_suffix_and_zorba_keeps_coverage() -> None:
    costs = _costs()
    weak = ClientBudget(flops_per_step=costs.step_flops(costs.top(0.25)))
    top = allocate("top", [0, 1], [ClientBudget(), weak], costs)
    assert top[0] == ActiveSet.window(-1, 8) and top[1] == costs.top(0.25)
    zorba = allocate("zorba", [0, 1, 2], [ClientBudget(), weak, weak], costs, min_coverage=1)
    for p in costs.trainable_positions():
        assert sum(p in a.positions for a in zorba.values()) >= 1
    assert costs.dimension(zorba[0]) < costs.dimension(top[0])  # the strong client left the top to the weak ones


def test_budgets_no_allocation_can_meet_name_the_client(tmp_path: Path) -> None:
    costs = _costs()
    tiny = ClientBudget(flops_per_step=1.0)
    with pytest.raises(AllocationError, match=r"client 2: budget"):
        allocate("top", [0, 2], [ClientBudget(), ClientBudget(), tiny], costs)
    with pytest.raises(AllocationError, match=r"client 1: budget .* full model"):
        allocate("none", [0, 1], [ClientBudget(), ClientBudget(flops_per_step=1e3)], costs)
    weak = ClientBudget(flops_per_step=costs.step_flops(costs.top(0.25)))
    with pytest.raises(AllocationError, match=r"position 0 is within the budget of 0 client\(s\)"):
        check_budgets("zorba", [weak, weak], costs, min_coverage=1)
    with pytest.raises(AllocationError, match=r"client 1: budget"):
        check_budgets("top", [ClientBudget(), tiny], costs)
    poor = tmp_path / "poor.json"
    poor.write_text(json.dumps({"clients": {"0": {"flops_per_step": 1.0}}}))
    with pytest.raises(AllocationError, match=r"client 0: budget"):  # at the start of a run, before any round
        simulate_federation(tiny_model(), batch_loss, client_data(), config(block_allocation="top",
                                                                            client_budgets=str(poor)))
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"clients": {"3": {"flops_per_step": -1}}}))
    with pytest.raises(ValueError, match=r"budgets\.json client 3: flops_per_step must be"):
        resolve_budgets(str(path), 4, costs)
    with pytest.raises(ValueError, match="neither a file nor a profile"):
        resolve_budgets("no-such-profile", 4, costs)


def test_measured_costs_follow_the_caching() -> None:
    _, costs = _probe_costs()
    assert costs.num_layers == 4 and len(costs.flops) == 6
    full = costs.step_flops(ActiveSet.window(-1, 4))
    assert costs.step_flops(costs.top(0.25)) < full


def test_an_inactive_parameter_is_bit_identical_after_local_steps_and_costs_no_passes() -> None:
    cfg = config(local_steps=3)
    client = ZOClient(tiny_model(), batch_loss)
    batches = client_data()[0].round_batches(cfg.seed, 0, 0, 3, cfg.batch_size)
    settings = cfg.round_settings()
    client.run_local_steps(0, cfg.seed, 0, settings, batches)  # prepares the plan
    estimator = client.estimator
    assert estimator is not None and estimator.plan is not None
    active = ActiveSet.window(3, 4)
    indices = set(active.parameter_indices(estimator.plan.positions))
    before = {p.index: p.tensor.detach().clone() for p in estimator.parameters}
    seen: dict[int, torch.Tensor] = {}
    original = estimator.apply_update

    def spy(*args: object, **kwargs: object) -> None:  # the weights between local steps, before the restore
        original(*args, **kwargs)  # type: ignore[arg-type]
        seen.update({p.index: p.tensor.detach().clone() for p in estimator.parameters})

    estimator.apply_update = spy  # type: ignore[method-assign]
    _, _, work = client.run_local_steps(0, cfg.seed, 0, settings, batches, active.id)
    estimator.apply_update = original  # type: ignore[method-assign]
    moved = [i for i in indices if not torch.equal(seen[i], before[i])]
    assert moved, "the active tensors must move between local steps"
    for p in estimator.parameters:
        if p.index not in indices:
            assert torch.equal(seen[p.index], before[p.index]), p.name
    _, _, full = client.run_local_steps(0, cfg.seed, 0, settings, batches)
    assert work.forwards_block1 == 3 * 1  # the frozen prefix runs once per step, not twice
    assert work.flops < full.flops


def test_per_group_aggregation_matches_a_hand_computation() -> None:
    settings = config(local_steps=1).round_settings()
    shape = settings.scalar_shape

    def report(k: int, value: float, n: int) -> ClientReport:
        return ClientReport(0, k, n, np.full(shape, value, dtype=np.float32), 1.0, 1.0)

    reports = [report(0, 1.0, 10), report(1, 3.0, 30), report(2, 5.0, 60)]
    active = {0: ActiveSet.window(-1, 4), 1: ActiveSet.window(2, 4), 2: ActiveSet.window(4, 4)}
    records = aggregate_round(0, reports, settings, 7, active=active)
    by_id = {r.active: np.asarray(r.update.scalars)[0, 0, 0] for r in records}
    assert set(by_id) == {"-1:1", "2:3", "4"}
    assert by_id["-1:1"] == pytest.approx(1.0)  # client 0 alone
    assert by_id["2:3"] == pytest.approx((10 * 1 + 30 * 3) / 40)  # weights renormalised over clients 0, 1
    assert by_id["4"] == pytest.approx((10 * 1 + 30 * 3 + 60 * 5) / 100)
    assert all(r.update.step_seeds == (SeedScope(7, 0, 0).step_seed(0),) for r in records)


def _hetero(**overrides: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = dict(block_allocation="top", client_budgets="half-quarter", rounds=4)
    return config(**(values | overrides))


def test_replay_of_a_heterogeneous_log_is_bit_exact(tmp_path: Path) -> None:
    cfg = _hetero()
    model = tiny_model()
    simulate_federation(model, batch_loss, client_data(), cfg, output_dir=tmp_path)
    replica = replayed_from_state(cfg, tmp_path, tiny_model())
    for a, b in zip(model.parameters(), replica.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("policy", ["top", "zorba"])
def test_heterogeneous_resume_after_a_kill_is_bit_exact(tmp_path: Path, policy: str) -> None:
    cfg = _hetero(block_allocation=policy, client_lr_policy="fedmezo")
    straight = tiny_model()
    simulate_federation(straight, batch_loss, client_data(), cfg, output_dir=tmp_path / "a")

    def crash(record):  # type: ignore[no-untyped-def]
        if record.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_federation(tiny_model(), batch_loss, client_data(), cfg, output_dir=tmp_path / "b", on_round_end=crash)
    resumed = tiny_model()
    simulate_federation(resumed, batch_loss, client_data(), cfg, output_dir=tmp_path / "b")
    assert checksum(resumed) == checksum(straight)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fedmezo_client_lr_follows_the_reported_scalars() -> None:
    policy = CLIENT_LR_POLICIES["fedmezo"]
    stats = {0: {"scalar_rms": 1.0}, 1: {"scalar_rms": 2.0}, 2: {"scalar_rms": 4.0}}
    assert policy(0, 0.1, stats) == pytest.approx(0.2)
    assert policy(1, 0.1, stats) == pytest.approx(0.1)
    assert policy(2, 0.1, stats) == pytest.approx(0.05)
    assert policy(9, 0.1, stats) == 0.1  # never reported
    assert policy(0, 0.1, {0: {"scalar_rms": 1e-9}, 1: {"scalar_rms": 1.0}}) == pytest.approx(0.4)  # clipped


def test_heterogeneous_flags_are_validated() -> None:
    with pytest.raises(ValueError, match="block_allocation must be one of"):
        config(block_allocation="random")
    with pytest.raises(ValueError, match="shared seeds"):
        config(block_allocation="top", per_client_seeds=True)
    assert "block_allocation" not in config().to_dict()  # a homogeneous run keeps its fingerprint


def test_frozen_layer_caching_gives_the_losses_of_full_forwards(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached activation path (stem, moved cut) is an optimisation only: same scalars as uncached forwards."""
    from hf_fedzo.engine import ZOEstimator

    cfg = config()
    client = ZOClient(tiny_model(), batch_loss)
    batch = client_data()[0].round_batches(cfg.seed, 0, 0, 1, cfg.batch_size)[0]
    estimator = ZOEstimator(client.model, cfg.round_settings().zo)
    estimator.prepare(lambda: batch_loss(client.model, batch))
    assert estimator.plan is not None
    for window in (ActiveSet.window(1, 4), ActiveSet.window(3, 4)):  # below the split at 2, and above it
        indices = window.parameter_indices(estimator.plan.positions)
        with estimator.restricted(indices):
            assert estimator.frozen_layers() > 0
            start = [p.tensor.detach().clone() for p in estimator.parameters]
            cached = estimator.estimate(lambda: batch_loss(client.model, batch), 123)
            with torch.no_grad():  # undo the restore's rounding residue
                for p, saved in zip(estimator.parameters, start, strict=True):
                    p.tensor.copy_(saved)
            with monkeypatch.context() as patch:
                patch.setattr(estimator, "frozen_layers", lambda: 0)
                uncached = estimator.estimate(lambda: batch_loss(client.model, batch), 123)
        assert torch.equal(cached.scalars, uncached.scalars)
        assert cached.work.flops < uncached.work.flops


@pytest.mark.slow
def test_two_process_heterogeneous_simulation_matches_one_process(tmp_path: Path) -> None:
    from tests.launch import REPO, launch_two_processes

    overrides = {"block_allocation": "zorba", "client_budgets": "half-quarter", "client_lr_policy": "fedmezo",
                 "local_steps": 2}
    launch_two_processes(REPO / "tests" / "federation_script.py", str(tmp_path), json.dumps(overrides))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0] == ranks[1]
    single = tiny_model()
    result = simulate_federation(single, batch_loss, client_data(), config(**overrides))
    assert checksum(single) == ranks[0]["checksum"]
    assert [{k: v for k, v in r.to_dict().items() if k not in ("seconds", "accounting")}
            for r in result.rounds] == ranks[0]["rounds"]
    accounting = [{str(k): {n: x for n, x in a.items() if n != "peak_memory_mib"} for k, a in r.accounting.items()}
                  for r in result.rounds]
    assert accounting == ranks[0]["accounting"]
    assert len({a["active_id"] for r in accounting for a in r.values()}) > 1  # really heterogeneous


def test_the_federated_recipe_takes_the_heterogeneous_flags() -> None:
    from hf_fedzo.federation import FederationConfig
    from hf_fedzo.runs import recipe_parser

    parser = recipe_parser((FederationConfig,))
    (parsed,) = parser.parse_args_into_dataclasses(args=[
        "--client_budgets", "half-quarter", "--block_allocation", "zorba", "--client_lr_policy", "fedmezo",
        "--zorba_min_coverage", "2", "--frozen_dtype", "bfloat16"])
    assert (parsed.client_budgets, parsed.block_allocation, parsed.client_lr_policy, parsed.zorba_min_coverage,
            parsed.frozen_dtype) == ("half-quarter", "zorba", "fedmezo", 2, "bfloat16")
    assert parsed.heterogeneous and parsed.to_dict()["block_allocation"] == "zorba"


def test_zorba_trims_past_an_untrainable_head() -> None:
    """LoRA on the layers only: the head has nothing trainable, and must not block the strong clients' trim."""
    n = 8
    costs = LayerCosts(n, 6, (0, *[100] * n, 400), (1.0,) * (n + 2), (0, *[10] * n, 0), (0.01,) * (n + 2),
                       p1=1, p2=4, sides=2)
    weak = ClientBudget(flops_per_step=costs.step_flops(costs.top(0.25)))
    budgets = [ClientBudget(), ClientBudget(), weak, weak]
    top, zorba = allocate("top", range(4), budgets, costs), allocate("zorba", range(4), budgets, costs)
    assert costs.dimension(zorba[0]) < costs.dimension(top[0])
    assert all(sum(p in a.positions for a in zorba.values()) >= 1 for p in costs.trainable_positions())
