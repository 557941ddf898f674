"""Hostile or careless federation messages: bounded, type-checked, always a ProtocolError, never a stall."""

from __future__ import annotations

import json
import logging
import struct
import warnings

import numpy as np
import pytest

from hf_fedzo.federation import ClientReport, FederatedServer, ProtocolError, RoundInstruction, decode, encode
from hf_fedzo.federation.aggregation import aggregate_round, trim_count
from hf_fedzo.federation.protocol import MAGIC, PROTOCOL_VERSION
from tests.federation_setup import config


def _server(**overrides: object) -> FederatedServer:
    server = FederatedServer(config(**overrides))
    server.start_round(0)
    return server


def _payload(server: FederatedServer, client: int, **fields: object) -> dict:
    shape = server.settings.scalar_shape
    report = ClientReport(0, client, 10, np.full(shape, 0.5, dtype=np.float32), 1.0, 0.9)
    return report.to_json() | fields


def _wire(payload: object, kind: int = ClientReport.KIND) -> bytes:
    body = json.dumps(payload).encode()
    return struct.pack("<4sHBI", MAGIC, PROTOCOL_VERSION, kind, len(body)) + body


@pytest.mark.parametrize(("field", "value", "named"), [
    ("client_id", 0.7, "client_id must be an integer"),
    ("client_id", "0", "client_id must be an integer"),
    ("client_id", True, "client_id must be an integer"),
    ("round", 0.5, "round must be an integer"),
    ("round", -1, "round=-1 is outside"),
    ("num_examples", 10**309, "num_examples=.* is outside"),
    ("num_examples", 1e308, "num_examples must be an integer"),
    ("num_examples", 10**13, "num_examples=.* is outside"),
    ("loss_mean", "1.0", "loss_mean must be a number"),
    ("loss_last", 10**400, "loss_last is too large"),
    ("scalars", 5, "scalars must be a base64 string"),
    ("shape", [1, 1], "is not \\(local steps, P1, P2\\)"),
    ("shape", [-1, -1, 4], "shape=-1 is outside"),
    ("shape", "abc", "shape must be a list"),
])
def test_report_fields_are_type_checked_and_bounded(field: str, value: object, named: str) -> None:
    server = _server()
    client = server.current.sampled[0]  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match=named):
        server.receive(_wire(_payload(server, client, **{field: value})))
    assert not server.accepted_reports()


def test_every_malformed_payload_is_a_protocol_error() -> None:
    server = _server()
    client = server.current.sampled[0]  # type: ignore[union-attr]
    deep = "[" * 100_000 + "]" * 100_000
    for body in (deep.encode(), b"[1, 2]", b"null", b"\xff\xfe", json.dumps({"client_id": 0}).encode()):
        data = struct.pack("<4sHBI", MAGIC, PROTOCOL_VERSION, ClientReport.KIND, len(body)) + body
        with pytest.raises(ProtocolError):
            server.receive(data)
    payload = _payload(server, client)
    del payload["loss_last"]
    with pytest.raises(ProtocolError, match="missing field 'loss_last'"):
        server.receive(_wire(payload))


def test_instruction_fields_are_type_checked() -> None:
    server = _server()
    good = server.instruction(server.current.sampled[0]).to_json()  # type: ignore[union-attr]
    for field, value, named in (("seed_base", 1.5, "seed must be a decimal string"),
                                ("replay", 3, "replay must be a list"), ("settings", [], "settings must be"),
                                ("replay_after", -2, "replay_after=-2 is outside")):
        with pytest.raises(ProtocolError, match=named):
            decode(_wire(good | {field: value}, RoundInstruction.KIND))
    for key, value, named in (("p1", 1.5, "p1 must be an integer"), ("lr", float("nan"), "lr must be a finite"),
                              ("eps", "0.1", "eps must be a finite"), ("local_steps", True, "local_steps must be")):
        settings = dict(good["settings"])
        if key in settings["zo"]:  # the engine's settings travel as one nested object
            settings["zo"] = settings["zo"] | {key: value}
        else:
            settings[key] = value
        with pytest.raises(ProtocolError, match=named):
            decode(_wire(good | {"settings": settings}, RoundInstruction.KIND))


def test_huge_counts_neither_stall_nor_erase_a_round() -> None:
    """Two reports at the count bound (1e12; 1e308 is refused): the round finishes, nothing overflows."""
    server = _server(clients_per_round=4)
    sampled = server.current.sampled  # type: ignore[union-attr]
    for k in sampled:
        count = 10**12 if k in sampled[:2] else 10
        server.receive(_wire(_payload(server, k, num_examples=count)))
    (first, *_) = server.finish_round()
    assert np.isfinite(first.update.scalars).all() and first.update.scalars[0][0][0] == pytest.approx(0.5)
    server.start_round(1)  # the federation continues


def test_one_inflated_count_cannot_take_over_the_mean() -> None:
    """A sign-flipped client claiming 1e12 examples: its weight is capped at max_weight_ratio x the median."""
    server = _server(clients_per_round=4, local_steps=1)
    sampled = server.current.sampled  # type: ignore[union-attr]
    shape = server.settings.scalar_shape
    for k in sampled:
        attacker = k == sampled[0]
        server.receive(encode(ClientReport(0, k, 10**12 if attacker else 10,
                                           np.full(shape, -1.0 if attacker else 1.0, dtype=np.float32), 1.0, 1.0)))
    (record,) = server.finish_round()
    # capped at 10 x 10 examples: weight 100/130 for -1, 30/130 for +1
    assert record.update.scalars[0][0][0] == pytest.approx((30 - 100) / 130)


def test_an_absurd_scalar_is_clipped_to_the_rounds_scale(caplog: pytest.LogCaptureFixture) -> None:
    server = _server(clients_per_round=4, local_steps=1)
    sampled = server.current.sampled  # type: ignore[union-attr]
    shape = server.settings.scalar_shape
    for k in sampled:
        value = 3.4e38 if k == sampled[0] else 1.0
        server.receive(encode(ClientReport(0, k, 10, np.full(shape, value, dtype=np.float32), 1.0, 1.0)))
    with caplog.at_level(logging.WARNING):
        (record,) = server.finish_round()
    assert max(abs(v) for v in np.ravel(record.update.scalars)) <= (10 + 3) / 4 + 1e-6
    assert f"client {sampled[0]}" in caplog.text and "clipped" in caplog.text


def test_honest_reports_aggregate_exactly_as_before_screening() -> None:
    """Inside the bounds nothing changes: the server's records equal plain aggregation, bit for bit."""
    server = _server(clients_per_round=4)
    sampled = server.current.sampled  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    reports = [ClientReport(0, k, 10 + 3 * k, rng.normal(size=server.settings.scalar_shape).astype(np.float32),
                            1.0, 1.0) for k in sampled]
    for report in reports:
        server.receive(encode(report))
    assert server.finish_round() == aggregate_round(0, reports, server.settings, server.config.seed)
    assert not server.clipped


@pytest.mark.parametrize(("clients", "cut"), [(2, 0), (3, 1), (4, 1), (5, 1), (9, 1), (10, 1), (20, 2)])
def test_default_trim_cuts_at_least_one_value_per_side(clients: int, cut: int) -> None:
    assert trim_count(clients, 0.1) == cut
    assert trim_count(clients, 0.0) == 0


def test_trimmed_mean_resists_one_attacker_among_four() -> None:
    cfg = config(local_steps=1, zo_p2=1, aggregation="trimmed_mean", clients_per_round=4)
    reports = [ClientReport(0, k, 10, np.full((1, 1, 1), 1e6 if k == 0 else 1.0, dtype=np.float32), 1.0, 1.0)
               for k in range(4)]
    (record,) = aggregate_round(0, reports, cfg.round_settings(), cfg.seed, aggregation="trimmed_mean")
    assert record.update.scalars[0][0][0] == 1.0


def test_robust_rules_warn_when_they_cannot_be_robust() -> None:
    with pytest.warns(UserWarning, match="cannot outvote"):
        config(aggregation="median", clients_per_round=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config(aggregation="median", clients_per_round=3)


def test_per_client_seed_records_never_overflow() -> None:
    """Pre-weighted scalars of two clients at the float32 limit saturate instead of becoming inf."""
    cfg = config(local_steps=1, per_client_seeds=True, clients_per_round=2)
    big = np.full(cfg.round_settings().scalar_shape, 3.4e38, dtype=np.float32)
    reports = [ClientReport(0, 0, 1, big, 1.0, 1.0), ClientReport(0, 1, 10**12, big, 1.0, 1.0)]
    (record,) = aggregate_round(0, reports, cfg.round_settings(), cfg.seed, shared_seeds=False)
    assert np.isfinite(record.update.scalars).all()
    honest = [ClientReport(0, k, 10 + k, np.random.default_rng(k).normal(size=big.shape).astype(np.float32), 1.0,
                           1.0) for k in range(2)]
    (record,) = aggregate_round(0, honest, cfg.round_settings(), cfg.seed, shared_seeds=False)
    weights = np.array([10, 11]) / 21
    expected = np.stack([r.scalars[0] for r in honest]) * (2 * weights).astype(np.float32)[:, None, None]
    assert np.array_equal(np.asarray(record.update.scalars, dtype=np.float32), expected)  # bit for bit as before


def test_rejected_reports_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    server = _server()
    with caplog.at_level(logging.WARNING), pytest.raises(ProtocolError):
        server.receive(_wire(_payload(server, server.current.sampled[0], round=3)))  # type: ignore[union-attr]
    assert "rejected" in caplog.text and "round 3" in caplog.text
