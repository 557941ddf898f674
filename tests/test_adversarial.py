"""A table of hostile or careless inputs driven through every public entry point.

For each: the documented exception type, a message naming the offending field or file, and no file
outside the test's temporary folder changed. Tiny models and files only: the whole table runs in seconds.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.data import DataError, load_local_files
from hf_fedzo.federation import (
    ClientReport,
    FederatedServer,
    ProtocolError,
    RoundInstruction,
    decode,
    simulate_federation,
)
from hf_fedzo.federation.integrity import StateFileError, read_state
from hf_fedzo.federation.protocol import MAGIC, PROTOCOL_VERSION
from hf_fedzo.hub import PushError, push_run
from hf_fedzo.trajectory import TrajectoryMismatchError, from_trajectory, load_trajectory, save_trajectory
from tests.federation_setup import batch_loss, client_data, config, tiny_model
from tests.test_recipes import load_recipe
from tests.test_trainer import pattern_dataset
from tests.tiny_models import build_bpe_tokenizer, llama, roberta_mlm

REPO = Path(__file__).resolve().parents[1]
_IGNORED = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", ".venv-flower"}


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Path, dict[str, Any]], Any]
    error: type[BaseException]
    named: str  # regex the message must match; "{tmp}" stands for the test's temporary folder


# ------------------------------------------------------------------------------------------- helpers
def _zo(**overrides: Any) -> Callable[[Path, dict[str, Any]], Any]:
    return lambda tmp, _: ZOConfig(output_dir=str(tmp / "out"), report_to=[], use_cpu=True, **overrides)


def _fed(**overrides: Any) -> Callable[[Path, dict[str, Any]], Any]:
    return lambda tmp, _: config(**overrides)


def _wire(payload: Any, kind: int = ClientReport.KIND) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return struct.pack("<4sHBI", MAGIC, PROTOCOL_VERSION, kind, len(body)) + body


def _receive(**fields: Any) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, _: dict[str, Any]) -> Any:
        server = FederatedServer(config())
        sampled = server.start_round(0)
        report = ClientReport(0, sampled[0], 10, np.full(server.settings.scalar_shape, 0.5, dtype=np.float32), 1.0, 1.0)
        server.receive(_wire(report.to_json() | fields))
    return run


def _receive_bytes(mangle: Callable[[bytes], bytes]) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, _: dict[str, Any]) -> Any:
        server = FederatedServer(config())
        sampled = server.start_round(0)
        report = ClientReport(0, sampled[0], 10, np.full(server.settings.scalar_shape, 0.5, dtype=np.float32), 1.0, 1.0)
        from hf_fedzo.federation import encode

        server.receive(mangle(encode(report)))
    return run


def _instruction(**fields: Any) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, _: dict[str, Any]) -> Any:
        server = FederatedServer(config())
        good = server.instruction(server.start_round(0)[0]).to_json()
        settings = good["settings"] | fields.pop("settings", {})
        decode(_wire(good | {"settings": settings} | fields, RoundInstruction.KIND), expect=RoundInstruction)
    return run


def _state(edit: Callable[[dict[str, Any]], Any] | bytes) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, assets: dict[str, Any]) -> Any:
        path = tmp / "federation_state.json"
        if isinstance(edit, bytes):
            path.write_bytes(edit)
        else:
            state = json.loads(assets["state"])
            edit(state)
            path.write_text(json.dumps(state))
        read_state(path)
    return run


def _scalar(state: dict[str, Any], index: int, value: float) -> None:
    record = state["server"]["log"][index]
    values = np.frombuffer(base64.b64decode(record["scalars"]), dtype="<f4").copy()
    values[0] = value
    record["scalars"] = base64.b64encode(values.tobytes()).decode()


def _trajectory(edit: Callable[[dict[str, Any]], Any], replay: bool = True) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, assets: dict[str, Any]) -> Any:
        data = json.loads(assets["trajectory"])
        edit(data)
        (tmp / "traj.json").write_text(json.dumps(data))
        if replay:
            torch.manual_seed(0)
            from_trajectory(llama(), tmp / "traj.json")
        else:
            load_trajectory(tmp / "traj.json")
    return run


def _push(files: dict[str, bytes] | None) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, _: dict[str, Any]) -> Any:
        out = tmp / "run"
        if files is not None:
            out.mkdir()
            for name, data in files.items():
                (out / name).write_bytes(data)
        push_run(out, "user/adversarial", token="hf_fake", endpoint="http://127.0.0.1:9", timeout=1)
    return run


def _recipe(name: str, *argv: str, train: str | None = None) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, assets: dict[str, Any]) -> Any:
        (tmp / "t.csv").write_text(CSV)  # the working directory is tmp: relative file flags land here
        args = ["--output_dir", str(tmp / "out"), "--model_name_or_path", str(assets["tokenizer"]), "--use_cpu"]
        if train is not None:
            (tmp / "train.csv").write_text(train)
            (tmp / "dev.csv").write_text("sentence,label\nok,1\n")
            args += ["--train_file", str(tmp / "train.csv"), "--validation_file", str(tmp / "dev.csv")]
        load_recipe(name).main([*args, *argv])
    return run


def _file(name: str, content: bytes) -> Callable[[Path, dict[str, Any]], Any]:
    def run(tmp: Path, _: dict[str, Any]) -> Any:
        (tmp / name).write_bytes(content)
        load_local_files({"train": tmp / name})
    return run


NAN, INF = math.nan, math.inf
CSV = "sentence,label\nit was great,1\nit was bad,0\n"

CASES = [
    # --- ZOConfig: every non-finite or out-of-range setting is refused by its flag name
    Case("zo lr nan", _zo(learning_rate=NAN), ValueError, "learning_rate"),
    Case("zo lr inf", _zo(learning_rate=INF), ValueError, "learning_rate"),
    Case("zo wd nan", _zo(weight_decay=NAN), ValueError, "weight_decay"),
    Case("zo wd -inf", _zo(weight_decay=-INF), ValueError, "weight_decay"),
    Case("zo eps nan", _zo(zo_eps=NAN), ValueError, "zo_eps"),
    Case("zo eps inf", _zo(zo_eps=INF), ValueError, "zo_eps"),
    Case("zo eps 0", _zo(zo_eps=0.0), ValueError, "zo_eps"),
    Case("zo eps negative", _zo(zo_eps=-1e-3), ValueError, "zo_eps"),
    Case("zo p1 0", _zo(zo_p1=0), ValueError, "zo_p1"),
    Case("zo p2 -1", _zo(zo_p2=-1), ValueError, "zo_p2"),
    Case("zo difference", _zo(zo_difference="sideways"), ValueError, "zo_difference"),
    Case("zo perturbation", _zo(zo_perturbation="uniform"), ValueError, "zo_perturbation"),
    Case("zo fp16", _zo(fp16=True), ValueError, "fp16"),
    Case("zo max_grad_norm", _zo(max_grad_norm=1.0), ValueError, "max_grad_norm"),
    Case("zo split", _zo(zo_split="halfway"), ValueError, "zo_split"),
    # --- FederationConfig
    Case("fed lr nan", _fed(learning_rate=NAN), ValueError, "learning_rate"),
    Case("fed lr inf", _fed(learning_rate=INF), ValueError, "learning_rate"),
    Case("fed wd negative", _fed(weight_decay=-0.1), ValueError, "weight_decay"),
    Case("fed eps inf", _fed(zo_eps=INF), ValueError, "zo_eps"),
    Case("fed trim 0.5", _fed(trim_fraction=0.5), ValueError, "trim_fraction"),
    Case("fed trim nan", _fed(trim_fraction=NAN), ValueError, "trim_fraction"),
    Case("fed alpha nan", _fed(dirichlet_alpha=NAN), ValueError, "dirichlet_alpha"),
    Case("fed dropout 1", _fed(dropout=1.0), ValueError, "dropout"),
    Case("fed budget nan", _fed(flop_budget=NAN), ValueError, "flop_budget"),
    Case("fed weight ratio", _fed(max_weight_ratio=-1.0), ValueError, "max_weight_ratio"),
    Case("fed norm ratio", _fed(max_norm_ratio=INF), ValueError, "max_norm_ratio"),
    Case("fed clients per round", _fed(clients_per_round=9), ValueError, "clients_per_round"),
    Case("fed no clients", _fed(num_clients=0), ValueError, "num_clients"),
    Case("fed aggregation", _fed(aggregation="mode"), ValueError, "aggregation"),
    Case("fed weighting", _fed(weighting="votes"), ValueError, "weighting"),
    Case("fed local steps", _fed(local_steps=0), ValueError, "local_steps"),
    Case("fed batch size", _fed(batch_size=0), ValueError, "batch_size"),
    # --- client reports through FederatedServer.receive
    Case("report client_id float", _receive(client_id=0.7), ProtocolError, "client_id must be an integer"),
    Case("report client_id str", _receive(client_id="0"), ProtocolError, "client_id must be an integer"),
    Case("report client_id bool", _receive(client_id=True), ProtocolError, "client_id must be an integer"),
    Case("report round float", _receive(round=0.5), ProtocolError, "round must be an integer"),
    Case("report examples 1e309", _receive(num_examples=10**309), ProtocolError, "num_examples"),
    Case("report examples float", _receive(num_examples=1e308), ProtocolError, "num_examples"),
    Case("report examples 0", _receive(num_examples=0), ProtocolError, "num_examples"),
    Case("report loss str", _receive(loss_mean="low"), ProtocolError, "loss_mean"),
    Case("report loss nan", _receive(loss_last=NAN), ProtocolError, "loss statistics"),
    Case("report scalars int", _receive(scalars=5), ProtocolError, "scalars"),
    Case("report scalars not b64", _receive(scalars="@@@"), ProtocolError, "scalars|base64"),
    Case("report shape 2d", _receive(shape=[1, 2]), ProtocolError, "shape"),
    Case("report shape negative", _receive(shape=[-1, -1, 2]), ProtocolError, "shape"),
    Case("report missing field", _receive(loss_last=None), ProtocolError, "loss_last"),
    Case("report deep nesting", _receive_bytes(lambda b: _wire(b"[" * 50_000 + b"]" * 50_000)), ProtocolError,
         "nested too deeply|malformed"),
    Case("report bad magic", _receive_bytes(lambda b: b"XXXX" + b[4:]), ProtocolError, "magic"),
    Case("report bad version", _receive_bytes(lambda b: b[:4] + struct.pack("<H", 9) + b[6:]), ProtocolError,
         "protocol version 9"),
    Case("report truncated", _receive_bytes(lambda b: b[:-5]), ProtocolError, "header declares"),
    Case("report as instruction", _receive_bytes(lambda b: b[:6] + bytes([RoundInstruction.KIND]) + b[7:]),
         ProtocolError, "expected a ClientReport"),
    # --- round instructions through decode
    Case("instruction seed float", _instruction(seed_base=1.5), ProtocolError, "seed"),
    Case("instruction replay int", _instruction(replay=3), ProtocolError, "replay must be a list"),
    Case("instruction p1 float", _instruction(settings={"p1": 1.5}), ProtocolError, "p1 must be an integer"),
    Case("instruction lr nan", _instruction(settings={"lr": NAN}), ProtocolError, "lr must be a finite"),
    Case("instruction eps str", _instruction(settings={"eps": "0.1"}), ProtocolError, "eps must be a finite"),
    Case("instruction replay_after", _instruction(replay_after=-5), ProtocolError, "replay_after"),
    # --- federation state files
    Case("state edited scalar", _state(lambda s: _scalar(s, 1, 9.0)), StateFileError, "{tmp}.*log record 1"),
    Case("state nan scalar", _state(lambda s: _scalar(s, 0, NAN)), StateFileError, "{tmp}.*log record 0"),
    Case("state removed record", _state(lambda s: s["server"]["log"].pop()), StateFileError, "{tmp}.*record"),
    Case("state round jump", _state(lambda s: s["server"].update(completed_round=6)), StateFileError,
         "{tmp}.*completed_round"),
    Case("state synced edit", _state(lambda s: s["server"]["synced"].update({"0": 5})), StateFileError,
         "{tmp}.*sync marks"),
    Case("state no chain", _state(lambda s: s.pop("integrity")), StateFileError, "{tmp}.*no checksum chain"),
    Case("state empty", _state(b""), StateFileError, "{tmp}.*empty"),
    Case("state binary", _state(b"\x00\xff\xfe\x80"), StateFileError, "{tmp}.*not UTF-8"),
    Case("state truncated", _state(b'{"fingerprint": "x", "server": {'), StateFileError, "{tmp}.*not valid JSON"),
    Case("state list", _state(b"[]"), StateFileError, "{tmp}.*not a federation state"),
    # --- trajectories
    Case("trajectory format", _trajectory(lambda d: d.update(format="other"), replay=False), ValueError,
         "not a hf_fedzo trajectory"),
    Case("trajectory version", _trajectory(lambda d: d.update(format_version=99), replay=False), ValueError,
         "format_version 99"),
    Case("trajectory no final", _trajectory(lambda d: d.pop("final_fingerprint")), TrajectoryMismatchError,
         "final_fingerprint"),
    Case("trajectory lr", _trajectory(lambda d: d["updates"][0].update(lr=1.0)), TrajectoryMismatchError,
         "log digest"),
    Case("trajectory eps", _trajectory(lambda d: d["settings"].update(eps=0.5)), TrajectoryMismatchError,
         "log digest"),
    Case("trajectory device", _trajectory(lambda d: d.update(device_type="cuda")), TrajectoryMismatchError,
         "cuda"),
    Case("trajectory start", _trajectory(lambda d: d.update(initial_fingerprint="sha256:0")),
         TrajectoryMismatchError, "initial fingerprint"),
    # --- push
    Case("push missing folder", _push(None), PushError, "{tmp}/run does not exist"),
    Case("push empty folder", _push({}), PushError, "{tmp}/run is empty"),
    Case("push no weights", _push({"config.json": b"{}"}), PushError, "{tmp}/run has no model weights"),
    Case("push adapter without weights", _push({"adapter_config.json": b"{}"}), PushError, "no adapter weights"),
    # --- local data files
    Case("file extension", _file("train.xlsx", b"x"), ValueError, "train_file=.*xlsx"),
    Case("file empty", _file("train.csv", b""), DataError, "{tmp}/train.csv.*empty"),
    Case("file not utf8", _file("train.csv", b"sentence,label\n\xff\xfe,1\n"), DataError, "{tmp}.*line 2.*UTF-8"),
    Case("file broken jsonl", _file("train.jsonl", b'{"a": 1}\n{"a": \n'), DataError, "{tmp}.*line 2.*JSON"),
    Case("file header only", _file("train.csv", b"sentence,label\n"), DataError, "{tmp}.*no rows"),
    # --- recipes' CLI, in process: flags end in SystemExit(2) with the flag named; data in DataError
    Case("recipe lr nan", _recipe("roberta_sst2", "--learning_rate", "nan"), SystemExit, "learning_rate"),
    Case("recipe eps inf", _recipe("roberta_sst2", "--zo_eps", "inf"), SystemExit, "zo_eps"),
    Case("recipe unknown flag", _recipe("roberta_sst2", "--zo_typo", "1"), SystemExit, "--zo_typo"),
    Case("recipe federated dropout", _recipe("federated", "--dropout", "1.0"), SystemExit, "dropout"),
    Case("recipe federated norm ratio", _recipe("federated", "--max_norm_ratio", "-1"), SystemExit, "max_norm_ratio"),
    Case("recipe federated lr nan", _recipe("federated", "--learning_rate", "nan"), SystemExit, "learning_rate"),
    Case("recipe empty cell", _recipe("roberta_sst2", train=CSV + ",1\n"), DataError, "row 2: column 'sentence'"),
    Case("recipe bad label", _recipe("roberta_sst2", train=CSV + "meh,pos\n"), DataError, "row 2: label 'pos'"),
    Case("recipe header only", _recipe("roberta_sst2", train="sentence,label\n"), DataError, "{tmp}/train.csv"),
    Case("recipe max_train_samples 0", _recipe("roberta_sst2", "--max_train_samples", "0", train=CSV), DataError,
         "--max_train_samples"),
    Case("recipe missing file", _recipe("roberta_sst2", "--train_file", "nowhere.csv", "--validation_file",
                                        "nowhere.jsonl"), FileNotFoundError, "train_file='nowhere.csv'"),
    Case("recipe no validation split", _recipe("roberta_sst2", "--train_file", "t.csv", "--dataset", "x"),
         DataError, "no validation split.*--validation_file"),
]


def _snapshot() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of the checkout outside caches: what a case must not touch."""
    found = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _IGNORED and not d.endswith(".egg-info")]
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


class _Killed(Exception):
    pass


def _kill_after_round_2(record: Any) -> None:
    if record.round == 2:
        raise _Killed


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("adversarial_assets")
    build_bpe_tokenizer().save_pretrained(root / "tokenizer")  # with a tiny masked LM: the recipes load both
    torch.manual_seed(0)
    roberta_mlm().save_pretrained(root / "tokenizer")
    with pytest.raises(_Killed):  # a federation killed after round 2: its state file
        simulate_federation(tiny_model(), batch_loss, client_data(), config(rounds=4), output_dir=root / "fed",
                            on_round_end=_kill_after_round_2)
    torch.manual_seed(0)
    args = ZOConfig(output_dir=str(root / "run"), max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2,
                    zo_eps=1e-2, zo_p2=2, zo_split="none", report_to=[], use_cpu=True, save_strategy="no",
                    disable_tqdm=True)
    trainer = ZOSplitTrainer(model=llama(), args=args, train_dataset=pattern_dataset())
    trainer.train()
    return {"tokenizer": root / "tokenizer", "state": (root / "fed" / "federation_state.json").read_text(),
            "trajectory": save_trajectory(root / "traj.json", trainer).read_text()}


def test_the_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_by_name(case: Case, assets: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory lands in tmp
    before = _snapshot()
    with pytest.raises(case.error) as info:
        case.run(tmp_path, assets)
    if case.error is SystemExit:
        assert info.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
    else:
        message = str(info.value)
    pattern = case.named.replace("{tmp}", re.escape(str(tmp_path)))
    assert re.search(pattern, message), f"{case.name}: {message!r} does not name {case.named!r}"
    assert _snapshot() == before, f"{case.name} changed files outside its temporary folder"
