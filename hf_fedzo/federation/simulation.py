"""Simulating a federation on one or several processes with ``accelerate``.

Every process holds one model replica at the global state. Each round the sampled clients are spread
over the processes (``split_between_processes``); each client's local ZO steps run on its process's
replica, which is put back afterwards. The serialized reports are gathered (``gather_object``) and every
process validates and aggregates them identically, then replays the round's log records, so the
replicas stay bit-identical without any weights moving. The main process evaluates and writes the
outputs; the federation state (log, sync marks, history) is saved atomically after every round, and a
restarted run replays the log onto fresh initial weights and continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_fedzo.engine import mix_seed
from hf_fedzo.federation.client import Batch, BatchLoss, LocalWork, ZOClient
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.integrity import read_state, restore_server, write_state
from hf_fedzo.federation.protocol import ClientReport, ProtocolError, RoundInstruction, decode, encode
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.reporting import plot_curves, write_json

STATE_FILE = "federation_state.json"
RESULTS_FILE = "federation_results.json"
_DATA_ORDER = 0xDA7A

Collate = Callable[[list[Any]], Batch]
Evaluate = Callable[[Any], Mapping[str, float]]


@dataclass
class ClientData:
    """One client's local examples (already preprocessed features) and how to batch them."""

    examples: Sequence[Any]
    collate: Collate

    def round_batches(self, seed: int, round_id: int, client_id: int, steps: int, batch_size: int) -> list[Batch]:
        """The client's batches for a round: a pure function of (seed, round, client), so resumable."""
        rng = random.Random(mix_seed(seed, round_id, client_id, _DATA_ORDER))
        order: list[int] = []
        while len(order) < steps * batch_size:
            order += rng.sample(range(len(self.examples)), len(self.examples))
        return [self.collate([self.examples[i] for i in order[s * batch_size:(s + 1) * batch_size]])
                for s in range(steps)]


@dataclass
class SimulationResult:
    rounds: list[dict[str, Any]] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        return sum(r["flops"] for r in self.rounds)


def _fingerprint(config: FederationConfig, extra: Mapping[str, Any]) -> str:
    text = json.dumps({"config": config.to_dict(), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _main_process() -> Any:
    from accelerate import PartialState

    return PartialState()


def simulate_federation(model: Any, batch_loss: BatchLoss, clients: Sequence[ClientData], config: FederationConfig,
                        *, evaluate: Evaluate | None = None, output_dir: str | Path | None = None,
                        resume: bool = True, run_info: Mapping[str, Any] | None = None,
                        on_round_end: Callable[[dict[str, Any]], None] | None = None) -> SimulationResult:
    """Run ``config.rounds`` rounds (or until ``config.flop_budget``) and return the per-round records.

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
    """
    from accelerate.utils import gather_object

    if len(clients) != config.num_clients:
        raise ValueError(f"clients: {len(clients)} given for num_clients={config.num_clients}")
    state = _main_process()
    server = FederatedServer(config)
    replica = ZOClient(model, batch_loss)
    settings = server.settings
    info = dict(run_info or {})
    fingerprint = _fingerprint(config, info)
    result = SimulationResult()
    output = Path(output_dir) if output_dir is not None else None
    probe = clients[0].round_batches(config.seed, 0, 0, 1, settings.batch_size)[0]

    if output is not None and resume and (output / STATE_FILE).is_file():
        saved = read_state(output / STATE_FILE)  # verifies the checksum chain before anything is replayed
        if saved["fingerprint"] != fingerprint:
            raise ValueError(f"{output / STATE_FILE} belongs to a different run (config or data changed); "
                             "use another output_dir or resume=False")
        restore_server(server, saved, output / STATE_FILE)
        result.rounds = saved["rounds"]
        replica.replay(server.log, server.completed_round, settings, probe)

    spent = result.total_flops
    # Under a FLOP budget the number of rounds is not known in advance: count rounds without a total.
    progress = _progress(None if config.flop_budget is not None else config.rounds, server.completed_round + 1,
                         state.is_main_process)
    for round_id in range(server.completed_round + 1, config.rounds):
        if config.budget_spent(spent):
            break
        started = time.perf_counter()
        sampled, dropped = server.open_round(round_id)
        active = [k for k in sampled if k not in dropped]
        instructions = {k: encode(server.instruction(k)) for k in active}

        mine: list[tuple[int, bytes, dict[str, Any]]] = []
        with state.split_between_processes(active) as assigned:
            for client_id in assigned:
                mine.append(_run_client(replica, clients[client_id], instructions[client_id], config))
        gathered = sorted(gather_object(mine) if state.num_processes > 1 else mine, key=lambda item: item[0])

        rejected: dict[int, str] = {}
        for client_id, report_bytes, _ in gathered:
            try:
                server.receive(report_bytes)
            except ProtocolError as err:
                rejected[client_id] = str(err)
        accepted = server.accepted_reports()
        records = server.finish_round()
        replica.replay(records, round_id, settings, probe)

        work = {k: w for k, _, w in gathered}
        round_flops = sum(w["flops_block1"] + w["flops_block2"] for w in work.values())
        spent += round_flops
        record: dict[str, Any] = {
            "round": round_id, "sampled": sampled, "dropped": dropped, "rejected": rejected,
            "bytes_down": {str(k): len(instructions[k]) for k in active},
            "bytes_up": {str(k): len(b) for k, b, _ in gathered},
            "forwards_block1": sum(w["forwards_block1"] for w in work.values()),
            "forwards_block2": sum(w["forwards_block2"] for w in work.values()),
            "flops": round_flops, "cumulative_flops": spent,
            "train_loss": sum(r.loss_mean for r in accepted) / len(accepted) if accepted else None,
            "seconds": time.perf_counter() - started,
        }
        if server.clipped:  # outlier reports scaled down or counts capped (logged by the server too)
            record["clipped"] = {str(k): v for k, v in server.clipped.items()}
        if evaluate is not None and state.is_main_process and config.evaluation_due(round_id, spent):
            record["eval"] = dict(evaluate(model))
        result.rounds.append(record)
        if output is not None and state.is_main_process:
            write_state(output / STATE_FILE, fingerprint, server.state_dict(), result.rounds)
        if on_round_end is not None:
            on_round_end(record)
        progress.update(1)
        state.wait_for_everyone()
    progress.close()

    evaluated = [r for r in result.rounds if "eval" in r]
    result.final_metrics = dict(evaluated[-1]["eval"]) if evaluated else {}
    if output is not None and state.is_main_process:
        write_results(output, config, result, info)
    return result


def _run_client(replica: ZOClient, data: ClientData, instruction_bytes: bytes,
                config: FederationConfig) -> tuple[int, bytes, dict[str, Any]]:
    """One simulated client: parse its instruction, run its local steps on the replica, serialize the report.

    The replica already holds the global state, which is what replaying the instruction's log would
    give (that equivalence is tested), so only the local steps run here.
    """
    instruction = decode(instruction_bytes, expect=RoundInstruction)
    assert isinstance(instruction, RoundInstruction)
    settings = instruction.settings
    batches = data.round_batches(config.seed, instruction.round, instruction.client_id, settings.local_steps,
                                 settings.batch_size)
    scalars, losses, work = replica.run_local_steps(instruction.round, instruction.seed_base,
                                                    instruction.seed_client, settings, batches)
    report = ClientReport(instruction.round, instruction.client_id, len(data.examples), scalars,
                          sum(losses) / len(losses), losses[-1])
    return instruction.client_id, encode(report), dict(vars(work))


def federation_figures(config: FederationConfig, result: SimulationResult) -> dict[str, Any]:
    """What a model card reports of a federated run (``hf-fedzo push`` reads it from ``federation.json``)."""
    rounds = result.rounds
    ups = [b for r in rounds for b in r["bytes_up"].values()]
    downs = [b for r in rounds for b in r["bytes_down"].values()]
    return {"clients": config.num_clients, "clients_per_round": config.clients_per_round, "rounds": len(rounds),
            "local_steps": config.local_steps, "partition": config.partition, "method": config.method,
            "uplink_bytes_per_client_round": sum(ups) / max(len(ups), 1),
            "downlink_bytes_per_client_round": sum(downs) / max(len(downs), 1),
            "forward_tflops": result.total_flops / 1e12}


def _progress(total: int | None, start: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="rounds", disable=not enabled)


def write_results(output: Path, config: FederationConfig, result: SimulationResult,
                  info: Mapping[str, Any]) -> None:
    """``federation_results.json`` plus accuracy plots vs rounds, cumulative forward FLOPs and bytes."""
    write_json(output / RESULTS_FILE, {"config": config.to_dict(), "run": dict(info),
                                       "final_metrics": result.final_metrics, "rounds": result.rounds})
    evaluated = [r for r in result.rounds if "eval" in r]
    metric = next((m for m in ("accuracy", "f1", "exact_match") if evaluated and m in evaluated[0]["eval"]), None)
    if metric is None:
        return
    cumulative_bytes, total = {}, 0
    for r in result.rounds:
        total += sum(r["bytes_up"].values()) + sum(r["bytes_down"].values())
        cumulative_bytes[r["round"]] = total
    ys = [r["eval"][metric] for r in evaluated]
    label = str(info.get("method", config.method))
    for name, xs, xlabel in (
        ("rounds", [r["round"] + 1 for r in evaluated], "round"),
        ("flops", [r["cumulative_flops"] for r in evaluated], "cumulative forward FLOPs (all clients)"),
        ("bytes", [cumulative_bytes[r["round"]] for r in evaluated], "cumulative bytes up + down"),
    ):
        plot_curves(output / f"{metric}_vs_{name}.png", {label: (xs, ys)}, xlabel=xlabel, ylabel=metric,
                    title=f"{label}: {metric}")


__all__ = ["ClientData", "LocalWork", "SimulationResult", "federation_figures", "simulate_federation", "write_results"]
