"""The Flower run config as a :class:`~hf_fedzo.federation.FederationConfig`, and the keys our messages use."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Message

from hf_fedzo.federation import FederationConfig, ProtocolError

RECORD = "hf_fedzo"  # the RecordDict key of our ConfigRecord in every message (and of the client's state)
WORK = "hf_fedzo.work"  # the MetricRecord with a client's local work (not part of the protocol)
MESSAGE = "message"
RESYNC = "resync-after"
DISCOVERY_GROUP = "hf_fedzo-discovery"
# A node's budget (heterogeneous federations): node-config keys, echoed in its answer to the discovery query.
BUDGET_KEYS = {"budget-memory-mib": "memory_mib", "budget-flops-per-step": "flops_per_step",
               "budget-deadline-s": "deadline_s"}
# ``keep-full-precision = false``: a node whose process plays only its own client drops the full-precision weights
# of the layers it does not train under the run's ``frozen-dtype`` (ZOClient(keep_full_precision=False)).
KEEP_FULL_PRECISION = "keep-full-precision"

# Flower's own logger, so our lines show up in `flwr run --stream` and the SuperLink logs.
logger = logging.getLogger("flwr.hf_fedzo")


def federation_config(run_config: Mapping[str, Any], app_keys: Iterable[str] = ()) -> FederationConfig:
    """A :class:`FederationConfig` from a Flower run config (``[tool.flwr.app.config]`` plus ``--run-config``).

    Keys are the config's field names with ``-`` for ``_`` (``clients-per-round``, ``zo-p2``, …); ``flop-budget =
    0`` means none and ``zo-layers-path = ""`` means found automatically (TOML has no null). Any other key must
    be in ``app_keys``, so a typo fails instead of being ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(FederationConfig)}
    values: dict[str, Any] = {}
    unknown = []
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name not in fields:
            if key not in set(app_keys):
                unknown.append(key)
            continue
        kind = str(fields[name].type)
        if name == "flop_budget":
            values[name] = float(value) if value else None
        elif kind == "str | None":
            values[name] = str(value) if value else None
        elif kind == "int":
            values[name] = int(value)
        elif kind == "float":
            values[name] = float(value)
        elif kind == "bool":
            values[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        else:
            values[name] = str(value)
    if unknown:
        raise ValueError(f"run config: unknown keys {sorted(unknown)}; FederationConfig takes "
                         f"{sorted(k.replace('_', '-') for k in fields)}")
    return FederationConfig(**values)


def payload(message: Message) -> bytes:
    """The protocol bytes a message carries; :class:`ProtocolError` when it carries none."""
    record = message.content.get(RECORD) if message.has_content() else None
    data = record.get(MESSAGE) if isinstance(record, ConfigRecord) else None
    if not isinstance(data, bytes):
        raise ProtocolError(f"the message carries no '{RECORD}' ConfigRecord with '{MESSAGE}' bytes")
    return data
