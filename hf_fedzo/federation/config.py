"""``FederationConfig``: every knob of a federated ZO run, parseable with ``HfArgumentParser``."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_fedzo.engine import ZOArguments, zo_field
from hf_fedzo.federation.aggregation import ROBUST_MIN_CLIENTS, check_aggregation
from hf_fedzo.federation.allocation import ALLOCATIONS
from hf_fedzo.federation.budgets import BUDGET_PROFILES
from hf_fedzo.federation.client_lr import CLIENT_LR_POLICIES
from hf_fedzo.federation.partition import PARTITIONERS
from hf_fedzo.federation.protocol import RoundSettings
from hf_fedzo.registry import Registry


@dataclass(frozen=True)
class Method:
    """A federated method: the ``zo_*`` values it fixes (applied by ``round_settings``; every other field stays
    as given) or, for a first-order baseline, ``first_order=True`` (clients backpropagate and upload tensors)."""

    description: str
    zo: dict[str, Any] = field(default_factory=dict)
    first_order: bool = False


METHODS: Registry[Method] = Registry("method", {
    "fedspzo": Method("split perturbations, zo_p1 x zo_p2 (the zo_* values given)"),
    "mezo": Method("federated MeZO, DeComFL-style: P1=P2=1, no split",
                   {"zo_p1": 1, "zo_p2": 1, "zo_split": "none"}),
    "nspsa": Method("zo_p2 full-model directions per step, no split", {"zo_p1": 1, "zo_split": "none"}),
    "fedavg": Method("first-order FedAvg over the trainable tensors with AdamW (the baseline; fedavg_lr)",
                     first_order=True),
})


@dataclass
class FederationConfig(ZOArguments):
    """A federation simulated on one or several processes (or served over Flower).

    The ``zo_*`` fields are :class:`~hf_fedzo.engine.ZOArguments`' (shared with ``ZOConfig``); only ``zo_eps``
    has another default here, 1e-2, because federated runs fine-tune adapters (LoRA wants the larger ε).
    """

    # No argparse "choices": a method registered after import must be accepted; __post_init__ checks the name.
    method: str = field(default="fedspzo", metadata={
        "help": "; ".join(f"{name}: {m.description}" for name, m in METHODS.items())})
    num_clients: int = field(default=8, metadata={"help": "clients in the federation"})
    clients_per_round: int = field(default=4, metadata={"help": "clients sampled each round (seeded)"})
    rounds: int = field(default=20, metadata={"help": "federated rounds"})
    local_steps: int = field(default=1, metadata={"help": "local ZO steps per sampled client per round"})
    batch_size: int = field(default=16, metadata={"help": "examples per local step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "ZO learning rate (applied by every replay)"})
    server_lr: float = field(default=1.0, metadata={
        "help": "multiplier on each round's aggregated step (FedOpt's server learning rate; ZO methods). With "
                "per_client_seeds the K clients' directions are independent, and server_lr=K moves the model about "
                "as far as K sequential steps at learning_rate would, while each client's local steps stay small"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay per update"})
    zo_eps: float = zo_field("zo_eps", default=1e-2)
    per_client_seeds: bool = field(default=False, metadata={
        "help": "give each client its own directions (more directions per round; replay cost x clients)"})
    aggregation: str = field(default="mean", metadata={
        "help": "per-seed rule across clients: mean, median or trimmed_mean"})
    weighting: str = field(default="examples", metadata={"help": "mean weights: examples or uniform"})
    trim_fraction: float = field(default=0.1, metadata={
        "help": "fraction cut at each end by trimmed_mean (at least one value per end from 3 clients on)"})
    max_weight_ratio: float = field(default=10.0, metadata={
        "help": "with weighting=examples, a client's num_examples counts at most this many times the round's "
                "median (one inflated count cannot take over the mean); 0 disables"})
    max_norm_ratio: float = field(default=10.0, metadata={
        "help": "a report whose scalars' L2 norm exceeds this many times the round's median norm is scaled down "
                "to it and logged (from 3 reports per round); 0 disables"})
    partition: str = field(default="dirichlet", metadata={"help": "iid, dirichlet (label skew) or domain"})
    dirichlet_alpha: float = field(default=0.5, metadata={"help": "Dirichlet concentration (smaller = more skew)"})
    dropout: float = field(default=0.0, metadata={"help": "fraction of sampled clients that drop out each round"})
    seed: int = field(default=42, metadata={"help": "seeds sampling, partitions, data order and directions"})
    eval_every: int = field(default=5, metadata={"help": "evaluate the global model every N rounds (0: end only)"})
    flop_budget: float | None = field(default=None, metadata={
        "help": "stop once the clients' cumulative forward FLOPs reach this (compare methods at equal compute)"})
    fedavg_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of method=fedavg clients"})
    # Heterogeneous federations (hf_fedzo.federation.budgets / allocation / client_lr); left at their defaults
    # they are not part of the config's dict (FINGERPRINT_NEUTRAL_DEFAULTS).
    client_budgets: str | None = field(default=None, metadata={
        "help": "each client's budget: a JSON file ({'default': {...}, 'clients': {'3': {'flops_per_step': ..., "
                "'memory_mib': ..., 'layer_fraction': ...}}}) or a profile: " + ", ".join(sorted(BUDGET_PROFILES))})
    block_allocation: str = field(default="none", metadata={
        "help": "which layers each sampled client trains: none (all), top (deepest affordable suffix) or zorba "
                "(coverage-constrained, variance-proxy allocation); see README 'Heterogeneous federations'"})
    zorba_min_coverage: int = field(default=1, metadata={
        "help": "block_allocation=zorba: every trainable layer is trained by at least this many clients a round"})
    client_lr_policy: str = field(default="none", metadata={
        "help": "per-client learning rate each round: none (learning_rate for all) or fedmezo (see README)"})
    frozen_dtype: str | None = field(default=None, metadata={
        "help": "heterogeneous runs: during its local steps a client holds the frozen linear weights of the layers "
                "it does not train (an adapter's base weights) in this dtype, bfloat16 or float16, to save memory; "
                "trainable tensors and the layers it trains keep their precision"})

    def __post_init__(self) -> None:
        super().__post_init__()  # the zo_* fields
        for name in ("learning_rate", "server_lr", "weight_decay", "zo_eps", "trim_fraction", "dirichlet_alpha",
                     "dropout", "max_weight_ratio", "max_norm_ratio", "flop_budget"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # a NaN passes every range check below
                raise ValueError(f"{name} must be a finite number (got {value})")
        for name in ("max_weight_ratio", "max_norm_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables it; got {getattr(self, name)})")
        if self.server_lr <= 0:
            raise ValueError(f"server_lr must be > 0 (got {self.server_lr})")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 (got {self.weight_decay})")
        METHODS.check(self.method)
        if self.server_lr != 1.0 and METHODS[self.method].first_order:
            raise ValueError(f"server_lr scales the ZO log's steps; method={self.method!r} is first-order "
                             "(use fedavg_lr)")
        for name in ("num_clients", "clients_per_round", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.clients_per_round > self.num_clients:
            raise ValueError(f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")
        PARTITIONERS.check(self.partition)
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (got {self.eval_every})")
        check_aggregation(self.aggregation, self.weighting, self.trim_fraction, not self.per_client_seeds)
        reporting = self.clients_per_round - math.floor(self.dropout * self.clients_per_round)
        if self.aggregation != "mean" and reporting < ROBUST_MIN_CLIENTS:
            warnings.warn(f"aggregation={self.aggregation!r} with {reporting} reporting client(s) per round cannot "
                          f"outvote one bad report: use clients_per_round >= {ROBUST_MIN_CLIENTS}", stacklevel=2)
        self.round_settings()  # local_steps, batch_size and the method's zo_* values
        ALLOCATIONS.check(self.block_allocation)
        CLIENT_LR_POLICIES.check(self.client_lr_policy)
        if self.zorba_min_coverage < 1:
            raise ValueError(f"zorba_min_coverage must be >= 1 (got {self.zorba_min_coverage})")
        if self.heterogeneous and (self.per_client_seeds or METHODS[self.method].first_order):
            raise ValueError(f"block_allocation={self.block_allocation!r} / client_budgets aggregate each layer over "
                             "the clients that trained it, which needs shared seeds and a ZO method")
        if self.frozen_dtype is not None and not self.heterogeneous:
            raise ValueError(f"frozen_dtype={self.frozen_dtype!r} lowers the layers a client does not train, which "
                             "needs a heterogeneous run (block_allocation or client_budgets)")

    @property
    def heterogeneous(self) -> bool:
        """Clients train different layers (or declare budgets): the server allocates active sets each round."""
        return self.block_allocation != "none" or self.client_budgets is not None

    def budget_spent(self, flops: float) -> bool:
        return self.flop_budget is not None and flops >= self.flop_budget

    def evaluation_due(self, round_id: int, flops: float) -> bool:
        """Every ``eval_every`` rounds, and after the last round (by count or by FLOP budget)."""
        last = round_id == self.rounds - 1 or self.budget_spent(flops)
        return last or bool(self.eval_every and (round_id + 1) % self.eval_every == 0)

    def round_settings(self) -> RoundSettings:
        """The settings every party runs: the ``zo_*`` fields, with the method's fixed ones on top.

        The fields themselves are left as given, so ``dataclasses.replace(config, method=...)`` turns a
        FedSPZO config into its MeZO baseline and back without losing ``zo_p2`` or ``zo_split``.
        """
        return RoundSettings(zo=self.engine_settings(**METHODS[self.method].zo), lr=self.learning_rate,
                             weight_decay=self.weight_decay, local_steps=self.local_steps, batch_size=self.batch_size,
                             frozen_dtype=self.frozen_dtype)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, default in FINGERPRINT_NEUTRAL_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data | {"round_settings": self.round_settings().to_json()}


# Options added after runs were already on disk: left at these defaults they are not part of the config's dict, so
# a run that does not use them keeps its fingerprint (and resumes).
FINGERPRINT_NEUTRAL_DEFAULTS = {"client_budgets": None, "block_allocation": "none", "zorba_min_coverage": 1,
                                "client_lr_policy": "none", "server_lr": 1.0, "frozen_dtype": None}
