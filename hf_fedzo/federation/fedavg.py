"""First-order FedAvg over the trainable tensors (LoRA adapters), with AdamW and backprop: the baseline.

Same clients, sampling, drop-outs, batches and accounting as :func:`simulate_federation`, but each client
downloads the trainable tensors, runs ``local_steps`` AdamW steps with backward passes and uploads its
tensor delta; the server averages the deltas (weighted by examples). It is here to measure what the ZO
protocol saves: bytes on the wire (tensors instead of scalars) and memory (gradients and optimizer state).
Runs on one process and does not resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from hf_fedzo.engine.split import FlopCounter, find_layer_stack
from hf_fedzo.federation.client import BatchLoss
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.federation.simulation import ClientData, Evaluate, SimulationResult, write_results


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _local_delta(model: nn.Module, batch_loss: BatchLoss, batches: Sequence[Any], lr: float,
                 counter: FlopCounter) -> tuple[dict[str, torch.Tensor], float, int]:
    """AdamW steps from the global tensors; returns (local − global, mean loss, forward FLOPs) and restores."""
    params = _trainable(model)
    start = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=lr)
    model.train()
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    flops = counter.take()
    delta = {name: (p.detach() - start[name]).contiguous() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(start[name])
    optimizer.zero_grad(set_to_none=True)
    return delta, sum(losses) / len(losses), flops


def simulate_fedavg(model: nn.Module, batch_loss: BatchLoss, clients: Sequence[ClientData], config: FederationConfig,
                    *, client_lr: float = 1e-4, evaluate: Evaluate | None = None, output_dir: str | Path | None = None,
                    on_round_end: Callable[[dict[str, Any]], None] | None = None) -> SimulationResult:
    """FedAvg rounds with the same sampling, drop-outs and batches as the ZO simulation of ``config``."""
    server = FederatedServer(config)  # sampling and drop-outs only; nothing here goes through its log
    _, layers = find_layer_stack(model, None)
    counter = FlopCounter(model, layers)
    result, spent = SimulationResult(), 0
    try:
        for round_id in range(config.rounds):
            if config.budget_spent(spent):
                break
            started = time.perf_counter()
            sampled, dropped = server.open_round(round_id)
            active = [k for k in sampled if k not in dropped]
            download = save_tensors({n: p.detach().contiguous() for n, p in _trainable(model).items()})
            uploads, losses, weights, flops = {}, [], [], 0
            for k in active:
                batches = clients[k].round_batches(config.seed, round_id, k, config.local_steps, config.batch_size)
                delta, loss, client_flops = _local_delta(model, batch_loss, batches, client_lr, counter)
                uploads[k] = save_tensors(delta)
                losses.append(loss)
                weights.append(len(clients[k].examples) if config.weighting == "examples" else 1)
                flops += client_flops
            trainable = _trainable(model)
            with torch.no_grad():
                for k, weight in zip(active, weights, strict=True):
                    for name, value in load_tensors(uploads[k]).items():
                        trainable[name].add_(value, alpha=weight / sum(weights))
            server.finish_round()
            spent += flops
            record: dict[str, Any] = {
                "round": round_id, "sampled": sampled, "dropped": dropped, "rejected": {},
                "bytes_down": {str(k): len(download) for k in active},
                "bytes_up": {str(k): len(b) for k, b in uploads.items()},
                "forwards_block1": 0, "forwards_block2": len(active) * config.local_steps,
                "flops": flops, "cumulative_flops": spent, "train_loss": sum(losses) / max(len(losses), 1),
                "seconds": time.perf_counter() - started}
            if evaluate is not None and config.evaluation_due(round_id, spent):
                model.eval()
                record["eval"] = dict(evaluate(model))
            result.rounds.append(record)
            if on_round_end is not None:
                on_round_end(record)
    finally:
        counter.remove()
    evaluated = [r for r in result.rounds if "eval" in r]
    result.final_metrics = dict(evaluated[-1]["eval"]) if evaluated else {}
    if output_dir is not None:
        write_results(Path(output_dir), config, result, {"method": "fedavg", "client_lr": client_lr})
    return result
