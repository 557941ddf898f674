"""The arms and the setup the compute-to-accuracy benchmarks (federated and centralised) share: which methods run,
with which step-size grids, on which model, prompt, data and budget."""

from __future__ import annotations

from dataclasses import dataclass

PROMPT = "Review: {sentence}\nSentiment:{label}"
LABEL_WORDS = (" negative", " positive")


@dataclass(frozen=True)
class Arm:
    """One method configuration and its step-size grid; the remaining knobs are the Setup's."""

    name: str
    method: str
    lr_grid: tuple[float, ...]
    zo_p2: int = 1
    zo_split: str = "none"
    zo_p1: int = 1
    peft: str = "lora"
    lora_last_layers: int | None = None
    zo_eps: float | None = None  # None: the Setup's
    weight_decay: float = 0.0  # decoupled, per update: θ ← θ·(1 − lr·weight_decay) − lr·g·z

    @property
    def label(self) -> str:
        where = "" if self.lora_last_layers is None else f", LoRA top {self.lora_last_layers}"
        where += ", full weights" if self.peft == "none" else ""
        where += f", weight decay {self.weight_decay:g}" if self.weight_decay else ""
        if self.method == "fedavg":
            return f"FedAvg (AdamW, first order{where})"
        if self.method == "mezo":
            return f"MeZO (P=1, no split{where})"
        if self.method == "nspsa":
            return f"n-SPSA (P={self.zo_p2}, no split{where})"
        return f"FedSPZO (P1={self.zo_p1}, P2={self.zo_p2}, split {self.zo_split}{where})"


# 1e-2 collapsed to one class in the centralised smoke and 5e-3 late in long federated probes
# (docs/benchmarks.md), so the grid is centred on 2e-3, the step of issue 12's MeZO probe.
ZO_GRID = (1e-3, 2e-3, 5e-3)
ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("mezo", "mezo", ZO_GRID),
    # n-SPSA averages P estimates per update, so at equal FLOPs it makes P times fewer updates, each with 1/P of the
    # noise energy: to first order it moves like MeZO at lr/P. Its grid sits one step higher (5e-3 ended best of
    # MeZO's grid, at the top edge, on 2026-12-07).
    Arm("nspsa", "nspsa", (2e-3, 5e-3, 1e-2), zo_p2=4),
    Arm("fedspzo", "fedspzo", ZO_GRID, zo_p2=4, zo_split="0.9"),  # the library default until 2026-12-08
    # The estimator-quality winner (docs/benchmarks.md): P2 = 2 at the last layer, the library default since 2026-12-08.
    Arm("fedspzo-p2-2", "fedspzo", ZO_GRID, zo_p2=2, zo_split="0.97"),
    # LoRA on the top 8 layers: the frozen prefix runs once per step, so each direction costs ~C2, not ~C.
    Arm("mezo-top8", "mezo", ZO_GRID, lora_last_layers=8),
    Arm("fedspzo-top8", "fedspzo", ZO_GRID, zo_p2=4, zo_split="auto", lora_last_layers=8),
    Arm("fedavg", "fedavg", (1e-4, 3e-4, 1e-3)),
    # Split placement (not in the default queue): the split layer at P2 = 4, then P2 at split 0.9.
    Arm("fedspzo-split15", "fedspzo", ZO_GRID, zo_p2=4, zo_split="15"),
    Arm("fedspzo-p2-8", "fedspzo", ZO_GRID, zo_p2=8, zo_split="0.9"),
    # Weight decay bounds the random walk ZO noise drives the adapters on (docs/benchmarks.md, "Why lr 5e-3
    # collapses"): its stationary ‖B‖² is about lr·g²·d_B / (2·weight_decay), ~10² at lr 5e-3 with decay 2.
    Arm("mezo-wd2", "mezo", ZO_GRID, weight_decay=2.0),
    Arm("fedspzo-wd2", "fedspzo", ZO_GRID, zo_p2=4, zo_split="0.9", weight_decay=2.0),
    Arm("mezo-full", "mezo", (1e-6, 3e-6, 1e-5), peft="none", zo_eps=1e-3),
    Arm("fedspzo-full", "fedspzo", (1e-6, 3e-6, 1e-5), zo_p2=4, zo_split="0.9", peft="none", zo_eps=1e-3),
)}
LORA_ARMS = ("mezo", "nspsa", "fedspzo", "fedspzo-p2-2", "mezo-top8", "fedspzo-top8", "fedavg")
FULL_ARMS = ("mezo-full", "fedspzo-full")
HEADLINE = ("mezo", "fedspzo")  # the last line: MeZO's FLOPs over FedSPZO's, to MeZO's final accuracy


@dataclass(frozen=True)
class Setup:
    """What every arm shares: model, prompt, data, federation shape and budget (a centralised run uses the
    batch size and budget, and no federation)."""

    model: str
    eval_samples: int
    test_samples: int | None
    budget_tflops: float
    eval_every_tflops: float
    num_clients: int = 8
    clients_per_round: int = 4
    local_steps: int = 4
    batch_size: int = 8
    zo_eps: float = 1e-2
    dirichlet_alpha: float = 0.5
    lora_r: int = 8
    max_length: int = 64
    prompt: str = PROMPT
    label_words: tuple[str, ...] = LABEL_WORDS
