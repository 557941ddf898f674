"""A federated ZO client: replay the aggregated log, run local steps, report scalars.

The client runs the same :class:`~hf_fedzo.engine.ZOEstimator` as ``ZOSplitTrainer`` (one
implementation of the step). Between rounds it holds only its last synced weights: after its local
steps it restores them and waits for the aggregated log, which it replays (DeComFL-style), so no
weights are ever downloaded.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_fedzo.engine import (
    DivergenceError,
    LoweredLinears,
    SeedScope,
    WorkCounters,
    ZOEstimator,
    apply_updates,
    find_layer_stack,
    lower_dtype,
    lowerable_bytes,
)
from hf_fedzo.federation.budgets import ActiveSet, LayerCosts, measure_costs
from hf_fedzo.federation.protocol import ClientReport, LogRecord, ProtocolError, RoundInstruction, RoundSettings

Batch = Mapping[str, Any]
BatchLoss = Callable[[nn.Module, Batch], torch.Tensor]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: ``torch.cuda.reset_peak_memory_stats`` on a GPU; on Linux CPUs the
    process's resident high-water mark (``VmHWM``, writing 5 to ``/proc/self/clear_refs``). Where that is not
    possible the CPU peak stays the whole process's (see :func:`peak_memory_mib`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_memory_mib(device: torch.device) -> float:
    """The peak memory since :func:`reset_peak_memory`: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU
    the peak resident set size (``VmHWM`` on Linux; elsewhere ``ru_maxrss``, a high-water mark of the whole
    process: in a simulator, of every client it ran so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class ZOClient:
    """Owns one model replica and runs clients' local ZO rounds on it.

    A real client is one ``ZOClient`` answering :meth:`handle`. A simulation runs many clients on one
    replica: the replica stays at the global state, :meth:`run_local_steps` starts from it and puts it
    back, and :meth:`replay` moves it to the next global state.

    Args:
        model: the model with the trainable tensors (``requires_grad=True``) the federation fine-tunes.
        batch_loss: ``batch_loss(model, batch)`` runs the forward and returns the scalar loss.
        keep_full_precision: with the round settings' ``frozen_dtype``, the frozen linears of the layers a client
            does not train are lowered for its local steps. ``True`` (a simulator) keeps the full-precision
            tensors aside and puts them back afterwards; ``False`` (a standalone client short of memory) drops
            them, which is what saves the memory, and refuses a later round that trains a lowered layer.
    """

    def __init__(self, model: nn.Module, batch_loss: BatchLoss, keep_full_precision: bool = True) -> None:
        self.model = model
        self.batch_loss = batch_loss
        self.keep_full_precision = keep_full_precision
        self.lowered_layers: set[int] = set()  # held at frozen_dtype for good (keep_full_precision=False)
        self.estimator: ZOEstimator | None = None
        self.synced_round = -1  # every log record up to this round has been applied
        self.peak_memory_mib: float | None = None  # measured over the last local steps (see peak_memory_mib)

    def _estimator_for(self, settings: RoundSettings, batch: Batch) -> ZOEstimator:
        wanted = settings.zo
        if self.estimator is None:
            self.estimator = ZOEstimator(self.model, wanted)
            self.estimator.prepare(lambda: self.batch_loss(self.model, batch))
        elif self.estimator.settings != wanted:
            raise ProtocolError(f"round settings {wanted} differ from this client's {self.estimator.settings}; "
                                "ZO settings are fixed for a federation")
        return self.estimator

    def replay(self, records: Sequence[LogRecord], through_round: int, settings: RoundSettings, batch: Batch,
               replay_after: int | None = None) -> None:
        """Apply ``records`` (the log after ``synced_round``, in order) and mark the client synced."""
        if replay_after is not None and replay_after != self.synced_round:
            raise ProtocolError(f"the replay starts after round {replay_after}, but this client is synced through "
                                f"round {self.synced_round}")
        if through_round < self.synced_round:
            raise ProtocolError(f"replay through round {through_round}, but this client is at {self.synced_round}")
        rounds = [r.round for r in records]
        if rounds != sorted(rounds) or any(not self.synced_round < r <= through_round for r in rounds):
            raise ProtocolError(f"replay rounds {rounds} are not in order within ({self.synced_round}, "
                                f"{through_round}]")
        estimator = self._estimator_for(settings, batch)
        for active, run in itertools.groupby(records, key=lambda r: r.active):  # a homogeneous log is one run
            with estimator.restricted(self._active_indices(active)):
                apply_updates(estimator, [r.update for r in run])
        broken = estimator.nonfinite_parameters() if records else []
        if broken:
            raise DivergenceError(f"round {through_round}: the aggregated update made {len(broken)} trainable "
                                  f"tensor(s) non-finite (first: {broken[0]}); use a smaller learning_rate "
                                  f"(now {settings.lr}) or zo_eps (now {settings.zo.eps})")
        self.synced_round = through_round

    def _active_indices(self, active: str | None) -> list[int] | None:
        """The engine's active subset for an active-set id (None: every trainable tensor)."""
        if active is None:
            return None
        assert self.estimator is not None and self.estimator.plan is not None
        plan = self.estimator.plan
        try:
            return ActiveSet.parse(active, plan.num_layers).parameter_indices(plan.positions)
        except ValueError as err:
            raise ProtocolError(str(err)) from None

    @contextlib.contextmanager
    def _frozen_lowered(self, settings: RoundSettings, active: str | None) -> Iterator[None]:
        """The layers outside ``active`` with their frozen linears at ``settings.frozen_dtype`` (see
        :mod:`hf_fedzo.engine.precision`); a no-op without either, unless this client already dropped the full
        precision of some layers, which it then cannot train."""
        if (settings.frozen_dtype is None or active is None) and not self.lowered_layers:
            yield
            return
        assert self.estimator is not None and self.estimator.plan is not None
        _, layers = find_layer_stack(self.model, self.estimator.plan.layers_path)
        trained = set(range(len(layers))) if active is None else ActiveSet.parse(active, len(layers)).positions
        clash = sorted(trained & self.lowered_layers)
        if clash or (self.lowered_layers and settings.frozen_dtype is None):
            raise ProtocolError(f"this round trains layer(s) {clash or sorted(self.lowered_layers)} at full "
                                "precision, but this client dropped their full-precision weights "
                                "(keep_full_precision=False)")
        frozen = [i for i in range(len(layers)) if i not in trained]
        assert settings.frozen_dtype is not None  # the cases without it returned or raised above
        dtype = lower_dtype(settings.frozen_dtype)
        if self.keep_full_precision:
            lowered = LoweredLinears([layers[i] for i in frozen], dtype)
            try:
                yield
            finally:
                lowered.restore()
            return
        new = [i for i in frozen if i not in self.lowered_layers and lowerable_bytes(layers[i], dtype)]
        LoweredLinears([layers[i] for i in new], dtype, keep_originals=False)
        self.lowered_layers.update(new)  # only layers that had frozen linears to lower can no longer be trained
        yield

    def layer_costs(self, settings: RoundSettings, batch: Batch) -> LayerCosts:
        """The model's per-layer costs on ``batch`` (what a heterogeneous server allocates by)."""
        return measure_costs(self._estimator_for(settings, batch), self.model, settings.frozen_dtype)

    @torch.no_grad()
    def run_local_steps(self, round_id: int, seed_base: int, seed_client: int, settings: RoundSettings,
                        batches: Sequence[Batch], active: str | None = None,
                        on_step: Callable[[], None] | None = None) -> tuple[np.ndarray, list[float], WorkCounters]:
        """Local ZO steps from the current (synced) weights; the weights are restored before returning.

        ``active`` (an active-set id) restricts the steps to those positions: the other trainable tensors are
        neither perturbed nor updated. ``on_step()`` is called after each step (a progress bar); it sees
        nothing and changes nothing. Returns the (local steps, P1, P2) float32 scalars, the loss of each step
        and the work done.
        """
        if len(batches) != settings.local_steps:
            raise ValueError(f"batches: {len(batches)} given for {settings.local_steps} local steps")
        estimator = self._estimator_for(settings, batches[0])
        scope = SeedScope(seed_base, round_id, seed_client)
        # Restoring from a copy, not by subtraction: θ + εz − 2εz + εz ≠ θ in floating point, and any residue
        # would make this replica differ from one that only replayed the log. The copy holds the trainable
        # tensors only (small for adapters) and lives on the CPU.
        snapshot = [p.tensor.detach().to("cpu", copy=True) for p in estimator.parameters]
        device = estimator.parameters[0].tensor.device
        scalars, losses, work = [], [], WorkCounters()
        try:
            with estimator.restricted(self._active_indices(active)), self._frozen_lowered(settings, active):
                reset_peak_memory(device)  # after the lowering: the window holds what the steps need
                for step, batch in enumerate(batches):
                    estimate = estimator.estimate(lambda b=batch: self.batch_loss(self.model, b),
                                                  scope.step_seed(step))
                    scalars.append(estimate.scalars.numpy())
                    losses.append(estimate.loss)
                    work += estimate.work
                    if step < settings.local_steps - 1:
                        estimator.apply_update([(estimate.step_seed, estimate.scalars)], settings.lr,
                                               settings.weight_decay)
                    if on_step is not None:
                        on_step()
        finally:
            for parameter, saved in zip(estimator.parameters, snapshot, strict=True):
                parameter.tensor.copy_(saved)
        self.peak_memory_mib = peak_memory_mib(device)
        return np.stack(scalars).astype(np.float32), losses, work

    def handle(self, instruction: RoundInstruction, batches: Sequence[Batch],
               num_examples: int) -> tuple[ClientReport, WorkCounters]:
        """Answer one round as a standalone client: replay what is new, run the local steps, report."""
        settings = instruction.settings
        self.replay(instruction.replay, instruction.round - 1, settings, batches[0], instruction.replay_after)
        scalars, losses, work = self.run_local_steps(instruction.round, instruction.seed_base,
                                                     instruction.seed_client, instruction.local_settings, batches,
                                                     instruction.active)
        report = ClientReport(instruction.round, instruction.client_id, num_examples, scalars,
                              float(np.mean(losses)), float(losses[-1]))
        return report, work
