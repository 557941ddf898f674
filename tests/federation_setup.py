"""A tiny federation shared by the federation tests and the 2-process script they launch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_fedzo.federation import ClientData, FederationConfig
from tests.tiny_models import VOCAB_SIZE, llama

SEQ = 10


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return llama()


def collate(rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor(list(rows), dtype=torch.long)
    return {"input_ids": ids, "labels": ids}


def batch_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(**batch).loss


def client_data(num_clients: int = 4, per_client: int = 12, seed: int = 0) -> list[ClientData]:
    """Each client repeats its own token pattern (non-IID), so local losses differ across clients."""
    generator = torch.Generator().manual_seed(seed)
    clients = []
    for client in range(num_clients):
        start = 3 + 7 * client
        rows = [[(start + (i + j) % 5) % VOCAB_SIZE if torch.rand(1, generator=generator) < 0.9
                 else int(torch.randint(3, VOCAB_SIZE, (1,), generator=generator)) for j in range(SEQ)]
                for i in range(per_client + client)]
        clients.append(ClientData(rows, collate))
    return clients


def config(**overrides: Any) -> FederationConfig:
    values: dict[str, Any] = dict(num_clients=4, clients_per_round=3, rounds=4, local_steps=2, batch_size=4,
                                  learning_rate=5e-3, zo_eps=1e-3, zo_p1=1, zo_p2=2, zo_split="2",
                                  partition="iid", eval_every=2, seed=7)
    return FederationConfig(**(values | overrides))


def replayed_from_state(cfg: FederationConfig, output_dir: Path, fresh: nn.Module) -> nn.Module:
    """``fresh`` after replaying the log a finished run in ``output_dir`` saved (what any party can rebuild)."""
    from hf_fedzo.federation import FederatedServer, ZOClient

    state = json.loads((output_dir / "federation_state.json").read_text())
    assert any("active" in r for r in state["server"]["log"]) == cfg.heterogeneous
    server = FederatedServer(cfg)
    server.load_state_dict(state["server"])
    probe = client_data()[0].round_batches(cfg.seed, 0, 0, 1, cfg.batch_size)[0]
    ZOClient(fresh, batch_loss).replay(server.log, server.completed_round, cfg.round_settings(), probe)
    return fresh


def checksum(model: nn.Module) -> list[float]:
    return [float(p.detach().double().sum()) for p in model.parameters()]
