"""The split-perturbation zeroth-order step (FedSPZO), with MeZO and n-SPSA as special cases.

For each of P1 block-1 directions u_i, block 1 runs once at θ1+εu_i and once at θ1−εu_i and its output
activations are cached; P2 block-2 directions v_ij are then evaluated on those cached activations.
Each scalar g_ij = (L(θ+ε(u_i,v_ij)) − L(θ−ε(u_i,v_ij))) / 2ε is a directional derivative along the
joint direction. θ2 moves along the mean of g_ij·v_ij, θ1 along the mean over i of (mean_j g_ij)·u_i.
Without a split all parameters form one block and the P1·P2 directions are full-model directions
(P1 = P2 = 1 is MeZO; P1·P2 = n is n-SPSA).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from hf_fedzo.engine.flops import ShapeFlops, eager
from hf_fedzo.engine.perturbation import DirectionApplier, IndexedParameter
from hf_fedzo.engine.seeds import BLOCK1, BLOCK2, direction_seed
from hf_fedzo.engine.settings import ZOSettings
from hf_fedzo.engine.split import SplitExecutor, SplitPlan, build_plan, find_layer_stack
from hf_fedzo.engine.work import WorkCounters

LossFn = Callable[[], torch.Tensor]
Term = tuple[int, float]  # (direction seed, coefficient)


class DivergenceError(RuntimeError):
    """Training broke the model (non-finite weights, or no direction moves the loss any more); stop, keep nothing."""


@dataclass
class ZOEstimate:
    """The outcome of one ZO step on one micro-batch: everything an update or a federation needs."""

    step_seed: int
    scalars: torch.Tensor  # (P1, P2) float32 projected gradients
    loss: float  # mean of every loss evaluated in the step
    work: WorkCounters = field(default_factory=WorkCounters)
    extras: dict[str, float] = field(default_factory=dict)


class ZOEstimator:
    """Estimates projected gradients and applies (seed, scalar) updates to a model's trainable tensors.

    The model is touched only through ``loss_fn`` (any callable running its forward and returning a
    scalar loss) and in-place updates of its trainable parameters; the estimator knows nothing about
    Trainer or federation.
    """

    def __init__(self, model: nn.Module, settings: ZOSettings) -> None:
        self.model = model
        self.settings = settings
        self.applier = DirectionApplier(settings.perturbation)
        self.plan: SplitPlan | None = None
        self._layers: nn.ModuleList | None = None
        # The active subset: indices of the trainable tensors a step perturbs and an update moves (None: all).
        self.active: frozenset[int] | None = None
        self._flops: ShapeFlops | None = None

    # ----------------------------------------------------------------------------------------- plan
    def prepare(self, loss_fn: LossFn) -> SplitPlan:
        """Build the block plan from one traced forward (done once, on the first batch)."""
        if self.plan is None:
            with torch.inference_mode(), eager():  # its tracing hooks would recompile a compiled model
                self.plan = build_plan(self.model, loss_fn, self.settings.split, self.settings.p2,
                                       self.settings.layers_path)
            _, self._layers = find_layer_stack(self.model, self.plan.layers_path)
            self._flops = ShapeFlops(self.model, self._layers)
            if not self.plan.parameters:
                raise ValueError("the model has no trainable parameters (requires_grad=True) to perturb")
            dtype = self.plan.parameters[0].tensor.dtype
            if dtype.is_floating_point and self.settings.eps < torch.finfo(dtype).eps / 10:
                warnings.warn(f"zo_eps={self.settings.eps} is below the resolution of {dtype} weights: most "
                              "perturbations round away and the projected gradients are zero", stacklevel=2)
        return self.plan

    def nonfinite_parameters(self) -> list[str]:
        """Names of the trainable tensors holding NaN or infinity (empty while training is healthy)."""
        return [p.name for p in self.parameters if not bool(torch.isfinite(p.tensor).all())]

    @property
    def parameters(self) -> list[IndexedParameter]:
        if self.plan is None:
            raise RuntimeError("call prepare() (or estimate()) before accessing the plan")
        return self.plan.parameters

    @contextmanager
    def restricted(self, indices: Collection[int] | None) -> Iterator[None]:
        """Within the block, steps perturb and updates move only the trainable tensors ``indices`` (``None``: all).

        The others are not touched at all (bit-identical), and the layers below the first active tensor are
        frozen: their forward runs once per step and is cached, not once per perturbation.
        """
        unknown = set(indices or ()) - {p.index for p in self.parameters}
        if unknown:
            raise ValueError(f"active subset: no trainable tensor has index {min(unknown)}")
        saved, self.active = self.active, None if indices is None else frozenset(indices)
        try:
            yield
        finally:
            self.active = saved

    def _selected(self, params: Sequence[IndexedParameter]) -> list[IndexedParameter]:
        return list(params) if self.active is None else [p for p in params if p.index in self.active]

    def frozen_layers(self) -> int:
        """Layers of the stack below every active tensor (0 when nothing is restricted or a pre-stack one is active)."""
        if self.active is None or self.plan is None or not self.active:
            return 0
        return min(self.plan.first_layer(self.active), self.plan.num_layers - 1)

    # ------------------------------------------------------------------------------------- estimate
    @torch.no_grad()
    def estimate(self, loss_fn: LossFn, step_seed: int, shape: Hashable | None = None) -> ZOEstimate:
        """One ZO step's projected gradients on the batch ``loss_fn`` evaluates.

        ``shape`` names the batch's input shape (:func:`~hf_fedzo.engine.flops.input_shape`): FLOPs are then
        measured on the first forward of each shape and reused, so a ``torch.compile``-d model sees no counting
        hook after that. ``None`` counts every forward with hooks. Split forwards (block 1 up to the split,
        block 2 from a cached activation) re-enter the layer stack through hooks and always run eagerly.
        """
        plan = self.prepare(loss_fn)
        s = self.settings
        eps = s.eps
        sides = self._sides
        meter = self._flops
        assert self._layers is not None and meter is not None
        spans = SplitExecutor(self._layers, plan.split_index or 0)
        forwards = [0, 0]
        flops = [0, 0]
        # An active subset above layer f freezes layers < f. Below an active block 1 they run once (the stem);
        # at or above the split the cut where block 2 resumes moves up to f, so frozen layers never re-run.
        k, f = plan.split_index, self.frozen_layers()
        stem: torch.Tensor | None = None
        cut = k if k is not None and f < k else (f or None)

        def block1() -> torch.Tensor | None:
            if cut is None:
                return None
            start = f if stem is not None else 0
            # Split forwards re-enter the layer stack through hooks: always eager.
            with torch.inference_mode(), meter.forward(("block1", start, cut), shape) as spent, eager():
                hidden = spans.run_span(loss_fn, start, stem, stop=cut)
            forwards[0] += 1
            flops[0] += spent[0]
            return hidden

        def block2(hidden: torch.Tensor | None) -> torch.Tensor:
            with torch.inference_mode(), meter.forward(("block2", cut), shape) as spent:
                if cut is None:
                    loss = loss_fn()
                else:
                    with eager():
                        loss = spans.run_span(loss_fn, cut, hidden)
            forwards[1] += 1
            flops[1] += spent[0]
            return loss.detach().float().reshape(())

        losses = torch.zeros(s.p1, s.p2, len(sides))
        cached: dict[int, torch.Tensor | None] = {}
        baseline: torch.Tensor | None = None
        was_training = self.model.training
        self.model.eval()
        try:
            if f and cut == k:
                with torch.inference_mode(), meter.forward(("stem", f), shape) as spent, eager():
                    stem = spans.run_span(loss_fn, stop=f)
                forwards[0] += 1
                flops[0] += spent[0]
            if s.difference == "forward":
                baseline = block2(block1())
            # Nothing trainable (or active) before the cut (e.g. LoRA on the top layers only): block 1 is the same
            # at every "perturbation", so one forward serves every side and every block-1 direction.
            frozen_prefix = cut is not None and not self._selected(plan.block1)
            for i, j, side in self._walk(plan, step_seed):
                if j is None:
                    cached[side] = next(iter(cached.values())) if frozen_prefix and cached else block1()
                else:
                    losses[i, j, sides.index(side)] = block2(cached[side])
        finally:
            self.model.train(was_training)

        if s.difference == "central":
            scalars = (losses[..., 0] - losses[..., 1]) / (2 * eps)
            finite = torch.isfinite(losses)
            # The loss of a step is the mean of its finite losses: a NaN from one bad direction would otherwise
            # log as NaN (Trainer then logs 0.0). All finite: the plain mean, as always.
            mean_loss = float(losses.mean()) if bool(finite.all()) else float(losses[finite].mean())
        else:
            assert baseline is not None
            scalars = (losses[..., 0] - baseline) / eps
            mean_loss = float(baseline)
        nonfinite = int((~torch.isfinite(scalars)).sum())
        if nonfinite:
            # A NaN/inf loss would poison every parameter it touches; drop those directions instead.
            scalars = torch.nan_to_num(scalars, nan=0.0, posinf=0.0, neginf=0.0)
        work = WorkCounters(forwards[0], forwards[1], flops[0], flops[1])
        return ZOEstimate(step_seed, scalars.float(), mean_loss, work, {"nonfinite_scalars": float(nonfinite)})

    @property
    def _sides(self) -> tuple[int, ...]:
        return (1, -1) if self.settings.difference == "central" else (1,)

    def _walk(self, plan: SplitPlan, step_seed: int) -> Iterator[tuple[int, int | None, int]]:
        """Perturb the parameters in place, pausing at every evaluation point of one ZO step.

        Yields ``(i, None, side)`` when block 1 sits at θ1 + side·ε·u_i and ``(i, j, side)`` when block 2
        sits at θ2 + side·ε·v_ij; the caller runs the matching forward before resuming. Restoring by
        subtraction is not exact in floating point, so this walk is the single source of the in-place
        arithmetic: ``estimate`` runs forwards at each pause and ``retrace`` runs none, which is what
        lets a replay reproduce trained weights bit for bit.
        """
        s = self.settings
        eps = s.eps
        sides = self._sides
        tied, block1, block2 = self._selected(plan.tied), self._selected(plan.block1), self._selected(plan.block2)
        tied_ids = {p.index for p in tied}
        untied1 = [p for p in block1 if p.index not in tied_ids]

        def shift(params: Sequence[IndexedParameter], seed: int, coef: float) -> None:
            self.applier.add_(params, [(seed, coef)])

        for i in range(s.p1):
            u = direction_seed(step_seed, BLOCK1, i)
            at1 = 0
            for side in sides:
                shift(block1, u, (side - at1) * eps)
                at1 = side
                yield i, None, side
            at_tied = at1
            for j in range(s.p2):
                v = direction_seed(step_seed, BLOCK2, i, j)
                # Start on the side the tied tensors already sit on, so they flip once per direction.
                order = sorted(sides, key=lambda side: side != at_tied) if tied else sides
                at2 = 0
                for side in order:
                    shift(block2, v, (side - at2) * eps)
                    at2 = side
                    if tied and at_tied != side:
                        shift(tied, u, (side - at_tied) * eps)
                        at_tied = side
                    yield i, j, side
                shift(block2, v, -at2 * eps)
            shift(untied1, u, -at1 * eps)
            shift(tied, u, -at_tied * eps)

    @torch.no_grad()
    def retrace(self, step_seed: int) -> None:
        """Repeat the perturb/restore arithmetic of ``estimate(…, step_seed)`` without running the model.

        The restore leaves rounding residue (θ + εz − 2εz + εz ≠ θ in floating point); a bit-exact
        replay of a run must therefore retrace every estimate before applying its update.
        """
        if self.plan is None:
            raise RuntimeError("retrace() needs a plan: run prepare() first or set one from a trajectory")
        for _ in self._walk(self.plan, step_seed):
            pass

    # --------------------------------------------------------------------------------------- update
    def update_terms(self, step_seed: int, scalars: torch.Tensor) -> tuple[list[Term], list[Term]]:
        """Direction coefficients (before the −lr factor) of one estimate, for block 1 and block 2."""
        p1, p2 = scalars.shape
        g = scalars.double().tolist()
        block2 = [(direction_seed(step_seed, BLOCK2, i, j), g[i][j] / (p1 * p2)) for i in range(p1) for j in range(p2)]
        block1 = [(direction_seed(step_seed, BLOCK1, i), sum(g[i]) / (p2 * p1)) for i in range(p1)]
        return block1, block2

    @torch.no_grad()
    def apply_update(self, estimates: Sequence[tuple[int, torch.Tensor]], lr: float, weight_decay: float = 0.0) -> None:
        """θ ← θ·(1 − lr·wd) − lr · mean over estimates of the ZO gradient (``(step_seed, scalars)`` pairs).

        Several estimates are gradient-accumulation micro-batches of one optimizer step.
        """
        if self.plan is None:
            raise RuntimeError("apply_update() needs a plan: run estimate() or prepare() first")
        if weight_decay and lr:
            for p in self._selected(self.plan.parameters):
                if p.decay:
                    p.tensor.mul_(1.0 - lr * weight_decay)
        terms1: list[Term] = []
        terms2: list[Term] = []
        for step_seed, scalars in estimates:
            t1, t2 = self.update_terms(step_seed, scalars)
            terms1 += [(seed, -lr * c / len(estimates)) for seed, c in t1]
            terms2 += [(seed, -lr * c / len(estimates)) for seed, c in t2]
        if self.plan.split_index is None:
            self.applier.add_(self._selected(self.plan.block2), terms2)
        else:
            self.applier.add_(self._selected(self.plan.block1), terms1)
            self.applier.add_(self._selected(self.plan.block2), terms2)
