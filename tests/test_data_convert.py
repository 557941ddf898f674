"""GGUF → safetensors conversion, on a tiny generated Llama GGUF (the real one is 98 MB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_fedzo.data.convert import convert_gguf_to_hf
from tests.asset_fixtures import make_tiny_llama_gguf


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gguf")
    gguf_path = make_tiny_llama_gguf(root / "tiny.Q4_1.gguf")
    out = root / "converted"
    convert_gguf_to_hf(gguf_path, out)
    return gguf_path, out


def test_converted_folder_is_a_plain_checkpoint(converted: tuple[Path, Path]) -> None:
    _, out = converted
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not any(p.suffix == ".gguf" for p in out.iterdir())


def test_weights_match_the_gguf_load(converted: tuple[Path, Path]) -> None:
    gguf_path, out = converted
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(plain.config, "quantization_config", None) is None
    ids = torch.tensor([[5, 40, 77, 100, 3]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, reference(ids).logits)


def test_tokenizer_ready_for_batched_scoring(converted: tuple[Path, Path]) -> None:
    _, out = converted
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    batch = tokenizer(["the cat is", "is"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1  # padded on the left
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["padding_side"] == "left"
    assert "local_files_only" not in saved and "is_local" not in saved
    assert saved["model_max_length"] == 64  # the GGUF context length, not transformers' "infinity"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gguf_path="):
        convert_gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(ValueError, match="padding_side="):
        convert_gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out", padding_side="middle")
