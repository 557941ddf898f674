"""The seed+scalar protocol: small typed messages and their versioned, size-bounded wire format.

Server → client, :class:`RoundInstruction`: the round, how to derive its seeds, the ZO settings, and
the aggregated (seed, scalar) log the client has not replayed yet. Client → server,
:class:`ClientReport`: the projected gradients of its local steps (float32) and loss statistics. No
tensor of the model ever appears in either direction.

Wire format: ``MAGIC`` (4 bytes), protocol version (u16), message kind (u8), payload length (u32),
then a UTF-8 JSON payload in which every scalar array travels as base64 little-endian float32 (exact:
the values are float32 in memory too). Decoding checks magic, version, kind, declared length and the
size bound before parsing anything, then the type and range of every field (an integer field must be a
JSON integer: ``0.7``, ``"0"`` and ``true`` are refused, not coerced). Every failure, whatever the
payload, is a :class:`ProtocolError`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from hf_fedzo.engine import ZOSettings, ZOUpdate, lower_dtype

# 2: the round settings carry the engine's settings as one nested object, with the layers path.
PROTOCOL_VERSION = 2
MAGIC = b"HFZO"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_HEADER = struct.Struct("<4sHBI")
# Field bounds. Counts stay far inside float64's exact range so weights and sums never overflow; a client
# still cannot claim most of a round's weight with a large count (see aggregation.max_weight_ratio).
MAX_INDEX = 2**31 - 1  # rounds, client ids
MAX_NUM_EXAMPLES = 10**12
MAX_SHAPE = 2**16  # local steps, P1, P2
_SEED = re.compile(r"-?[0-9]{1,20}")
_ACTIVE = re.compile(r"none|-?[0-9]{1,6}(:-?[0-9]{1,6})?(,-?[0-9]{1,6}(:-?[0-9]{1,6})?){0,4096}")


class ProtocolError(ValueError):
    """A message that is malformed or does not fit the round; nothing of it has been applied."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(data: Any, key: str, what: str) -> Any:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(data).__name__}")
    if key not in data:
        raise ProtocolError(f"{what}: missing field {key!r}")
    return data[key]


def _int(data: Any, key: str, what: str, low: int = 0, high: int = MAX_INDEX) -> int:
    value = _get(data, key, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what}: {key} must be an integer, got {_short(value)}")
    if not low <= value <= high:
        raise ProtocolError(f"{what}: {key}={_short(value)} is outside [{low}, {high}]")
    return value


def _float(data: Any, key: str, what: str) -> float:
    value = _get(data, key, what)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what}: {key} must be a number, got {_short(value)}")
    try:
        return float(value)
    except OverflowError as err:  # a JSON integer beyond float range
        raise ProtocolError(f"{what}: {key} is too large") from err


def _seed(value: Any, what: str) -> int:
    """Seeds travel as decimal strings (u64 does not fit a JSON double)."""
    if isinstance(value, str) and _SEED.fullmatch(value) and abs(int(value)) < 2**64:
        return int(value)
    raise ProtocolError(f"{what}: a seed must be a decimal string of a 64-bit integer, got {_short(value)}")


def _list(data: Any, key: str, what: str) -> list[Any]:
    value = _get(data, key, what)
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: {key} must be a list, got {type(value).__name__}")
    return value


def _shape(data: Any, what: str) -> tuple[int, int, int]:
    shape = _list(data, "shape", what)
    if len(shape) != 3:
        raise ProtocolError(f"{what}: shape {_short(shape)} is not (local steps, P1, P2)")
    return tuple(_int({"shape": n}, "shape", what, 1, MAX_SHAPE) for n in shape)  # type: ignore[return-value]


def _pack_floats(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def _unpack_floats(text: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(text, str):
        raise ProtocolError(f"{what}: scalars must be a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as err:
        raise ProtocolError(f"{what}: not base64 float32 data") from err
    expected = 4 * math.prod(shape)
    if len(raw) != expected:
        raise ProtocolError(f"{what}: {len(raw)} bytes of scalars where the shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def _active(data: dict[str, Any], what: str) -> str | None:
    """An optional active-set id: positions like ``-1,3:5,8`` (parsed by the federation's budgets module)."""
    value = data.get("active")
    if value is None:
        return None
    if not isinstance(value, str) or not _ACTIVE.fullmatch(value):
        raise ProtocolError(f"{what}: active must be an active-set id like '3:5,8', got {_short(value)}")
    return value


def check_setting_types(values: dict[str, Any]) -> None:
    """Round settings (the engine's flattened in) checked by type first: they also arrive from the wire, where
    0.7 or "1" must not pass as an int. A missing name is left to the constructor's own error."""
    for name in ("p1", "p2", "local_steps", "batch_size"):
        value = values.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer (got {_short(value)})")
        if value > MAX_SHAPE:
            raise ValueError(f"{name}={value} is over the bound {MAX_SHAPE}")
    for name in ("eps", "lr", "weight_decay"):
        value = values.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number (got {_short(value)})")
    for name in ("perturbation", "difference"):
        if not isinstance(values.get(name, ""), str):
            raise ValueError(f"{name} must be a string (got {_short(values[name])})")
    if values.get("layers_path") is not None and not isinstance(values["layers_path"], str):
        raise ValueError(f"layers_path must be a string or null (got {_short(values['layers_path'])})")
    split = values.get("split", "none")
    if isinstance(split, bool) or not isinstance(split, str | int | float):
        raise ValueError(f"split must be a string or a number (got {_short(split)})")


@dataclass(frozen=True)
class RoundSettings:
    """Everything a client needs to run a round's local ZO steps identically to every other party:
    the engine's settings (``zo``, layers path included) plus what only a round has."""

    zo: ZOSettings
    lr: float
    weight_decay: float
    local_steps: int
    batch_size: int
    frozen_dtype: str | None = None  # inactive layers' frozen linears run at this dtype (heterogeneous runs)

    def __post_init__(self) -> None:
        if not isinstance(self.zo, ZOSettings):
            raise ValueError(f"zo must be the engine's ZOSettings (got {_short(self.zo)})")
        check_setting_types({**asdict(self.zo), **{k: v for k, v in asdict(self).items() if k != "zo"}})
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1 (got {self.local_steps})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.frozen_dtype is not None:
            lower_dtype(self.frozen_dtype)  # raises naming it

    @property
    def scalar_shape(self) -> tuple[int, int, int]:
        """Shape of one client's upload: (local steps, P1, P2)."""
        return (self.local_steps, self.zo.p1, self.zo.p2)

    def to_json(self) -> dict[str, Any]:
        """Without ``frozen_dtype`` when it is unset: the settings of runs from before it existed, unchanged."""
        data = asdict(self)
        if data["frozen_dtype"] is None:
            del data["frozen_dtype"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundSettings:
        """Raises ``TypeError``/``ValueError`` naming the bad field (the engine validates ``zo``)."""
        values = dict(data)
        zo = values.pop("zo", None)
        if not isinstance(zo, dict):
            raise ValueError(f"zo must be a JSON object of engine settings (got {_short(zo)})")
        check_setting_types({**zo, **values})  # before the engine compares anything
        return cls(zo=ZOSettings(**zo), **values)


@dataclass(frozen=True)
class LogRecord:
    """One aggregated update of the global log: applied in order by the server and every client."""

    round: int
    update: ZOUpdate
    active: str | None = None  # the active-set id (positions) it moves; None: every trainable tensor

    def to_json(self) -> dict[str, Any]:
        scalars = np.asarray(self.update.scalars, dtype=np.float32)
        data = {"round": self.round, "step_seeds": [str(s) for s in self.update.step_seeds],
                "shape": list(scalars.shape), "scalars": _pack_floats(scalars),
                "lr": self.update.lr, "weight_decay": self.update.weight_decay}
        return data if self.active is None else data | {"active": self.active}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogRecord:
        round_id = _int(data, "round", "log record")
        what = f"log record of round {round_id}"
        shape = _shape(data, what)
        seeds = tuple(_seed(s, what) for s in _list(data, "step_seeds", what))
        if shape[0] != len(seeds):
            raise ProtocolError(f"{what}: shape {shape} does not match its {len(seeds)} seeds")
        scalars = _unpack_floats(_get(data, "scalars", what), shape, what)
        if not np.isfinite(scalars).all():
            raise ProtocolError(f"{what}: scalars contain NaN or infinity")
        lr, weight_decay = _float(data, "lr", what), _float(data, "weight_decay", what)
        if not (math.isfinite(lr) and math.isfinite(weight_decay)):
            raise ProtocolError(f"{what}: lr and weight_decay must be finite (got {lr}, {weight_decay})")
        return cls(round_id, ZOUpdate(seeds, ZOUpdate.nest(scalars), lr, weight_decay), _active(data, what))


@dataclass(frozen=True)
class RoundInstruction:
    """Server → client: run ``settings.local_steps`` ZO steps of ``round`` after replaying ``replay``."""

    KIND: ClassVar[int] = 1

    round: int
    client_id: int
    seed_base: int
    seed_client: int  # 0 when every sampled client shares the step seeds (the default), else client_id + 1
    settings: RoundSettings
    replay_after: int = -1  # the replay holds every log record after this round (the client's last sync)
    replay: tuple[LogRecord, ...] = ()
    active: str | None = None  # the positions this client trains this round (None: everything)
    lr: float | None = None  # this client's learning rate this round (None: the settings' lr)

    @property
    def local_settings(self) -> RoundSettings:
        """The settings of this client's local steps (its own learning rate, when the server set one)."""
        return self.settings if self.lr is None else dataclasses.replace(self.settings, lr=self.lr)

    def to_json(self) -> dict[str, Any]:
        data = {"round": self.round, "client_id": self.client_id, "seed_base": str(self.seed_base),
                "seed_client": self.seed_client, "settings": self.settings.to_json(),
                "replay_after": self.replay_after, "replay": [r.to_json() for r in self.replay]}
        extra = {"active": self.active, "lr": self.lr}  # only heterogeneous rounds carry them
        return data | {k: v for k, v in extra.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundInstruction:
        what = "round instruction"
        settings_data = _get(data, "settings", what)
        if not isinstance(settings_data, dict):
            raise ProtocolError(f"{what}: settings must be a JSON object, got {type(settings_data).__name__}")
        try:
            settings = RoundSettings.from_json(settings_data)
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"round settings: {err}") from err
        replay = tuple(LogRecord.from_json(r) for r in _list(data, "replay", what))
        lr = _float(data, "lr", what) if "lr" in data else None
        if lr is not None and not (math.isfinite(lr) and lr >= 0):
            raise ProtocolError(f"{what}: lr must be a finite number >= 0 (got {lr})")
        return cls(_int(data, "round", what), _int(data, "client_id", what), _seed(_get(data, "seed_base", what), what),
                   _int(data, "seed_client", what, 0, MAX_INDEX + 1), settings, _int(data, "replay_after", what, -1),
                   replay, _active(data, what), lr)


@dataclass(frozen=True)
class ClientReport:
    """Client → server: the (local steps, P1, P2) float32 projected gradients of one round."""

    KIND: ClassVar[int] = 2

    round: int
    client_id: int
    num_examples: int
    scalars: np.ndarray = field(repr=False)
    loss_mean: float
    loss_last: float

    def to_json(self) -> dict[str, Any]:
        scalars = np.asarray(self.scalars, dtype=np.float32)
        return {"round": self.round, "client_id": self.client_id, "num_examples": self.num_examples,
                "shape": list(scalars.shape), "scalars": _pack_floats(scalars),
                "loss_mean": self.loss_mean, "loss_last": self.loss_last}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientReport:
        client_id = _int(data, "client_id", "client report")
        what = f"report of client {client_id}"
        shape = _shape(data, what)
        scalars = _unpack_floats(_get(data, "scalars", what), shape, what)
        return cls(_int(data, "round", what), client_id, _int(data, "num_examples", what, 0, MAX_NUM_EXAMPLES),
                   scalars, _float(data, "loss_mean", what), _float(data, "loss_last", what))


Message = RoundInstruction | ClientReport
_KINDS: dict[int, type[RoundInstruction] | type[ClientReport]] = {RoundInstruction.KIND: RoundInstruction,
                                                                   ClientReport.KIND: ClientReport}


def encode(message: Message, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    payload = json.dumps(message.to_json(), separators=(",", ":"), allow_nan=True).encode()
    data = _HEADER.pack(MAGIC, PROTOCOL_VERSION, message.KIND, len(payload)) + payload
    if len(data) > max_bytes:
        raise ProtocolError(f"{type(message).__name__} is {len(data)} bytes, over the {max_bytes}-byte bound")
    return data


def decode(data: bytes, expect: type[Message] | None = None, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse one message; raise :class:`ProtocolError` naming what is wrong with it."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message is {len(data)} bytes, over the {max_bytes}-byte bound")
    if len(data) < _HEADER.size:
        raise ProtocolError(f"message is {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, kind, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not an hf_fedzo message (magic {magic!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}; this hf_fedzo speaks version {PROTOCOL_VERSION}")
    if kind not in _KINDS:
        raise ProtocolError(f"unknown message kind {kind}")
    cls = _KINDS[kind]
    if expect is not None and cls is not expect:
        raise ProtocolError(f"expected a {expect.__name__}, got a {cls.__name__}")
    if len(data) - _HEADER.size != length:
        raise ProtocolError(f"payload is {len(data) - _HEADER.size} bytes, the header declares {length}")
    try:
        return cls.from_json(json.loads(data[_HEADER.size:]))
    except ProtocolError:
        raise
    except RecursionError as err:  # deeply nested JSON: refused like any other malformed payload
        raise ProtocolError(f"malformed {cls.__name__}: JSON nested too deeply") from err
    except Exception as err:  # whatever a hostile payload triggers, callers catch ProtocolError only
        raise ProtocolError(f"malformed {cls.__name__}: {type(err).__name__}: {err}") from err
