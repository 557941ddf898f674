"""Heterogeneous federations over Flower (needs the ``flower`` extra; skipped without it): the same allocation, log
and weights as the simulator, and budgets a node reports in its first reply."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("flwr")


import torch
from flwr.app import Context

from hf_fedzo.federation import ZOClient, simulate_federation
from hf_fedzo.integrations import flower
from tests.federation_setup import batch_loss, client_data
from tests.test_flower import (
    NUM_CLIENTS,
    LocalGrid,
    assert_same_weights,
    client_app,
    data_fn,
    fed_config,
    run_on_flower_engine,
    server_side,
    simulated,
    task_identity,  # noqa: F401 (a fixture)
)
from tests.test_frozen_precision import lora_model

HETERO: dict[str, Any] = {"block_allocation": "zorba", "client_budgets": "half-quarter", "client_lr_policy": "fedmezo",
                          "num_clients": 4, "clients_per_round": 3}


def test_in_process_heterogeneous_federation_matches_the_simulator(task_identity: None) -> None:  # noqa: F811
    cfg = fed_config(rounds=3, **HETERO)
    federation = server_side(cfg)
    result = federation.run(LocalGrid(client_app(), run_id=201, num_nodes=cfg.num_clients))
    reference, reference_rounds = simulated(cfg)
    assert_same_weights(federation.replica.model, reference)  # type: ignore[union-attr]
    assert [r.sampled for r in result.rounds] == [r.sampled for r in reference_rounds]
    assert [r.flops for r in result.rounds] == [r.flops for r in reference_rounds]
    ours = [{k: a["active_id"] for k, a in r.accounting.items()} for r in result.rounds]
    assert ours == [{k: a["active_id"] for k, a in r.accounting.items()} for r in reference_rounds]
    assert len({a for r in ours for a in r.values()}) > 1


def test_a_node_reported_budget_is_used_and_a_bad_one_ignores_the_node(task_identity: None) -> None:  # noqa: F811
    cfg = fed_config(rounds=1, num_clients=NUM_CLIENTS, clients_per_round=NUM_CLIENTS, block_allocation="top")
    grid = LocalGrid(client_app(), run_id=202)
    nodes = sorted(grid.contexts)
    federation = server_side(cfg, min_nodes=NUM_CLIENTS - 1, wait_for_nodes=1.0)
    costs = federation.replica.layer_costs(cfg.round_settings(), federation.probe)  # type: ignore[union-attr]
    weak = costs.step_flops(costs.top(0.25))
    grid.contexts[nodes[1]].node_config["budget-flops-per-step"] = float(weak)
    grid.contexts[nodes[2]].node_config["budget-flops-per-step"] = -5.0
    result = federation.run(grid)
    assert federation.server.budgets is not None
    assert federation.server.budgets[1].flops_per_step == weak
    assert nodes[2] in federation.ignored and 2 in result.rounds[0].unreachable
    assert result.rounds[0].accounting[1]["active_id"] == costs.top(0.25).id


def lora_model_fn(context: Context) -> tuple[torch.nn.Module, Any]:
    torch.set_num_threads(1)
    return lora_model(), batch_loss


def _lowering_federation(run_id: int, budgets: str) -> tuple[Any, Any, torch.nn.Module]:
    """A LoRA federation with frozen layers in bfloat16 whose nodes all say ``keep-full-precision = false`` (in
    this process they share one replica, as the clients of one device would)."""
    cfg = fed_config(rounds=3, num_clients=4, clients_per_round=3, block_allocation="top", client_budgets=budgets,
                     frozen_dtype="bfloat16")
    grid = LocalGrid(flower.make_client_app(lora_model_fn, data_fn), run_id=run_id, num_nodes=cfg.num_clients)
    for context in grid.contexts.values():
        context.node_config[flower.KEEP_FULL_PRECISION] = False
    probe = client_data(num_clients=cfg.num_clients)[0].round_batches(0, 0, 0, 1, cfg.batch_size)[0]
    federation = flower.FlowerFederation(cfg, replica=ZOClient(lora_model(), batch_loss), probe=probe,
                                         wait_for_nodes=5.0)
    result = federation.run(grid)
    reference = lora_model()
    simulate_federation(reference, batch_loss, client_data(num_clients=cfg.num_clients), cfg)
    return federation, result, reference


def test_nodes_that_drop_full_precision_match_the_simulator(task_identity: None) -> None:  # noqa: F811
    federation, result, reference = _lowering_federation(203, "all-quarter")  # every client trains the same top
    assert all(not r.failed and not r.unanswered for r in result.rounds), result.rounds
    assert_same_weights(federation.replica.model, reference)  # type: ignore[union-attr]


def test_a_node_that_dropped_full_precision_refuses_to_train_those_layers(task_identity: None) -> None:  # noqa: F811
    _, result, _ = _lowering_federation(204, "half-quarter")  # a strong client after a weak one, same process
    failures = [why for r in result.rounds for why in r.failed.values()]
    assert failures and all("keep_full_precision=False" in why for why in failures), failures


def test_flower_simulation_engine_matches_the_simulator_on_a_heterogeneous_run() -> None:
    cfg = fed_config(rounds=2, **HETERO)
    federation = run_on_flower_engine(cfg, cfg.num_clients, wait_for_nodes=180)
    reference, reference_rounds = simulated(cfg)
    assert all(not r.unreachable and not r.unanswered and not r.failed and not r.rejected
               for r in federation.result.rounds), federation.result.rounds
    assert [r.sampled for r in federation.result.rounds] == [r.sampled for r in reference_rounds]
    assert_same_weights(federation.replica.model, reference)  # type: ignore[union-attr]
