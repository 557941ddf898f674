"""Federation: protocol, validation, aggregation, replay, partitions, simulation, faults and resume."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_fedzo.engine import SeedScope, ZOEstimator, direction_seed
from hf_fedzo.engine.seeds import BLOCK2
from hf_fedzo.federation import (
    ClientReport,
    FederatedServer,
    ProtocolError,
    RoundInstruction,
    RoundRecord,
    ZOClient,
    aggregate_round,
    decode,
    encode,
    partition_dataset,
    simulate_federation,
)
from hf_fedzo.reporting import plots_available
from tests.federation_setup import batch_loss, checksum, client_data, config, tiny_model
from tests.launch import launch_two_processes

REPO = Path(__file__).resolve().parents[1]


def _report(server: FederatedServer, client: int, scale: float = 1.0, **overrides: object) -> ClientReport:
    shape = server.settings.scalar_shape
    values = dict(round=server.current.round, client_id=client, num_examples=10 + client,  # type: ignore[union-attr]
                  scalars=np.full(shape, scale * (client + 1), dtype=np.float32), loss_mean=1.0, loss_last=0.9)
    return ClientReport(**(values | overrides))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ protocol
def test_messages_round_trip_exactly() -> None:
    server = FederatedServer(config())
    server.start_round(0)
    client = server.current.sampled[0]  # type: ignore[union-attr]
    report = _report(server, client, scale=0.1)
    decoded = decode(encode(report), expect=ClientReport)
    assert isinstance(decoded, ClientReport)
    assert decoded.scalars.dtype == np.float32 and np.array_equal(decoded.scalars, report.scalars)
    server.receive(encode(report))
    server.finish_round()
    server.start_round(1)
    instruction = server.instruction(server.current.sampled[0])  # type: ignore[union-attr]
    assert decode(encode(instruction), expect=RoundInstruction) == instruction
    assert len(instruction.replay) == server.settings.local_steps


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda b: b"XXXX" + b[4:], "not an hf_fedzo message"),
    (lambda b: b[:4] + struct.pack("<H", 99) + b[6:], "protocol version 99"),
    (lambda b: b[:6] + bytes([9]) + b[7:], "unknown message kind"),
    (lambda b: b[:-3], "the header declares"),
    (lambda b: b[:5], "shorter than"),
    (lambda b: b[:12] + b"!" + b[13:], "malformed ClientReport"),
])
def test_malformed_bytes_are_refused(mangle, message: str) -> None:
    server = FederatedServer(config())
    server.start_round(0)
    data = encode(_report(server, server.current.sampled[0]))  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match=message):
        decode(mangle(data))


def test_oversized_message_is_refused_before_parsing() -> None:
    server = FederatedServer(config(), max_message_bytes=64)
    server.start_round(0)
    with pytest.raises(ProtocolError, match="over the 64-byte bound"):
        server.receive(encode(_report(server, server.current.sampled[0])))  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------- validation
def test_each_bad_report_is_rejected_and_nothing_of_it_applied() -> None:
    server = FederatedServer(config())
    sampled = server.start_round(0)
    outsider = next(k for k in range(4) if k not in sampled)
    good, other = sampled[0], sampled[1]
    nan = np.full(server.settings.scalar_shape, np.nan, dtype=np.float32)
    bad = {
        "is for round 5": _report(server, good, round=5),
        "unknown client": _report(server, 17, client_id=17),
        "not sampled": _report(server, outsider),
        "shape": _report(server, good, scalars=np.zeros((1, 1, 1), dtype=np.float32)),
        "NaN or infinity": _report(server, good, scalars=nan),
        "num_examples must be >= 1": _report(server, good, num_examples=0),
        "loss statistics are not finite": _report(server, good, loss_mean=float("inf")),
    }
    for message, report in bad.items():
        with pytest.raises(ProtocolError, match=message):
            server.receive(encode(report))
    server.receive(encode(_report(server, good)))
    with pytest.raises(ProtocolError, match="already accepted"):
        server.receive(encode(_report(server, good, scale=100.0)))
    server.receive(encode(_report(server, other)))
    records = server.finish_round()

    clean = FederatedServer(config())
    clean.start_round(0)
    clean.receive(encode(_report(clean, good)))
    clean.receive(encode(_report(clean, other)))
    assert records == clean.finish_round()


def test_config_errors_name_the_field() -> None:
    for kwargs, name in [({"clients_per_round": 9}, "clients_per_round"), ({"dropout": 1.0}, "dropout"),
                         ({"method": "sgd"}, "method"), ({"partition": "zipf"}, "partition"),
                         ({"aggregation": "median", "per_client_seeds": True}, "aggregation='median'"),
                         ({"zo_eps": 0.0}, "zo_eps"), ({"local_steps": 0}, "local_steps"),
                         ({"server_lr": 0.0}, "server_lr"), ({"server_lr": 2.0, "method": "fedavg"}, "server_lr")]:
        with pytest.raises(ValueError, match=name):
            config(**kwargs)
    assert config(method="mezo").round_settings().zo.split == "none"


# --------------------------------------------------------------------------------------- aggregation
def test_aggregation_rules_apply_per_seed_across_clients() -> None:
    cfg = config(local_steps=1, zo_p2=1)
    server = FederatedServer(cfg)
    server.start_round(0)
    values = [1.0, 2.0, 30.0]
    reports = [ClientReport(0, k, n, np.full((1, 1, 1), v, dtype=np.float32), 1.0, 1.0)
               for k, n, v in zip((0, 1, 2), (1, 1, 2), values, strict=True)]

    def scalar(**kw: object) -> float:
        (record,) = aggregate_round(0, reports, cfg.round_settings(), cfg.seed, **kw)  # type: ignore[arg-type]
        assert record.update.step_seeds == (SeedScope(cfg.seed, 0, 0).step_seed(0),)
        return record.update.scalars[0][0][0]

    assert scalar(weighting="examples") == pytest.approx((1 + 2 + 60) / 4)
    assert scalar(weighting="uniform") == pytest.approx(11.0)
    assert scalar(aggregation="median") == 2.0
    assert scalar(aggregation="trimmed_mean", trim_fraction=0.34) == 2.0


def test_mean_of_client_updates_equals_the_aggregated_replay() -> None:
    """Shared seeds: Σ_k w_k (−lr g_k z) == −lr (Σ_k w_k g_k) z, so one replay reproduces FedAvg of ZO steps."""
    cfg = config(local_steps=1, zo_split="none")
    data = client_data()
    batch = data[0].round_batches(0, 0, 0, 1, 4)[0]
    reference = tiny_model()
    estimator = ZOEstimator(reference, cfg.round_settings().zo)
    estimator.prepare(lambda: batch_loss(reference, batch))
    before = [p.tensor.clone() for p in estimator.parameters]
    reports = [ClientReport(0, k, 10 * (k + 1), np.random.default_rng(k).normal(size=(1, 1, 2)).astype(np.float32),
                            1.0, 1.0) for k in range(3)]
    (record,) = aggregate_round(0, reports, cfg.round_settings(), cfg.seed)
    estimator.apply_update(record.update.pairs(), cfg.learning_rate)
    weights = np.array([10, 20, 30]) / 60
    seed = SeedScope(cfg.seed, 0, 0).step_seed(0)
    for parameter, start in zip(estimator.parameters, before, strict=True):
        expected = start.double().clone()
        for weight, report in zip(weights, reports, strict=True):
            for j in range(2):
                z = estimator.applier.direction(parameter, direction_seed(seed, BLOCK2, 0, j))
                expected -= cfg.learning_rate * weight * float(report.scalars[0, 0, j]) / 2 * z.double()
        assert torch.allclose(parameter.tensor.double(), expected, atol=1e-6)


@pytest.mark.parametrize("per_client_seeds", [False, True])
def test_server_lr_scales_the_applied_step_and_nothing_else(per_client_seeds: bool) -> None:
    """The records carry lr · server_lr with the same scalars, so a one-step round moves the model server_lr
    times as far; the default leaves the log, and with it the config's fingerprint, untouched."""
    assert "server_lr" not in config().to_dict() and config(server_lr=4.0).to_dict()["server_lr"] == 4.0
    cfg = config(local_steps=1, per_client_seeds=per_client_seeds)
    reports = [ClientReport(0, k, 10 * (k + 1), np.random.default_rng(k).normal(size=(1, 1, 2)).astype(np.float32),
                            1.0, 1.0) for k in range(3)]
    plain = aggregate_round(0, reports, cfg.round_settings(), cfg.seed, shared_seeds=not per_client_seeds)
    scaled = aggregate_round(0, reports, cfg.round_settings(), cfg.seed, shared_seeds=not per_client_seeds,
                             server_lr=4.0)
    assert [r.update.lr for r in plain] == [cfg.learning_rate] and [r.update.lr for r in scaled] == [4 * 5e-3]
    assert [r.update.scalars for r in plain] == [r.update.scalars for r in scaled]

    moved = {}
    start = list(tiny_model().parameters())
    for server_lr in (1.0, 4.0):
        model = tiny_model()
        simulate_federation(model, batch_loss, client_data(), config(local_steps=1, rounds=1, server_lr=server_lr,
                                                                     per_client_seeds=per_client_seeds))
        moved[server_lr] = [(p - q).detach().double() for p, q in zip(model.parameters(), start, strict=True)]
    assert any(float(d.abs().max()) > 1e-4 for d in moved[1.0])
    for one, four, weight in zip(moved[1.0], moved[4.0], start, strict=True):
        # Both runs carry the same float32 rounding residue of the perturb/restore walk and round their own
        # update: a few ulps of the weights, far below the steps compared here (1e-4 and more).
        ulps = 16 * torch.finfo(torch.float32).eps * float(weight.detach().abs().max())
        assert torch.allclose(four, 4 * one, rtol=1e-3, atol=ulps)


# -------------------------------------------------------------------------------------------- replay
@pytest.mark.parametrize("local_steps", [1, 2])
def test_standalone_clients_replay_to_the_global_model_bit_for_bit(local_steps: int) -> None:
    """Three clients with their own replicas, two sampled per round: each replays what it missed."""
    cfg = config(num_clients=3, clients_per_round=2, rounds=4, local_steps=local_steps)
    data = client_data(num_clients=3)
    server = FederatedServer(cfg)
    clients = [ZOClient(tiny_model(), batch_loss) for _ in range(3)]
    for round_id in range(cfg.rounds):
        for k in server.start_round(round_id):
            instruction = decode(encode(server.instruction(k)), expect=RoundInstruction)
            assert isinstance(instruction, RoundInstruction)
            batches = data[k].round_batches(cfg.seed, round_id, k, cfg.local_steps, cfg.batch_size)
            report, _ = clients[k].handle(instruction, batches, len(data[k].examples))
            server.receive(encode(report))
        server.finish_round()

    simulated = tiny_model()
    simulate_federation(simulated, batch_loss, data, cfg)
    probe = data[0].round_batches(0, 0, 0, 1, cfg.batch_size)[0]
    for k, client in enumerate(clients):
        missing = [r for r in server.log if r.round > client.synced_round]
        client.replay(missing, server.completed_round, cfg.round_settings(), probe, server.synced[k])
        for a, b in zip(client.model.parameters(), simulated.parameters(), strict=True):
            assert torch.equal(a, b)
    assert checksum(simulated) != checksum(tiny_model())


def test_client_refuses_a_replay_that_skips_rounds() -> None:
    cfg = config()
    client = ZOClient(tiny_model(), batch_loss)
    probe = client_data()[0].round_batches(0, 0, 0, 1, 4)[0]
    with pytest.raises(ProtocolError, match="synced through round -1"):
        client.replay([], 3, cfg.round_settings(), probe, replay_after=2)


def test_a_client_that_lost_its_state_gets_the_log_from_where_it_is() -> None:
    """The server resends from the round the client holds; the client then answers like any other."""
    cfg = config(num_clients=3, clients_per_round=3, rounds=3)
    data = client_data(num_clients=3)
    server = FederatedServer(cfg)
    for round_id in range(2):
        for k in server.start_round(round_id):
            batches = data[k].round_batches(cfg.seed, round_id, k, cfg.local_steps, cfg.batch_size)
            report, _ = ZOClient(tiny_model(), batch_loss).handle(
                server.instruction(k, replay_after=-1), batches, len(data[k].examples))
            server.receive(encode(report))
        server.finish_round()
    server.start_round(2)
    usual = server.instruction(0)  # synced through round 0 by its round-1 instruction: round 1's record is new
    assert usual.replay_after == 0 and {r.round for r in usual.replay} == {1}
    fresh = server.instruction(0, replay_after=-1)
    assert fresh.replay_after == -1 and list(fresh.replay) == server.log
    with pytest.raises(ProtocolError, match=r"must be in \[-1, 1\]"):
        server.instruction(1, replay_after=2)


def test_local_steps_leave_the_replica_untouched() -> None:
    cfg = config(local_steps=3)
    model = tiny_model()
    before = [p.clone() for p in model.parameters()]
    client = ZOClient(model, batch_loss)
    batches = client_data()[0].round_batches(0, 0, 0, 3, 4)
    scalars, losses, work = client.run_local_steps(0, cfg.seed, 0, cfg.round_settings(), batches)
    assert scalars.shape == (3, 1, 2) and len(losses) == 3 and work.forwards_block1 == 3 * 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------------------------------- partitions
def test_partitions_are_disjoint_seeded_and_shaped_as_asked() -> None:
    labels = [i % 2 for i in range(200)]
    domains = ["movie"] * 120 + ["tweets"] * 80
    dataset = Dataset.from_dict({"label": labels, "domain": domains})
    for method, options in [("iid", {}), ("dirichlet", {"alpha": 0.1}), ("domain", {})]:
        parts = partition_dataset(dataset, 4, method, seed=3, **options)
        assert sorted(i for p in parts for i in p) == list(range(200))
        assert parts == partition_dataset(dataset, 4, method, seed=3, **options)
    skewed = partition_dataset(dataset, 4, "dirichlet", seed=3, alpha=0.1)
    assert max(abs(np.mean([labels[i] for i in p]) - 0.5) for p in skewed) > 0.3
    by_domain = partition_dataset(dataset, 4, "domain", seed=3)
    assert all(len({domains[i] for i in p}) == 1 for p in by_domain)
    with pytest.raises(ValueError, match="num_clients=5 is fewer"):
        partition_dataset(Dataset.from_dict({"domain": [str(i) for i in range(6)]}), 5, "domain")


# ---------------------------------------------------------------------------------------- simulation
def test_dropout_completes_the_round_with_the_rest(tmp_path: Path) -> None:
    cfg = config(num_clients=4, clients_per_round=4, dropout=0.5, rounds=2, local_steps=1)
    result = simulate_federation(tiny_model(), batch_loss, client_data(), cfg, output_dir=tmp_path)
    for record in result.rounds:
        assert len(record.dropped) == 2 and len(record.bytes_up) == 2
        assert set(record.dropped).isdisjoint(record.bytes_up)
    saved = json.loads((tmp_path / "federation_results.json").read_text())
    assert [r["dropped"] for r in saved["rounds"]] == [r.dropped for r in result.rounds]


class _Crash(RuntimeError):
    pass


def test_resume_after_a_kill_mid_round_is_bit_exact(tmp_path: Path) -> None:
    cfg = config()
    uninterrupted = tiny_model()
    simulate_federation(uninterrupted, batch_loss, client_data(), cfg)

    calls_in_round_2 = {"n": 0, "armed": False}

    def arm_after_round_1(record: RoundRecord) -> None:
        calls_in_round_2["armed"] = record.round == 1

    def crashing_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        if calls_in_round_2["armed"]:
            calls_in_round_2["n"] += 1
            if calls_in_round_2["n"] == 9:  # second client of round 2, mid-step
                raise _Crash
        return batch_loss(model, batch)

    with pytest.raises(_Crash):
        simulate_federation(tiny_model(), crashing_loss, client_data(), cfg, output_dir=tmp_path,
                            on_round_end=arm_after_round_1)
    state = json.loads((tmp_path / "federation_state.json").read_text())
    assert state["server"]["completed_round"] == 1

    resumed = tiny_model()
    result = simulate_federation(resumed, batch_loss, client_data(), cfg, output_dir=tmp_path)
    assert [r.round for r in result.rounds] == [0, 1, 2, 3]
    for a, b in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="belongs to a different run"):
        simulate_federation(tiny_model(), batch_loss, client_data(), config(learning_rate=1.0), output_dir=tmp_path)


def test_simulation_writes_results_and_plots(tmp_path: Path) -> None:
    cfg = config(rounds=2, eval_every=1)
    evaluate = lambda model: {"accuracy": 0.5}  # noqa: E731 - the loop, not the metric, is under test
    result = simulate_federation(tiny_model(), batch_loss, client_data(), cfg, evaluate=evaluate,
                                 output_dir=tmp_path)
    assert result.final_metrics == {"accuracy": 0.5}
    assert result.rounds[0].work.forwards_block1 == 3 * 2 * 2 and result.rounds[0].work.forwards_block2 == 3 * 2 * 4
    assert all(0 < b < 400 for b in result.rounds[0].bytes_up.values())
    saved = json.loads((tmp_path / "federation_results.json").read_text())
    assert [RoundRecord.from_dict(r) for r in saved["rounds"]] == result.rounds
    if not plots_available():  # the core install: results without figures
        assert not list(tmp_path.glob("*.png"))
        return
    for name in ("rounds", "flops", "bytes"):
        assert (tmp_path / f"accuracy_vs_{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_two_process_simulation_matches_one_process(tmp_path: Path) -> None:
    launch_two_processes(REPO / "tests" / "federation_script.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0] == ranks[1]

    single = tiny_model()
    result = simulate_federation(single, batch_loss, client_data(), config(dropout=0.34, local_steps=1))
    assert checksum(single) == ranks[0]["checksum"]
    assert [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in result.rounds] == ranks[0]["rounds"]
    assert any(r.dropped for r in result.rounds)


def test_fedavg_baseline_moves_only_adapters_and_uploads_tensors(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import LoraConfig, get_peft_model

    import hf_fedzo.federation.results
    from hf_fedzo.federation import RoundPlot, simulate_fedavg

    real, drawn = hf_fedzo.federation.results.plot_rounds, []

    def recording(output, config, result, plot=None):
        drawn.append(plot)
        real(output, config, result, plot)

    monkeypatch.setattr(hf_fedzo.federation.results, "plot_rounds", recording)

    torch.manual_seed(0)
    model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = config(rounds=2, local_steps=2, dropout=0.34)
    plot = RoundPlot(label="FedAvg-LoRA", start=0.25, references=[("majority class", 0.5)], ylabel="accuracy (4)")
    result = simulate_fedavg(model, batch_loss, client_data(), cfg, client_lr=1e-2,
                             evaluate=lambda m: {"accuracy": 0.5}, output_dir=tmp_path, plot=plot)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, adapters[n]) for n, p in model.named_parameters() if p.requires_grad)
    adapter_bytes = 4 * sum(p.numel() for p in adapters.values())
    for record in result.rounds:
        assert len(record.dropped) == 1 and record.flops > 0
        assert all(b > adapter_bytes for b in record.bytes_up.values())
    assert drawn == [plot]  # the caller's labels reach the one drawing
    assert (tmp_path / "accuracy_vs_bytes.png").is_file() == plots_available()


def test_fedavg_plots_are_titled_fedavg_without_a_caller_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hf_fedzo.federation.results
    from hf_fedzo.federation import simulate_fedavg

    drawn = []
    monkeypatch.setattr(hf_fedzo.federation.results, "plot_rounds",
                        lambda output, config, result, plot=None: drawn.append(plot))
    cfg = config(rounds=1, local_steps=1)
    assert cfg.method != "fedavg"  # simulate_fedavg runs FedAvg whatever method the config names
    simulate_fedavg(tiny_model(), batch_loss, client_data(), cfg, client_lr=1e-2,
                    evaluate=lambda m: {"accuracy": 0.5}, output_dir=tmp_path)
    assert [p.label for p in drawn] == ["fedavg"]


# ------------------------------------------------------------------------------------ zo_layers_path
class _Block(torch.nn.Module):
    """A residual block that is no ``GradientCheckpointingLayer``: its stack cannot be found automatically."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + torch.tanh(self.mix(hidden))


class _PlainStack(torch.nn.Module):
    def __init__(self, vocab: int = 64, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(_Block(width) for _ in range(depth))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for block in self.blocks:
            hidden = block(hidden)
        return torch.nn.functional.cross_entropy(self.head(hidden).flatten(0, 1), labels.flatten())


def _plain_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["input_ids"] % 64, batch["labels"] % 64)


def test_a_model_that_needs_zo_layers_path_can_be_federated(tmp_path: Path) -> None:
    from hf_fedzo.engine import UnsupportedModelError

    cfg = config(rounds=2, zo_split="2", zo_layers_path="blocks")
    assert cfg.round_settings().zo.layers_path == "blocks"
    with pytest.raises(UnsupportedModelError, match="zo_layers_path"):
        simulate_federation(_PlainStack(), _plain_loss, client_data(), config(rounds=2, zo_split="2"))

    torch.manual_seed(0)
    model = _PlainStack()
    start = [p.detach().clone() for p in model.parameters()]
    result = simulate_federation(model, _plain_loss, client_data(), cfg, output_dir=tmp_path)
    assert [r.round for r in result.rounds] == [0, 1] and all(r.work.forwards_block1 > 0 for r in result.rounds)
    assert any(not torch.equal(a, b) for a, b in zip(start, model.parameters(), strict=True))
    # A fresh party replaying the saved log with the round settings it is sent reaches the same weights.
    server = FederatedServer(cfg)
    server.load_state_dict(json.loads((tmp_path / "federation_state.json").read_text())["server"])
    torch.manual_seed(0)
    replica = ZOClient(_PlainStack(), _plain_loss)
    probe = client_data()[0].round_batches(cfg.seed, 0, 0, 1, cfg.batch_size)[0]
    replica.replay(server.log, server.completed_round, server.settings, probe)
    assert all(torch.equal(a, b) for a, b in zip(replica.model.parameters(), model.parameters(), strict=True))
