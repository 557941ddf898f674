"""The one round loop of every transport, and the typed records it writes.

:func:`run_rounds` owns what every federation does the same way: resume from the state file (by run
fingerprint), the FLOP budget, sampling and drop-outs (through the server), report validation and
aggregation, the evaluation cadence, the per-round :class:`RoundRecord`, the state file after every round
and the results at the end. A transport supplies only an :class:`Exchange`: how one round's instructions
reach the active clients and what comes back (the accelerate simulator, Flower and first-order FedAvg
each have one), and how the round's aggregated log records reach its replicas.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_fedzo.engine import WorkCounters
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.integrity import StateFileError, read_state, restore_server, write_state
from hf_fedzo.federation.protocol import ClientReport, LogRecord, ProtocolError, decode
from hf_fedzo.federation.records import ClientRecord, Exchanged, FederationResult, RoundRecord
from hf_fedzo.federation.results import METRICS, RoundPlot, write_results
from hf_fedzo.federation.server import FederatedServer
from hf_fedzo.progress import announce, format_duration, progress_bar

STATE_FILE = "federation_state.json"

logger = logging.getLogger(__name__)


class Exchange:
    """How a transport moves one round: subclass it and implement :meth:`exchange` (and :meth:`apply` when the
    transport holds replicas). The other hooks have working defaults."""

    resumable = True  # the rounds are reproducible from the server's log (first-order FedAvg's are not)
    is_main_process = True  # evaluates and writes files (False on the other processes of a simulation)
    progress = False  # show progress bars (the rounds, the local steps within one)

    def exchange(self, server: FederatedServer, round_id: int, active: Sequence[int]) -> Exchanged:
        """Send each active client its instruction (``server.instruction(k)``) and collect what comes back."""
        raise NotImplementedError

    def apply(self, records: Sequence[LogRecord], through_round: int) -> None:
        """Bring the transport's replicas through ``through_round`` with the aggregated ``records`` (also called
        with the whole log after a resume)."""

    def start(self, server: FederatedServer) -> None:
        """Before the first round to run (after a resume): e.g. wait for clients to connect."""

    def round_done(self, record: RoundRecord) -> None:
        """After each round is recorded and saved: log it, wait for the other processes."""

    def announce(self, line: str) -> None:
        """Show the per-round progress line (main process only): printed, unless the verbosity hides it."""
        announce(line)


def run_fingerprint(config: FederationConfig, run_info: Mapping[str, Any]) -> str:
    """What a state file must match to be resumed: the config and the caller's run identity (model, data)."""
    text = json.dumps({"config": config.to_dict(), **run_info}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def accept_reports(server: FederatedServer, clients: Sequence[ClientRecord]) -> dict[int, str]:
    """Hand the reports to the server in client order; return the rejected ones and why.

    The server checks each report; only the transport knows who sent it, so a report claiming another
    client's id is refused here.
    """
    rejected: dict[int, str] = {}
    for client in sorted(clients, key=lambda c: c.client_id):
        if client.report is None:
            continue
        try:
            claimed = decode(client.report, expect=ClientReport, max_bytes=server.max_message_bytes)
            if claimed.client_id != client.client_id:
                raise ProtocolError(f"client {client.client_id} sent a report for client {claimed.client_id}")
            server.receive(client.report)
        except ProtocolError as err:
            rejected[client.client_id] = str(err)
            logger.warning("report of client %d rejected: %s", client.client_id, err)
    return rejected


def run_rounds(server: FederatedServer, exchange: Exchange, *,
               evaluate: Callable[[], Mapping[str, float]] | None = None, output_dir: str | Path | None = None,
               resume: bool = True, run_info: Mapping[str, Any] | None = None,
               on_round_end: Callable[[RoundRecord], None] | None = None,
               plot: RoundPlot | None = None) -> FederationResult:
    """Run ``server.config.rounds`` rounds (or until its FLOP budget) over ``exchange``; return the records.

    Args:
        server: the federation's server (sampling, validation, aggregation, log).
        exchange: the transport's round trip.
        evaluate: ``evaluate() -> metrics`` of the global model, every ``eval_every`` rounds and after the last
            (on the main process only).
        output_dir: where ``federation_state.json`` (after every round) and ``federation_results.json`` go.
        resume: continue from the state file when it exists and matches the run (config and ``run_info``).
        run_info: the run's identity beyond the config (model, data), in the fingerprint and the results.
        on_round_end: called with each round's record (progress, fault injection in tests).
        plot: how the plots written with the results are labelled (start value, reference lines, y label).
    """
    config = server.config
    info = dict(run_info or {})
    fingerprint = run_fingerprint(config, info)
    output = Path(output_dir) if output_dir is not None else None
    result = FederationResult()
    if output is not None and resume and exchange.resumable and (output / STATE_FILE).is_file():
        path = output / STATE_FILE
        saved = read_state(path)  # verifies the checksum chain before anything is replayed
        if saved["fingerprint"] != fingerprint:
            raise ValueError(f"{path} belongs to a different run (config or data changed); "
                             "use another output_dir or resume=False")
        restore_server(server, saved, path)
        try:
            result.rounds = [RoundRecord.from_dict(r) for r in saved["rounds"]]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StateFileError(f"federation state {path}: a round record is malformed ({type(err).__name__}: "
                                 f"{err})") from err
        exchange.apply(server.log, server.completed_round)
    exchange.start(server)

    spent = result.total_flops
    # Under a FLOP budget the number of rounds is not known in advance: count rounds without a total.
    progress = progress_bar(total=None if config.flop_budget is not None else config.rounds, desc="rounds",
                            unit="round", initial=server.completed_round + 1,
                            enabled=exchange.progress and exchange.is_main_process)
    pace = RoundPace(config, spent)
    for round_id in range(server.completed_round + 1, config.rounds):
        if config.budget_spent(spent):
            break
        started = time.perf_counter()
        sampled, dropped = server.open_round(round_id)
        exchanged = exchange.exchange(server, round_id, [k for k in sampled if k not in dropped])
        rejected = accept_reports(server, exchanged.clients)
        accepted = server.accepted_reports()
        clipped_before = server.clipped_scalars
        exchange.apply(server.finish_round(), round_id)

        work = sum((c.work for c in exchanged.clients), WorkCounters())
        spent += work.flops
        train_loss = exchanged.train_loss
        if train_loss is None and accepted:
            train_loss = sum(r.loss_mean for r in accepted) / len(accepted)
        record = RoundRecord(
            round=round_id, sampled=sampled, dropped=dropped, rejected=rejected,
            bytes_down={c.client_id: c.bytes_down for c in exchanged.clients},
            bytes_up={c.client_id: c.bytes_up for c in exchanged.clients if c.bytes_up is not None},
            work=work, cumulative_flops=spent, train_loss=train_loss, seconds=time.perf_counter() - started,
            unreachable=exchanged.unreachable, unanswered=exchanged.unanswered, failed=exchanged.failed,
            resynced=exchanged.resynced, clipped=dict(server.clipped),
            zo_clipped=server.clipped_scalars - clipped_before, accounting=server.accounting(exchanged.clients))
        # The round's line goes out as soon as its training is done, before any evaluation: an evaluation can take
        # as long as a round, and a user should not wait for both to see that the run moves.
        if exchange.is_main_process:
            exchange.announce(pace.line(record))
        if evaluate is not None and exchange.is_main_process and config.evaluation_due(round_id, spent):
            record.eval = dict(evaluate())
            exchange.announce(pace.eval_line(record))
        result.rounds.append(record)
        if output is not None and exchange.is_main_process and exchange.resumable:
            write_state(output / STATE_FILE, fingerprint, server.state_dict(), [r.to_dict() for r in result.rounds])
        if on_round_end is not None:
            on_round_end(record)
        progress.update(1)
        exchange.round_done(record)
    progress.close()

    evaluated = [r for r in result.rounds if r.eval is not None]
    result.final_metrics = dict(evaluated[-1].eval) if evaluated else {}  # type: ignore[arg-type]
    if output is not None and exchange.is_main_process:
        write_results(output, config, result, info, plot)
    return result


class RoundPace:
    """The per-round progress line: where the run is, what the round gave, and when the run should end.

    The line goes out when a round's training is done; an evaluation due after it gets its own line
    (:meth:`eval_line`). The estimate of the time left is the mean wall time of the rounds run so far in this call
    (evaluations before the current round included) times the rounds left; under a FLOP budget the rounds left
    are also bounded by the budget left at the mean FLOPs per round.
    """

    def __init__(self, config: FederationConfig, spent_before: int) -> None:
        self.config, self.spent_before = config, spent_before
        self.started, self.ran = time.perf_counter(), 0

    def line(self, record: RoundRecord) -> str:
        self.ran += 1
        config, elapsed = self.config, time.perf_counter() - self.started
        rounds_left = config.rounds - record.round - 1
        budget = config.flop_budget
        if budget is None:
            position = f"round {record.round + 1}/{config.rounds}"
        else:
            position = f"round {record.round + 1} ({min(record.cumulative_flops / budget, 1):.0%} of the FLOP budget)"
            per_round = (record.cumulative_flops - self.spent_before) / self.ran
            if per_round > 0:
                rounds_left = min(rounds_left, max(0, math.ceil((budget - record.cumulative_flops) / per_round)))
        answered = f"{len(record.bytes_up)}/{len(record.sampled)} clients answered"
        if record.rejected:
            answered += f" ({len(record.rejected)} rejected)"
        parts = [f"{config.method} {position}", answered,
                 "train loss n/a" if record.train_loss is None else f"train loss {record.train_loss:.4f}"]
        if record.zo_clipped:
            parts.append(f"{record.zo_clipped} scalars clipped (--zo_clip)")
        parts += [f"{record.cumulative_flops / 1e12:.2f} TFLOPs", f"elapsed {format_duration(elapsed)}",
                  f"ETA {format_duration(elapsed / self.ran * rounds_left)}"]
        return " | ".join(parts)

    def eval_line(self, record: RoundRecord) -> str:
        """The evaluation that followed a round's line (its first metric, or every one when none is known)."""
        metrics = record.eval or {}
        numeric = {name: value for name, value in metrics.items() if isinstance(value, int | float)}
        shown = [m for m in METRICS if m in numeric][:1] or list(numeric)
        values = " | ".join(f"eval {name} {numeric[name]:.4f}" for name in shown) or "evaluated"
        return f"{self.config.method} round {record.round + 1} | {values} | elapsed " \
               f"{format_duration(time.perf_counter() - self.started)}"
