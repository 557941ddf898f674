"""Keep secrets out of everything a run records or publishes (command lines, cards, argument dumps).

A recipe is often launched with ``--hub_token hf_…``; the trajectory records the command line so a run
can be reproduced, and ``hf-fedzo push`` publishes the trajectory and the card. Every recorded command,
argument mapping and card therefore goes through these functions first:

* the value of any flag whose name has a secret word as one of its ``-``/``_`` separated parts
  (``--hub_token``, ``--token``, ``--api-key``, ``--password``; not ``--max_new_tokens`` or
  ``--tokenizer_name``) becomes ``<redacted>``, whether written ``--flag value`` or ``--flag=value``;
* anything shaped like a Hugging Face token (``hf_`` + 30 or more letters/digits) and the value of any
  secret-named environment variable (``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, …) are redacted wherever
  they appear;
* in mappings, the value of every secret-named key is redacted.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["REDACTED", "is_secret_name", "redact_argv", "redact_command", "redact_mapping", "redact_text"]

REDACTED = "<redacted>"
_SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "credential", "credentials", "apikey"})
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
_MIN_ENV_SECRET = 8  # shorter environment values ("1", "true") are not worth hiding and would mangle text


def is_secret_name(name: str) -> bool:
    """Whether a flag, key or environment variable name announces a secret (``hub_token``, ``API_KEY``)."""
    parts = [p for p in re.split(r"[-_.\s]+", name.strip("-").lower()) if p]
    pairs = {a + b for a, b in itertools.pairwise(parts)}
    return bool(_SECRET_WORDS.intersection(parts) or "apikey" in pairs)


def _environment_secrets() -> list[str]:
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= _MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)  # longest first, so a value containing another goes whole


def redact_text(text: str) -> str:
    """``text`` with Hugging Face tokens and secret environment values replaced by ``<redacted>``."""
    for value in _environment_secrets():
        text = text.replace(value, REDACTED)
    return _HF_TOKEN.sub(REDACTED, text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The arguments with the values of secret-named flags (and any token-shaped value) redacted."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-"):
            name, eq, _ = arg.partition("=")
            if is_secret_name(name):
                out.append(f"{name}={REDACTED}" if eq else arg)
                hide_next = not eq
                continue
        out.append(redact_text(arg))
    return out


def redact_command(command: str) -> str:
    """A recorded command line with every secret redacted (see :func:`redact_argv`)."""
    try:
        return shlex.join(redact_argv(shlex.split(command)))
    except ValueError:  # unbalanced quotes: not splittable, so redact flag values textually
        text = re.sub(r"(--?[\w.-]+)(=|\s+)(\S+)",
                      lambda m: f"{m[1]}{m[2]}{REDACTED}" if is_secret_name(m[1]) else m[0], command)
        return redact_text(text)


def redact_mapping(data: Any) -> Any:
    """A copy of ``data`` (nested dicts/lists) with secret-named keys' values and token-shaped strings redacted."""
    if isinstance(data, Mapping):
        return {k: (REDACTED if is_secret_name(str(k)) and v not in (None, "", False) else redact_mapping(v))
                for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_mapping(v) for v in data]
    if isinstance(data, str):
        return redact_text(data)
    return data
