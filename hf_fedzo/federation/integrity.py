"""The federation state file, sealed with a checksum chain and verified before a resumed run trusts it.

A resumed federation replays the state file's log onto fresh initial weights, so an edited scalar, a
removed record or a changed ``completed_round`` would silently yield a different model. Each log record
therefore carries a sha256 that also covers the previous record's (a chain: the first bad record is
found, and removing or reordering records breaks every later link), and one more digest covers the
rest of the state (sync marks, completed round, per-round history) and the chain's head.

This guards against corruption and careless edits, not against someone who rewrites the file and its
checksums on purpose (there is no key). An unreadable file (empty, truncated, binary) is refused too.
Every refusal is a :class:`StateFileError` naming the file and what is wrong, in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_fedzo.reporting import write_json

__all__ = ["StateFileError", "read_state", "restore_server", "seal_state", "verify_state", "write_state"]

INTEGRITY_VERSION = 1
_GENESIS = "hf_fedzo.federation_state"


class StateFileError(ValueError):
    """A federation state file that cannot be trusted for a resume; nothing of it has been applied."""


def _finite_or_none(value: Any) -> Any:
    # write_json stores NaN/inf as null: hash what the file will hold, or a reloaded state never verifies.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _digest(previous: str, value: Any) -> str:
    text = json.dumps(_finite_or_none(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()


def _chain(log: Sequence[Any]) -> list[str]:
    links, previous = [], _GENESIS
    for record in log:
        previous = _digest(previous, record)
        links.append(previous)
    return links


def _rest(state: Mapping[str, Any]) -> dict[str, Any]:
    server = {k: v for k, v in state["server"].items() if k != "log"}
    return {"fingerprint": state["fingerprint"], "server": server, "rounds": state["rounds"]}


def seal_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (fingerprint, server state dict, rounds) plus its ``integrity`` block."""
    chain = _chain(state["server"]["log"])
    head = chain[-1] if chain else _GENESIS
    return {**state, "integrity": {"version": INTEGRITY_VERSION, "log_chain": chain,
                                   "digest": _digest(head, _rest(state))}}


def verify_state(state: Any, path: str | Path) -> None:
    """Raise :class:`StateFileError` naming ``path`` and the first record or field that does not match."""
    where = f"federation state {path}"
    if not isinstance(state, dict) or not {"fingerprint", "server", "rounds"} <= set(state):
        raise StateFileError(f"{where}: not a federation state (expected fingerprint, server and rounds)")
    integrity = state.get("integrity")
    if not isinstance(integrity, dict) or not isinstance(integrity.get("log_chain"), list):
        raise StateFileError(f"{where}: no checksum chain (written by an older hf_fedzo or edited); "
                             "it cannot be verified: start a fresh output_dir or pass resume=False")
    server = state["server"]
    log = server.get("log") if isinstance(server, dict) else None
    if not isinstance(log, list):
        raise StateFileError(f"{where}: server.log is missing or not a list")
    recorded, actual = integrity["log_chain"], _chain(log)
    for index, (want, have) in enumerate(zip(recorded, actual, strict=False)):
        if want != have:
            round_id = log[index].get("round") if isinstance(log[index], dict) else "?"
            raise StateFileError(f"{where}: log record {index} (round {round_id}) does not match its checksum: "
                                 "the record or one before it was edited")
    if len(recorded) != len(actual):
        raise StateFileError(f"{where}: the checksum chain has {len(recorded)} records, the log {len(actual)}: "
                             f"record {min(len(recorded), len(actual))} was removed or added")
    head = actual[-1] if actual else _GENESIS
    if integrity.get("digest") != _digest(head, _rest(state)):
        raise StateFileError(f"{where}: completed_round, sync marks or round history do not match their checksum")
    rounds = state["rounds"]
    completed = server.get("completed_round")
    if not isinstance(rounds, list) or completed != len(rounds) - 1:
        raise StateFileError(f"{where}: completed_round {completed} does not match the {len(rounds)} rounds recorded")


def read_state(path: str | Path) -> dict[str, Any]:
    """Read and verify a state file; any failure is one :class:`StateFileError` line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise StateFileError(f"federation state {path}: not UTF-8 text (byte {err.start}); damaged") from err
    if not text.strip():
        raise StateFileError(f"federation state {path}: the file is empty")
    try:
        state = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        detail = f"line {err.lineno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise StateFileError(f"federation state {path}: not valid JSON ({detail}); truncated or damaged") from err
    verify_state(state, path)
    return state


def restore_server(server: Any, state: Mapping[str, Any], path: str | Path) -> None:
    """``server.load_state_dict`` of a verified state; a record the protocol refuses names the file too."""
    try:
        server.load_state_dict(state["server"])
    except (KeyError, TypeError, ValueError) as err:  # ProtocolError is a ValueError
        raise StateFileError(f"federation state {path}: {type(err).__name__}: {err}") from err


def write_state(path: str | Path, fingerprint: str, server_state: Mapping[str, Any],
                rounds: Sequence[Mapping[str, Any]]) -> Path:
    """Seal and write the state atomically."""
    return write_json(path, seal_state({"fingerprint": fingerprint, "server": dict(server_state),
                                        "rounds": list(rounds)}))
