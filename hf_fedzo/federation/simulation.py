"""Simulating a federation on one or several processes with ``accelerate``.

Every process holds one model replica at the global state. Each round the sampled clients are spread
over the processes (``split_between_processes``); each client's local ZO steps run on its process's
replica, which is put back afterwards. The serialized reports are gathered (``gather_object``) and every
process validates and aggregates them identically, then replays the round's log records, so the
replicas stay bit-identical without any weights moving. The main process evaluates and writes the
outputs. The round loop itself (resume, budget, evaluation, state file, results) is
:func:`~hf_fedzo.federation.rounds.run_rounds`; this module is its accelerate :class:`AccelerateExchange`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_fedzo.federation.client import Batch, BatchLoss, ZOClient
from hf_fedzo.federation.clients import ClientData
from hf_fedzo.federation.config import METHODS, FederationConfig
from hf_fedzo.federation.fedavg import simulate_fedavg
from hf_fedzo.federation.protocol import ClientReport, LogRecord, RoundInstruction, decode, encode
from hf_fedzo.federation.records import ClientRecord, Exchanged, FederationResult, RoundRecord
from hf_fedzo.federation.results import RoundPlot
from hf_fedzo.federation.rounds import Exchange, run_rounds
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.progress import progress_bar

Evaluate = Callable[[Any], Mapping[str, float]]


class AccelerateExchange(Exchange):
    """The simulator's round trip: the active clients run on this process's replica, spread over processes.

    Args:
        replica: this process's model replica at the global state.
        clients: every client's data.
        config: the federation's settings (its seed orders each client's batches).
        probe: one collated batch, for the replica's first replay (it traces the block plan).
    """

    progress = True

    def __init__(self, replica: ZOClient, clients: Sequence[ClientData], config: FederationConfig,
                 probe: Batch) -> None:
        from accelerate import PartialState

        self.state = PartialState()
        self.replica, self.clients, self.config, self.probe = replica, clients, config, probe
        self.settings = config.round_settings()
        self.is_main_process = self.state.is_main_process

    def exchange(self, server: FederatedServer, round_id: int, active: Sequence[int]) -> Exchanged:
        from accelerate.utils import gather_object

        instructions = {k: encode(server.instruction(k)) for k in active}
        mine: list[ClientRecord] = []
        with self.state.split_between_processes(list(active)) as assigned:
            # The main process's clients' local steps; the bar only counts, it never touches the model.
            steps = progress_bar(total=len(assigned) * self.settings.local_steps, desc=f"round {round_id + 1}",
                                 unit="step", leave=False, enabled=self.progress and self.is_main_process)
            for client_id in assigned:
                mine.append(self.run_client(client_id, instructions[client_id], on_step=steps.update))
            steps.close()
        gathered = gather_object(mine) if self.state.num_processes > 1 else mine
        return Exchanged(sorted(gathered, key=lambda c: c.client_id))

    def run_client(self, client_id: int, instruction_bytes: bytes,
                   on_step: Callable[[], None] | None = None) -> ClientRecord:
        """One simulated client: parse its instruction, run its local steps on the replica, serialize the report.

        The replica already holds the global state, which is what replaying the instruction's log would
        give (that equivalence is tested), so only the local steps run here.
        """
        instruction = decode(instruction_bytes, expect=RoundInstruction)
        assert isinstance(instruction, RoundInstruction)
        settings, data = instruction.settings, self.clients[client_id]
        batches = data.round_batches(self.config.seed, instruction.round, instruction.client_id,
                                     settings.local_steps, settings.batch_size)
        scalars, losses, work = self.replica.run_local_steps(instruction.round, instruction.seed_base,
                                                             instruction.seed_client, instruction.local_settings,
                                                             batches, instruction.active, on_step)
        report = ClientReport(instruction.round, instruction.client_id, len(data.examples), scalars,
                              sum(losses) / len(losses), losses[-1])
        return ClientRecord(instruction.client_id, len(instruction_bytes), encode(report), work=work,
                            peak_memory_mib=self.replica.peak_memory_mib)

    def apply(self, records: Sequence[LogRecord], through_round: int) -> None:
        self.replica.replay(records, through_round, self.settings, self.probe)

    def start(self, server: FederatedServer) -> None:
        if server.config.heterogeneous and server.costs is None:  # every process measures the same costs
            server.set_costs(self.replica.layer_costs(self.settings, self.probe))

    def round_done(self, record: RoundRecord) -> None:
        self.state.wait_for_everyone()


def simulate_federation(model: Any, batch_loss: BatchLoss, clients: Sequence[ClientData], config: FederationConfig,
                        *, evaluate: Evaluate | None = None, output_dir: str | Path | None = None,
                        resume: bool = True, run_info: Mapping[str, Any] | None = None,
                        on_round_end: Callable[[RoundRecord], None] | None = None,
                        plot: RoundPlot | None = None) -> FederationResult:
    """Run ``config.rounds`` rounds (or until ``config.flop_budget``) and return the per-round records.

    A first-order method (``fedavg``) runs :func:`~hf_fedzo.federation.fedavg.simulate_fedavg` on the same
    clients, sampling and drop-outs (one process, no resume).

    Args:
        model: the replica every process trains; it must start from the same initial weights everywhere
            (for PEFT adapters: seed the adapter initialisation).
        batch_loss: ``batch_loss(model, batch)`` returns the loss of one collated batch.
        clients: one :class:`ClientData` per client (``len(clients) == config.num_clients``).
        evaluate: ``evaluate(model) -> metrics`` on held-out data; run on the main process only.
        output_dir: where the state, results JSON and plots go (nothing is written without it).
        resume: continue from ``output_dir/federation_state.json`` when it exists and matches the run.
        run_info: extra identity of the run (model, data) folded into the resume fingerprint and results.
        on_round_end: called with each round's record on every process (progress, fault injection in tests).
        plot: what the plots in ``output_dir`` show beyond the records: the curve's label, its value before
            round 1 (e.g. the zero-shot score), reference lines and the y label.
    """
    if len(clients) != config.num_clients:
        raise ValueError(f"clients: {len(clients)} given for num_clients={config.num_clients}")
    if METHODS[config.method].first_order:
        return simulate_fedavg(model, batch_loss, clients, config, evaluate=evaluate, output_dir=output_dir,
                               run_info=run_info, on_round_end=on_round_end, plot=plot)
    probe = clients[0].round_batches(config.seed, 0, 0, 1, config.batch_size)[0]
    exchange = AccelerateExchange(ZOClient(model, batch_loss), clients, config, probe)
    return run_rounds(FederatedServer(config), exchange, evaluate=None if evaluate is None else lambda: evaluate(model),
                      output_dir=output_dir, resume=resume, run_info=run_info, on_round_end=on_round_end,
                      plot=plot)


__all__ = ["AccelerateExchange", "simulate_federation"]
