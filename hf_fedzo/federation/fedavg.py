"""First-order FedAvg over the trainable tensors (LoRA adapters), with AdamW and backprop: the baseline.

Same clients, sampling, drop-outs, batches, accounting and round loop
(:func:`~hf_fedzo.federation.rounds.run_rounds`) as the ZO simulation, but each client downloads the
trainable tensors, runs ``local_steps`` AdamW steps with backward passes and uploads its tensor delta; the
exchange averages the deltas (weighted by examples) into the model. It is here to measure what the ZO
protocol saves: bytes on the wire (tensors instead of scalars) and memory (gradients and optimizer state).
Runs on one process and does not resume (its rounds are not a seed+scalar log).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from hf_fedzo.engine import WorkCounters, trainable_tensors
from hf_fedzo.engine.split import FlopCounter, find_layer_stack
from hf_fedzo.federation.client import Batch, BatchLoss
from hf_fedzo.federation.clients import ClientData
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.records import ClientRecord, Exchanged, FederationResult, RoundRecord
from hf_fedzo.federation.results import RoundPlot
from hf_fedzo.federation.rounds import Exchange, run_rounds
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.progress import progress_bar


def local_delta(model: nn.Module, batch_loss: BatchLoss, batches: Sequence[Batch], lr: float,
                counter: FlopCounter, on_step: Callable[[], None] | None = None,
                ) -> tuple[dict[str, torch.Tensor], float, int]:
    """AdamW steps from the global tensors; returns (local − global, mean loss, forward FLOPs) and restores."""
    params = trainable_tensors(model)
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
        if on_step is not None:
            on_step()
    flops = counter.take()
    delta = {name: (p.detach() - start[name]).contiguous() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(start[name])
    optimizer.zero_grad(set_to_none=True)
    return delta, sum(losses) / len(losses), flops


class FedAvgExchange(Exchange):
    """Tensors down, AdamW deltas up, their weighted mean applied to ``model``; nothing goes through the log."""

    resumable = False
    progress = True

    def __init__(self, model: nn.Module, batch_loss: BatchLoss, clients: Sequence[ClientData],
                 config: FederationConfig, client_lr: float, counter: FlopCounter) -> None:
        self.model, self.batch_loss, self.clients, self.config = model, batch_loss, clients, config
        self.client_lr, self.counter = client_lr, counter

    def exchange(self, server: FederatedServer, round_id: int, active: Sequence[int]) -> Exchanged:
        config = self.config
        download = save_tensors({n: p.detach().contiguous() for n, p in trainable_tensors(self.model).items()})
        out, uploads, losses, weights = Exchanged(), {}, [], []
        steps = progress_bar(total=len(active) * config.local_steps, desc=f"round {round_id + 1}", unit="step",
                             leave=False, enabled=self.progress)
        for k in active:
            batches = self.clients[k].round_batches(config.seed, round_id, k, config.local_steps, config.batch_size)
            delta, loss, flops = local_delta(self.model, self.batch_loss, batches, self.client_lr, self.counter,
                                             steps.update)
            uploads[k] = save_tensors(delta)
            losses.append(loss)
            weights.append(len(self.clients[k].examples) if config.weighting == "examples" else 1)
            work = WorkCounters(forwards_block2=config.local_steps, flops_block2=flops)
            out.clients.append(ClientRecord(k, len(download), bytes_up=len(uploads[k]), work=work))
        steps.close()
        trainable = trainable_tensors(self.model)
        with torch.no_grad():
            for k, weight in zip(active, weights, strict=True):
                for name, value in load_tensors(uploads[k]).items():
                    trainable[name].add_(value, alpha=weight / sum(weights))
        out.train_loss = sum(losses) / max(len(losses), 1)
        return out


def simulate_fedavg(model: nn.Module, batch_loss: BatchLoss, clients: Sequence[ClientData], config: FederationConfig,
                    *, client_lr: float | None = None, evaluate: Callable[[Any], Mapping[str, float]] | None = None,
                    output_dir: str | Path | None = None, run_info: Mapping[str, Any] | None = None,
                    on_round_end: Callable[[RoundRecord], None] | None = None,
                    plot: RoundPlot | None = None) -> FederationResult:
    """FedAvg rounds with the same sampling, drop-outs and batches as the ZO simulation of ``config``.

    ``client_lr`` defaults to ``config.fedavg_lr``.
    """
    lr = config.fedavg_lr if client_lr is None else client_lr
    _, layers = find_layer_stack(model, config.zo_layers_path)
    counter = FlopCounter(model, layers)

    def evaluate_model() -> Mapping[str, float]:
        model.eval()
        return evaluate(model)  # type: ignore[misc]

    try:
        # The server samples and drops clients; nothing of FedAvg goes through its log.
        return run_rounds(FederatedServer(config), FedAvgExchange(model, batch_loss, clients, config, lr, counter),
                          evaluate=None if evaluate is None else evaluate_model, output_dir=output_dir,
                          run_info=dict(run_info or {}) | {"method": "fedavg", "client_lr": lr},
                          on_round_end=on_round_end, plot=plot)
    finally:
        counter.remove()
