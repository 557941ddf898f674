"""The only writer of a federation's results: ``federation_results.json``, its figures and its card figures.

Figures need matplotlib (the ``plots`` extra); without it the results are written and the figures skipped
with one logged line, so a core install runs federations end to end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.records import FederationResult
from hf_fedzo.reporting import draw_curves, write_json

RESULTS_FILE = "federation_results.json"
METRICS = ("accuracy", "f1", "exact_match")  # the first one evaluated is plotted


@dataclasses.dataclass(frozen=True)
class RoundPlot:
    """What a run's plots say beyond its records, known only to the caller (the federation never evaluates the
    model before round 1).

    Attributes:
        label: the curve's name and the title (default: the method).
        start: the metric before any round, drawn at round 0 (no FLOPs, no bytes); e.g. the zero-shot score.
        references: dotted horizontal lines such as ``("majority class", 0.5)``; a None value is left out.
        ylabel: which split and how many examples the evaluation scores (default: only the metric's name).
    """

    label: str | None = None
    start: float | None = None
    references: Sequence[tuple[str, float | None]] = ()
    ylabel: str | None = None


def write_results(output: Path, config: FederationConfig, result: FederationResult,
                  info: Mapping[str, Any], plot: RoundPlot | None = None) -> None:
    """``federation_results.json`` plus the first evaluated metric vs rounds, cumulative forward FLOPs and bytes."""
    write_json(output / RESULTS_FILE, {"config": config.to_dict(), "run": dict(info),
                                       "final_metrics": result.final_metrics,
                                       "rounds": [r.to_dict() for r in result.rounds]})
    if plot is None or plot.label is None:  # e.g. "fedavg" from simulate_fedavg, whatever config.method says
        plot = dataclasses.replace(plot or RoundPlot(), label=str(info.get("method", config.method)))
    plot_rounds(output, config, result, plot)


def plot_rounds(output: Path, config: FederationConfig, result: FederationResult,
                plot: RoundPlot | None = None) -> None:
    """The first evaluated metric against rounds, cumulative forward FLOPs and cumulative bytes (three PNGs).

    The y axis is never zoomed below a tenth, so a change of one or two examples does not fill the plot.
    """
    plot = plot or RoundPlot()
    start = plot.start
    evaluated = [r for r in result.rounds if r.eval is not None]
    metric = next((m for m in METRICS if evaluated and m in evaluated[0].eval), None)  # type: ignore[operator]
    if metric is None:
        return
    cumulative_bytes, total = {}, 0
    for r in result.rounds:
        total += sum(r.bytes_up.values()) + sum(r.bytes_down.values())
        cumulative_bytes[r.round] = total
    ys = [r.eval[metric] for r in evaluated]  # type: ignore[index]
    label = plot.label or config.method
    axes: Sequence[tuple[str, list[Any], str]] = (
        ("rounds", [r.round + 1 for r in evaluated], "round" if start is None else "round (0: before training)"),
        ("flops", [r.cumulative_flops / 1e12 for r in evaluated], "cumulative forward TFLOPs (all clients)"),
        ("bytes", [cumulative_bytes[r.round] for r in evaluated], "cumulative bytes up + down (all clients)"),
    )
    lines = [(name, value) for name, value in plot.references if value is not None]
    for name, xs, xlabel in axes:
        curve = ([0, *xs], [start, *ys]) if start is not None else (xs, ys)
        if draw_curves(output / f"{metric}_vs_{name}.png", {label: curve}, xlabel=xlabel,
                       ylabel=plot.ylabel or f"eval {metric}", title=f"{label}: {metric}", reference=lines,
                       min_yspan=0.1, y_bounds=(0.0, 1.0), integer_x=name == "rounds") is None:
            return  # no matplotlib: one line said so


def federation_figures(config: FederationConfig, result: FederationResult) -> dict[str, Any]:
    """What a model card reports of a federated run (``hf-fedzo push`` reads it from ``federation.json``)."""
    ups = [b for r in result.rounds for b in r.bytes_up.values()]
    downs = [b for r in result.rounds for b in r.bytes_down.values()]
    return {"clients": config.num_clients, "clients_per_round": config.clients_per_round,
            "rounds": len(result.rounds), "local_steps": config.local_steps, "partition": config.partition,
            "method": config.method, "uplink_bytes_per_client_round": sum(ups) / max(len(ups), 1),
            "downlink_bytes_per_client_round": sum(downs) / max(len(downs), 1),
            "forward_tflops": result.total_flops / 1e12}
