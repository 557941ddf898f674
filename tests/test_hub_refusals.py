"""``hf-fedzo push`` refuses a folder that holds no weights instead of publishing a README-only repo."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(("files", "named"), [
    ({}, "is empty: nothing to publish"),
    ({"config.json": b"{}", "README.md": b"# x"}, "has no model weights .*expected one of model.safetensors"),
    ({"adapter_config.json": b"{}"}, "has no adapter weights: expected one of adapter_model.safetensors"),
])
def test_push_refuses_a_folder_without_weights(fake_hub, tmp_path: Path, files: dict[str, bytes], named: str) -> None:
    from hf_fedzo.hub import PushError, push_run

    out = tmp_path / "run"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    with pytest.raises(PushError, match=named):
        push_run(out, "user/empty", token="hf_fake")
    assert "user/empty" not in fake_hub.repos  # nothing was created or published
