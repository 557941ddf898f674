"""The seed+scalar protocol: small typed messages and their versioned, size-bounded wire format.

Server → client, :class:`RoundInstruction`: the round, how to derive its seeds, the ZO settings, and
the aggregated (seed, scalar) log the client has not replayed yet. Client → server,
:class:`ClientReport`: the projected gradients of its local steps (float32) and loss statistics. No
tensor of the model ever appears in either direction.

Wire format: ``MAGIC`` (4 bytes), protocol version (u16), message kind (u8), payload length (u32),
then a UTF-8 JSON payload in which every scalar array travels as base64 little-endian float32 (exact:
the values are float32 in memory too). Decoding checks magic, version, kind, declared length and the
size bound before parsing anything.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from hf_fedzo.engine import ZOSettings, ZOUpdate

# 2: the round settings carry the engine's settings as one nested object, with the layers path.
PROTOCOL_VERSION = 2
MAGIC = b"HFZO"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_HEADER = struct.Struct("<4sHBI")


class ProtocolError(ValueError):
    """A message that is malformed or does not fit the round; nothing of it has been applied."""


def _pack_floats(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def _unpack_floats(text: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as err:
        raise ProtocolError(f"{what}: not base64 float32 data") from err
    expected = 4 * math.prod(shape)
    if len(raw) != expected:
        raise ProtocolError(f"{what}: {len(raw)} bytes of scalars where the shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class RoundSettings:
    """Everything a client needs to run a round's local ZO steps identically to every other party:
    the engine's settings (``zo``, layers path included) plus what only a round has."""

    zo: ZOSettings
    lr: float
    weight_decay: float
    local_steps: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1 (got {self.local_steps})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")

    @property
    def scalar_shape(self) -> tuple[int, int, int]:
        """Shape of one client's upload: (local steps, P1, P2)."""
        return (self.local_steps, self.zo.p1, self.zo.p2)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundSettings:
        """Raises ``TypeError``/``ValueError`` naming the bad field (the engine validates ``zo``)."""
        values = dict(data)
        return cls(zo=ZOSettings(**values.pop("zo")), **values)


@dataclass(frozen=True)
class LogRecord:
    """One aggregated update of the global log: applied in order by the server and every client."""

    round: int
    update: ZOUpdate

    def to_json(self) -> dict[str, Any]:
        scalars = np.asarray(self.update.scalars, dtype=np.float32)
        return {"round": self.round, "step_seeds": [str(s) for s in self.update.step_seeds],
                "shape": list(scalars.shape), "scalars": _pack_floats(scalars),
                "lr": self.update.lr, "weight_decay": self.update.weight_decay}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogRecord:
        shape = tuple(int(n) for n in data["shape"])
        if len(shape) != 3 or shape[0] != len(data["step_seeds"]):
            raise ProtocolError(f"log record of round {data['round']}: shape {shape} does not match its seeds")
        scalars = _unpack_floats(data["scalars"], shape, f"log record of round {data['round']}")
        nested = tuple(tuple(tuple(row) for row in seed) for seed in scalars.tolist())
        update = ZOUpdate(tuple(int(s) for s in data["step_seeds"]), nested, float(data["lr"]),
                          float(data["weight_decay"]))
        return cls(int(data["round"]), update)


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

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "client_id": self.client_id, "seed_base": str(self.seed_base),
                "seed_client": self.seed_client, "settings": self.settings.to_json(),
                "replay_after": self.replay_after, "replay": [r.to_json() for r in self.replay]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundInstruction:
        try:
            settings = RoundSettings.from_json(data["settings"])
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"round settings: {err}") from err
        return cls(int(data["round"]), int(data["client_id"]), int(data["seed_base"]), int(data["seed_client"]),
                   settings, int(data["replay_after"]), tuple(LogRecord.from_json(r) for r in data["replay"]))


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
        shape = tuple(int(n) for n in data["shape"])
        if len(shape) != 3:
            raise ProtocolError(f"client report scalars: shape {shape} is not (local steps, P1, P2)")
        scalars = _unpack_floats(data["scalars"], shape, f"report of client {data['client_id']}")
        return cls(int(data["round"]), int(data["client_id"]), int(data["num_examples"]), scalars,
                   float(data["loss_mean"]), float(data["loss_last"]))


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
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"malformed {cls.__name__}: {type(err).__name__}: {err}") from err
