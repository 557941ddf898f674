"""Estimator quality: ZO gradient estimates against the true gradient on the same batches, per forward FLOP.

No training, so no training noise: on real SmolLM2-135M-Instruct with the VADER movie sentences and a
label-word loss ("Review: {sentence}\\nSentiment:" scored by " negative" / " positive"; only the needed logits
are computed), each repeat draws one fixed batch, computes the true gradient with autograd (the reference
only) and then runs every estimator through the library's own ``ZOEstimator.estimate`` on that batch:
MeZO (P1 = P2 = 1, no split), n-SPSA (P directions, no split) and FedSPZO over a grid of (P1, P2, split).
Each estimator draws estimates (fresh step seeds) until it has spent the same budget of forward FLOPs (as the
engine counts them while they run, LM head included where it runs). After every estimate the update direction
is rebuilt exactly as the optimizer applies it: ``ZOEstimator.apply_update`` on zero-initialised copies of the
trainable tensors (block 1 moves along the P1-averaged scalars times u_i, block 2 along all P1·P2 scalars times
v_ij, every z regenerated from its seed), averaged over the estimates so far as gradient accumulation does.
Against the true gradient g it gives the cosine and the relative error ||ĝ − g|| / ||g|| of the update.

**FLOPs at equal cosine.** For independent directions E[cos²] ≈ F / (F + F0) at F FLOPs spent (k directions
of a d-dimensional Gaussian: cos² ≈ k / (k + d)), so each estimator's curve is summarised by one number F0,
fitted by least squares through the origin on cos² / (1 − cos²) = F / F0 using the mean of cos² over repeats
(the mean of cos is biased low for few directions, E[sqrt(χ²_k)] < sqrt(k)). The FLOPs to reach a cosine c are
F0 · c² / (1 − c²), so the MeZO/FedSPZO FLOPs ratio at equal cosine is F0(MeZO) / F0(FedSPZO) at every c
(the last printed line; FedSPZO there is the library's default point); its standard error is a jackknife over
repeats. Two cross-checks: (1) the ratio of the FLOPs at which the two mean curves (root-mean-square cosine)
first cross the highest level both reach, linear between estimates; (2) "equal error": F0 read from the
relative error instead, E||ĝ − g||² / ||g||² = F0 / F exactly for averaged unbiased estimates (the variance per
FLOP that sets SGD progress at a tuned step size; the cosine fit tends to it as more estimates are averaged,
while with few estimates a split estimate's cos² runs somewhat above F / (F + F0)).

**Theory column.** To first order in ε, with g = (g1, g2) split over the blocks (d1, d2 entries), one FedSPZO
estimate has E[ĝ] = g and E||ĝ − g||² ≈ (d1/P1)(||g1||² + ||g2||²/P2) + d2/(P1·P2) ||g||², so
F0 = (FLOPs per estimate) · E||ĝ − g||² / ||g||² (MeZO: 2C · d). P1 cancels; the split pays only when the
gradient sits in block 2 (small d2, large ||g2||) and block 2 is cheap. The predicted ratio is printed for a
wider grid than is measured, from the measured gradient's block norms and the engine's block costs.

    hf-fedzo prepare-assets
    python -m benchmarks.estimator_quality --quick        # < 10 minutes on 2 cores (3 batches of 4, 3 FedSPZO points)
    python -m benchmarks.estimator_quality                # 6 repeats, the full grid (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.estimator_fit import compare, plot, predicted_f0, print_tables
from hf_fedzo.engine import (
    PERTURBATIONS,
    IndexedParameter,
    SeedScope,
    ZOEstimate,
    ZOEstimator,
    ZOSettings,
    trainable_parameters,
)
from hf_fedzo.engine.split import parse_split

REVIEW_TEMPLATE = "Review: {sentence}\nSentiment:{label}"
REVIEW_WORDS = (" negative", " positive")
DEFAULT_GRID = ("1,2,0.9", "1,4,0.9", "1,8,0.9", "1,16,0.9", "2,4,0.9", "1,4,0.75", "1,8,0.75", "1,4,0.5",
                "1,4,auto")
QUICK_GRID = ("1,4,0.9", "1,8,0.9", "1,2,0.5")
# The theory table: every split fraction with P1 = 1 (P1 cancels to first order) and these P2.
THEORY_SPLITS = (0.5, 0.75, 0.9, 0.97)
THEORY_P2 = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Estimator:
    """One ZO estimator: P1 block-1 and P1·P2 block-2 directions per estimate, with or without a split."""

    p1: int
    p2: int
    split: str | int | float = "none"

    @classmethod
    def parse(cls, spec: str) -> Estimator:
        """``"P1,P2,split"`` (split: 'none', 'auto', a layer index or a fraction), e.g. ``"1,4,0.9"``."""
        parts = spec.split(",")
        try:
            if len(parts) != 3:
                raise ValueError("expected three fields")
            p1, p2 = int(parts[0]), int(parts[1])
            if p1 < 1 or p2 < 1:
                raise ValueError("P1 and P2 must be >= 1")
            return cls(p1, p2, parse_split(parts[2].strip()))
        except ValueError as err:
            raise ValueError(f"--grid: {spec!r} is not 'P1,P2,split' ({err})") from None

    @property
    def kind(self) -> str:
        if self.split != "none":
            return "FedSPZO"
        return "MeZO" if self.p1 * self.p2 == 1 else "n-SPSA"

    def label(self, split_index: int | None = None, num_layers: int | None = None) -> str:
        if self.kind == "MeZO":
            return "MeZO"
        if self.kind == "n-SPSA":
            return f"n-SPSA (P={self.p1 * self.p2})"
        where = f"{split_index}/{num_layers}" if split_index is not None else str(self.split)
        return f"FedSPZO (P1={self.p1}, P2={self.p2}, split {where})"

    def settings(self, eps: float, perturbation: str | None = None) -> ZOSettings:
        law = {} if perturbation is None else {"perturbation": perturbation}  # None: the library's default law
        return ZOSettings(eps=eps, p1=self.p1, p2=self.p2, split=self.split, **law)


MEZO = Estimator(1, 1)


# ---------------------------------------------------------------- measuring

class UpdateDirection:
    """The mean update direction of the estimates added so far, built by the optimizer's own ``apply_update``
    on zero-initialised shadows of the trainable tensors (so z comes from the seeds exactly as in training)."""

    def __init__(self, estimator: ZOEstimator) -> None:
        plan = estimator.plan
        assert plan is not None, "prepare() the estimator first"
        self.shadow = {p.index: IndexedParameter(p.index, p.name, torch.zeros_like(p.tensor), p.decay)
                       for p in plan.parameters}
        self._replay = ZOEstimator(estimator.model, estimator.settings)
        self._replay.plan = dataclasses.replace(plan, **{
            block: [self.shadow[p.index] for p in getattr(plan, block)] for block in ("block1", "block2", "tied")})
        self.count = 0

    def add(self, estimate: ZOEstimate) -> None:
        # apply_update moves θ by −lr·ĝ: lr = −1 adds ĝ itself, the direction training steps against.
        self._replay.apply_update([(estimate.step_seed, estimate.scalars)], lr=-1.0)
        self.count += 1

    def vector(self) -> dict[int, torch.Tensor]:
        return {i: p.tensor / self.count for i, p in self.shadow.items()}

    def against(self, grad: Mapping[int, torch.Tensor]) -> tuple[float, float]:
        """(cosine, ||ĝ − g|| / ||g||) of the mean direction against a float64 ``grad`` (sums in float64)."""
        dot = sq = gsq = 0.0
        for i, p in self.shadow.items():
            s, g = p.tensor.detach().reshape(-1).double(), grad[i].reshape(-1)
            dot, sq, gsq = dot + float(s @ g), sq + float(s @ s), gsq + float(g @ g)
        dot, sq = dot / self.count, sq / self.count**2
        return dot / math.sqrt(sq * gsq), math.sqrt(max(sq - 2 * dot + gsq, 0.0) / gsq)


def true_gradient(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> dict[int, torch.Tensor]:
    """Autograd gradient of the loss w.r.t. every trainable tensor, keyed by its engine index, in float64 (eval
    mode, as the ZO forwards run)."""
    params = trainable_parameters(model)
    was_training = model.training
    model.eval()
    for p in params:
        p.tensor.grad = None
    try:
        with torch.enable_grad():
            loss_fn().backward()
        return {p.index: torch.zeros_like(p.tensor, dtype=torch.float64) if p.tensor.grad is None
                else p.tensor.grad.detach().double() for p in params}
    finally:
        for p in params:
            p.tensor.grad = None
        model.train(was_training)


def run_estimator(estimator: ZOEstimator, loss_fn: Callable[[], torch.Tensor], estimates: int, scope: SeedScope,
                  grad: Mapping[int, torch.Tensor]) -> list[tuple[float, float, float]]:
    """``(cumulative FLOPs, cosine, relative error)`` after each of ``estimates`` estimates; θ restored after."""
    assert estimator.plan is not None
    start = [p.tensor.detach().clone() for p in estimator.plan.parameters]
    direction, flops, points = UpdateDirection(estimator), 0, []
    try:
        for k in range(estimates):
            estimate = estimator.estimate(loss_fn, scope.step_seed(k))
            flops += estimate.work.flops
            direction.add(estimate)
            points.append((float(flops), *direction.against(grad)))
    finally:
        # The perturb/restore walk leaves rounding residue: every estimator starts from the same θ.
        with torch.no_grad():
            for p, saved in zip(estimator.plan.parameters, start, strict=True):
                p.tensor.copy_(saved)
    return points


def block_stats(estimator: ZOEstimator, grad: Mapping[int, torch.Tensor]) -> dict[str, float]:
    """Entries, squared gradient norm and forward cost (C1, C2) of each block of the estimator's plan."""
    plan = estimator.plan
    assert plan is not None
    c1, c2 = plan.block_flops(plan.split_index)
    ones = plan.block1 if plan.split_index is not None else []

    def squares(params: Sequence[IndexedParameter]) -> float:
        return sum(float(grad[p.index].square().sum()) for p in params)

    return {"d1": sum(p.tensor.numel() for p in ones), "d2": sum(p.tensor.numel() for p in plan.block2),
            "sq1": squares(ones), "sq2": squares(plan.block2), "c1": c1, "c2": c2}


def step_cost(stats: Mapping[str, float], p1: int, p2: int) -> float:
    """FLOPs of one estimate: 2·P1 block-1 forwards and 2·P1·P2 block-2 forwards."""
    return 2 * p1 * (stats["c1"] + p2 * stats["c2"])


def theory_f0(stats: Mapping[str, float], p1: int, p2: int) -> float:
    return predicted_f0(step_cost(stats, p1, p2), int(stats["d1"]), int(stats["d2"]), stats["sq1"], stats["sq2"],
                        p1, p2)


# ---------------------------------------------------------------- the benchmark

def load_setup(model_path: str, prompt: str, max_length: int) -> tuple[Any, Any, Any]:
    """The task, its label-word loss ``batch_loss(model, batch)`` and the VADER training sentences."""
    from hf_fedzo.data import load_task_dataset
    from hf_fedzo.federation import task_batch_loss
    from hf_fedzo.runs import ModelArguments, load_tokenizer
    from hf_fedzo.tasks import PromptTemplate, load_task

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=model_path), kind="causal")
    alignment: dict[str, Any] = {} if prompt == "sst2" else {
        "template": PromptTemplate(REVIEW_TEMPLATE, truncate=("sentence",)), "label_words": REVIEW_WORDS}
    task = load_task("sst2", tokenizer, model_kind="causal", max_length=max_length, **alignment)
    return task, task_batch_loss(task), load_task_dataset("vader")["train"]


def load_params(model_path: str, param_set: str, seed: int) -> torch.nn.Module:
    from hf_fedzo.runs import ModelArguments, load_model

    torch.manual_seed(seed)  # the LoRA initialisation (A random, B = 0: where every LoRA run starts)
    lora = {"peft": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"]}
    return load_model(ModelArguments(model_name_or_path=model_path, **(lora if param_set == "lora" else {})), "causal")


def measure_param_set(param_set: str, args: argparse.Namespace, batch_loss: Any, batches: Sequence[Any],
                      measured: Sequence[Estimator], log: Callable[[str], None]) -> dict[str, Any]:
    """Every measured estimator on every batch, then the fits, ratios to MeZO and the theory table."""
    model = load_params(args.model, param_set, args.seed)
    eps = args.lora_eps if param_set == "lora" else args.full_eps
    estimators = {e: ZOEstimator(model, e.settings(eps, args.perturbation)) for e in measured}
    planners = {s: ZOEstimator(model, Estimator(1, 1, s).settings(eps)) for s in THEORY_SPLITS}
    runs: dict[Estimator, list[Any]] = {e: [] for e in measured}
    stats: dict[Any, list[dict[str, float]]] = {key: [] for key in (*estimators, *planners)}
    counts: dict[Estimator, int] = {}
    labels: dict[Estimator, str] = {}
    for r, batch in enumerate(batches):
        def loss_fn(batch: Any = batch) -> torch.Tensor:
            return batch_loss(model, batch)

        grad = true_gradient(model, loss_fn)
        for key, estimator in (estimators | planners).items():
            estimator.prepare(loss_fn)  # the plan (split layer, block costs) is traced once, on the first batch
            stats[key].append(block_stats(estimator, grad))
        full_forward = stats[MEZO][0]["c2"]
        for i, e in enumerate(measured):
            plan = estimators[e].plan
            labels[e] = e.label(plan.split_index, plan.num_layers)
            counts[e] = max(1, math.ceil(args.budget_forwards * full_forward / step_cost(stats[e][0], e.p1, e.p2)))
            started = time.perf_counter()
            points = run_estimator(estimators[e], loss_fn, counts[e], SeedScope(args.seed + r, client=i), grad)
            runs[e].append(points)
            log(f"{param_set} repeat {r + 1}/{len(batches)}  {labels[e]:<40} {counts[e]:>3} estimates  "
                f"cos {points[-1][1]:+.5f}  rel err {points[-1][2]:9.1f}  ({time.perf_counter() - started:.0f} s)")
        del grad

    def theory_ratio(key: Any, p1: int, p2: int) -> float:
        mezo = statistics.fmean(theory_f0(s, 1, 1) for s in stats[MEZO])
        return mezo / statistics.fmean(theory_f0(s, p1, p2) for s in stats[key])

    results = compare({labels[e]: runs[e] for e in measured}, labels[MEZO])
    for e in measured:
        first = stats[e][0]
        results[labels[e]] |= {"estimator": dataclasses.asdict(e), "estimates": counts[e], "blocks": first,
                               "forwards_per_estimate": step_cost(first, e.p1, e.p2) / full_forward,
                               "theory_ratio": theory_ratio(e, e.p1, e.p2),
                               "theory_f0": statistics.fmean(theory_f0(s, e.p1, e.p2) for s in stats[e])}
    theory = [{"label": Estimator(1, p2, s).label(planners[s].plan.split_index, planners[s].plan.num_layers),
               "p2": p2, "split": s, "blocks": stats[s][0], "theory_ratio": theory_ratio(s, 1, p2)}
              for s in THEORY_SPLITS for p2 in THEORY_P2]
    return {"param_set": param_set, "eps": eps, "repeats": len(batches),
            "trainable": sum(p.tensor.numel() for p in trainable_parameters(model)),
            "full_forward_flops": full_forward, "estimators": results,
            "theory": sorted(theory, key=lambda row: -row["theory_ratio"])}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None,
                        help="SmolLM2-135M-Instruct folder (default: the one `hf-fedzo prepare-assets` made)")
    parser.add_argument("--output_dir", default="out/benchmarks/estimator_quality")
    parser.add_argument("--figures_dir", default=None, help="where the PNG plots go (default: --output_dir)")
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats of batch 4, 8 forwards of budget, 3 FedSPZO points (under 10 minutes)")
    parser.add_argument("--param_sets", nargs="+", choices=("lora", "full"), default=["lora", "full"])
    parser.add_argument("--repeats", type=int, default=None, help="independent batches and seeds (default 6; quick 3)")
    parser.add_argument("--budget_forwards", type=float, default=None,
                        help="FLOPs budget per estimator per batch, in plain forwards (default 48; quick 8)")
    parser.add_argument("--grid", nargs="+", default=None, help="FedSPZO points 'P1,P2,split' (default: a 9-point "
                        "grid; quick: " + " ".join(QUICK_GRID) + ")")
    parser.add_argument("--nspsa", type=int, nargs="*", default=[4], help="n-SPSA direction counts P")
    parser.add_argument("--headline", default=None, help="FedSPZO point of the last line (default: the library's "
                        "FederationConfig defaults zo_p1, zo_p2, zo_split)")
    parser.add_argument("--batch_size", type=int, default=None, help="sentences per batch (default 8; quick 4)")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--prompt", choices=("review", "sst2"), default="review",
                        help=f"'review': {REVIEW_TEMPLATE!r} with {REVIEW_WORDS}; 'sst2': the sst2 preset")
    parser.add_argument("--lora_eps", type=float, default=1e-2)
    parser.add_argument("--full_eps", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--perturbation", choices=sorted(PERTURBATIONS), default=None,
                        help="direction law of every estimator (default: the library's, ZOSettings.perturbation)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--report_only", action="store_true", help="tables, plots and the last line again from "
                        "--output_dir/report.json; runs nothing")
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    figures = Path(args.figures_dir) if args.figures_dir else output
    if args.report_only:
        if not (output / "report.json").is_file():
            parser.error(f"--report_only: no {output / 'report.json'}; run the benchmark first")
        saved = json.loads((output / "report.json").read_text())
        return finish(saved["reports"], Estimator(**saved["headline"]), figures)
    args.repeats = args.repeats or (3 if args.quick else 6)
    args.budget_forwards = args.budget_forwards or (8.0 if args.quick else 48.0)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    for name in ("repeats", "budget_forwards", "batch_size", "max_length", "lora_eps", "full_eps", "threads"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0 (got {getattr(args, name)})")
    if any(p < 1 for p in args.nspsa):
        parser.error(f"--nspsa: every P must be >= 1 (got {args.nspsa})")
    try:
        grid = [Estimator.parse(s) for s in args.grid or (QUICK_GRID if args.quick else DEFAULT_GRID)]
        headline = Estimator.parse(args.headline) if args.headline else library_default()
    except ValueError as err:
        parser.error(str(err))
    if any(e.split == "none" for e in grid):
        parser.error("--grid: FedSPZO points need a split (MeZO and n-SPSA are always measured)")
    measured = list(dict.fromkeys([MEZO, *(Estimator(1, p) for p in args.nspsa if p > 1), headline, *grid]))

    from hf_fedzo.data import smollm2_path
    from hf_fedzo.reporting import write_json

    torch.set_num_threads(args.threads)
    args.model = args.model_name_or_path or str(smollm2_path())
    task, batch_loss, train = load_setup(args.model, args.prompt, args.max_length)
    rng = random.Random(args.seed)
    # One fixed batch per repeat, shared by every estimator and both parameter sets.
    batches = [task.collator([task.preprocess(train[i]) for i in rng.sample(range(len(train)), args.batch_size)])
               for _ in range(args.repeats)]
    started = time.perf_counter()
    seeds, quick = f"{args.seed}..{args.seed + args.repeats - 1}", " (--quick)" if args.quick else ""
    print(f"estimator quality{quick}: {len(measured)} estimators ({len(grid)} FedSPZO grid points) x "
          f"{args.repeats} repeats (batches of {args.batch_size}, seeds {seeds}) x {len(args.param_sets)} "
          f"parameter sets, {args.budget_forwards:g} forwards of budget each, {args.threads} thread(s), "
          f"{args.perturbation or ZOSettings().perturbation} directions", flush=True)

    def log(line: str) -> None:
        print(f"  [{time.perf_counter() - started:5.0f} s] {line}", flush=True)

    reports = {}
    for param_set in args.param_sets:
        reports[param_set] = measure_param_set(param_set, args, batch_loss, batches, measured, log)
    wall = time.perf_counter() - started
    write_json(output / "report.json", {"setup": vars(args), "headline": dataclasses.asdict(headline), "wall_s": wall,
                                        "torch": torch.__version__, "reports": reports})
    print(f"\nwall time {wall:.0f} s; report {output / 'report.json'}, plots in {figures}")
    return finish(reports, headline, figures)


def finish(reports: Mapping[str, Any], headline: Estimator, figures: Path) -> dict[str, Any]:
    """Plots, tables and, last, the FLOPs ratio of the headline FedSPZO point."""
    ratios = {"lora": math.nan, "full": math.nan}
    for param_set, report in reports.items():
        label = next(k for k, v in report["estimators"].items() if Estimator(**v["estimator"]) == headline)
        plot(report, figures / f"estimator_quality_{param_set}.png")
        print_tables(report, label)
        ratios[param_set] = report["estimators"][label]["ratio"]
    print(f"estimator quality: FLOPs ratio MeZO/FedSPZO at equal cosine: lora {ratios['lora']:.2f}, "
          f"full {ratios['full']:.2f}")
    return dict(reports)


def library_default() -> Estimator:
    """FedSPZO as it ships: the FederationConfig defaults of zo_p1, zo_p2 and zo_split."""
    from hf_fedzo.federation import FederationConfig

    defaults = {f.name: f.default for f in dataclasses.fields(FederationConfig)}
    return Estimator(int(defaults["zo_p1"]), int(defaults["zo_p2"]), parse_split(defaults["zo_split"]))


if __name__ == "__main__":
    main()
