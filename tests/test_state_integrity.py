"""A corrupted federation state file is refused on resume, naming the file and the first bad record."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hf_fedzo.federation import RoundRecord, simulate_federation
from hf_fedzo.federation.integrity import StateFileError, read_state
from tests.federation_setup import batch_loss, client_data, config, tiny_model

STATE = "federation_state.json"


class _Kill(Exception):
    pass


def _kill_after_round_2(record: RoundRecord) -> None:
    if record.round == 2:
        raise _Kill


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The state of a 4-round federation killed after its third round."""
    out = tmp_path_factory.mktemp("fed")
    with pytest.raises(_Kill):
        simulate_federation(tiny_model(), batch_loss, client_data(), config(), output_dir=out,
                            on_round_end=_kill_after_round_2)
    return (out / STATE).read_bytes()


def _scalars(record: dict, change: Callable[[np.ndarray], None]) -> None:
    values = np.frombuffer(base64.b64decode(record["scalars"]), dtype="<f4").copy()
    change(values)
    record["scalars"] = base64.b64encode(values.tobytes()).decode()


def _edit_scalar(state: dict) -> None:
    _scalars(state["server"]["log"][1], lambda v: v.__setitem__(0, v[0] + 1))


def _nan_scalar(state: dict) -> None:
    _scalars(state["server"]["log"][0], lambda v: v.__setitem__(0, np.nan))


def _remove_record(state: dict) -> None:
    del state["server"]["log"][2]


def _jump_round(state: dict) -> None:
    state["server"]["completed_round"] = 6


def _edit_lr(state: dict) -> None:
    state["server"]["log"][3]["lr"] = 0.5


def _edit_history(state: dict) -> None:
    state["rounds"][0]["train_loss"] = 0.0


@pytest.mark.parametrize(("edit", "named"), [
    (_edit_scalar, "log record 1 \\(round 0\\) does not match its checksum"),
    (_nan_scalar, "log record 0 \\(round 0\\) does not match"),
    (_remove_record, "log record 2 .* does not match"),
    (_jump_round, "completed_round, sync marks or round history"),
    (_edit_lr, "log record 3 .* does not match"),
    (_edit_history, "completed_round, sync marks or round history"),
])
def test_edited_state_is_refused_naming_the_file_and_record(finished: bytes, tmp_path: Path, edit, named: str) -> None:
    state = json.loads(finished)
    edit(state)
    (tmp_path / STATE).write_text(json.dumps(state))
    before = (tmp_path / STATE).read_bytes()
    with pytest.raises(StateFileError, match=f"{tmp_path / STATE}: {named}"):
        simulate_federation(tiny_model(), batch_loss, client_data(), config(), output_dir=tmp_path)
    assert (tmp_path / STATE).read_bytes() == before  # refused before anything was written


@pytest.mark.parametrize(("content", "named"), [
    (b"", "the file is empty"), (b"   \n", "the file is empty"), (b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8"),
    (b'{"fingerprint": "abc", "server": {"log": [', "not valid JSON \\(line 1"), (b"[1, 2]", "not a federation"),
])
def test_unreadable_state_is_one_line_naming_the_file(tmp_path: Path, content: bytes, named: str) -> None:
    (tmp_path / STATE).write_bytes(content)
    with pytest.raises(StateFileError, match=named) as info:
        simulate_federation(tiny_model(), batch_loss, client_data(), config(), output_dir=tmp_path)
    assert str(tmp_path / STATE) in str(info.value) and "\n" not in str(info.value)


def test_truncated_state_is_refused(finished: bytes, tmp_path: Path) -> None:
    (tmp_path / STATE).write_bytes(finished[: len(finished) // 2])
    with pytest.raises(StateFileError, match="truncated or damaged"):
        read_state(tmp_path / STATE)


def test_state_without_a_chain_is_refused(finished: bytes, tmp_path: Path) -> None:
    state = json.loads(finished)
    del state["integrity"]
    (tmp_path / STATE).write_text(json.dumps(state))
    with pytest.raises(StateFileError, match="no checksum chain"):
        read_state(tmp_path / STATE)


def test_untouched_state_verifies_and_resumes(finished: bytes, tmp_path: Path) -> None:
    (tmp_path / STATE).write_bytes(finished)
    assert read_state(tmp_path / STATE)["server"]["completed_round"] == 2
    result = simulate_federation(tiny_model(), batch_loss, client_data(), config(), output_dir=tmp_path)
    assert [r.round for r in result.rounds] == [0, 1, 2, 3]
