"""Sharing runs on the Hub, through the real huggingface_hub client against the fake Hub (tests/fake_hub.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download
from peft import LoraConfig, get_peft_model
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForCausalLM

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.hub import PushError, push_run, stage_run
from hf_fedzo.model_card import CardInfo, render_model_card, template_path
from hf_fedzo.reporting import write_atomic, write_json
from hf_fedzo.trajectory import from_trajectory
from tests.fake_hub import TOKEN
from tests.test_trainer import pattern_dataset
from tests.tiny_models import build_tokenizer, llama, quantized_llama

REPO = Path(__file__).resolve().parents[1]
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
# A 1x1 PNG: stands in for the plots recipes write (matplotlib is not needed to test their upload).
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                       "AAAABJRU5ErkJggg==")
CARD_ARGS = dict(datasets="stanfordnlp/sst2", dataset_name="SST-2", dataset_split="validation",
                 task_type="text-classification", license="apache-2.0")


def _zo_args(out: Path, **overrides: object) -> ZOConfig:
    kw: dict[str, object] = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=8,
                                 per_device_eval_batch_size=32, learning_rate=3e-2, zo_eps=1e-2, zo_p2=2,
                                 zo_split="2", report_to=[], use_cpu=True, save_strategy="steps", save_steps=2,
                                 disable_tqdm=True)
    kw.update(overrides)
    return ZOConfig(**kw)


def _finish(trainer: ZOSplitTrainer, out: Path) -> None:
    """What a recipe leaves behind: weights, trajectory, metrics, state, a plot."""
    trainer.save_model()
    trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_state()
    write_json(out / "metrics.json", {"eval_accuracy": 0.8125, "eval_runtime": 0.1})
    write_atomic(out / "plots" / "loss.png", lambda handle: handle.write(PNG))


@pytest.fixture(scope="module")
def lora_trainer(tmp_path_factory: pytest.TempPathFactory) -> ZOSplitTrainer:
    root = tmp_path_factory.mktemp("lora_run")
    torch.manual_seed(0)
    llama().save_pretrained(root / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), LoraConfig(**LORA))
    out = root / "out"
    data = pattern_dataset()
    trainer = ZOSplitTrainer(model=model, args=_zo_args(out), train_dataset=data, eval_dataset=data,
                             processing_class=build_tokenizer())
    trainer.train()
    _finish(trainer, out)
    return trainer


@pytest.fixture
def lora_run(lora_trainer: ZOSplitTrainer) -> tuple[Path, torch.nn.Module]:
    return Path(lora_trainer.args.output_dir), lora_trainer.model


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_adapter_card_and_trajectory_round_trip(fake_hub, lora_run, tmp_path: Path) -> None:
    out, trained = lora_run
    result = push_run(out, "user/tiny-zo-lora", token=TOKEN, **CARD_ARGS)
    assert result.variant == "adapter" and result.revision == "main"
    files = fake_hub.files("user/tiny-zo-lora")
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "zo_trajectory.json",
                 "training_args.json", "trainer_state.json", "eval_results.json",
                 "metrics.json", "plots/loss.png", "tokenizer.json"):
        assert name in files, name
    assert "training_args.bin" not in files  # a pickle holding the run's hub_token: only pushed when asked
    assert not [f for f in files if f.startswith("checkpoint-") or f.endswith(("optimizer.pt", "rng_state.pth"))]
    assert files["plots/loss.png"] == PNG
    assert json.loads(files["training_args.json"])["zo_split"] == 2

    card = ModelCard.load("user/tiny-zo-lora")  # downloaded through the fake Hub's resolve endpoint
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == 0.8125 and "loss" in results and "runtime" not in results
    assert {r.dataset_name for r in card.data.eval_results} == {"SST-2"}
    assert card.data.library_name == "peft" and "hf_fedzo" in card.data.tags
    assert "block 2 starts at layer 2 of 4" in card.text and "from_trajectory" in card.text

    # The pushed trajectory alone rebuilds the trained adapter bit for bit.
    torch.manual_seed(99)
    rebuilt = from_trajectory(AutoModelForCausalLM.from_pretrained(out.parent / "base"),
                              hf_hub_download("user/tiny-zo-lora", "zo_trajectory.json"))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), trained.state_dict().values(),
                                                  strict=True))

    assert {name for _, name in fake_hub.requests} - {"agents"} == {"create", "validate", "preupload", "commit",
                                                                    "resolve"}
    commits = len(fake_hub.commits("user/tiny-zo-lora"))
    again = push_run(out, "user/tiny-zo-lora", token=TOKEN, **CARD_ARGS)  # a retry changes nothing
    assert len(fake_hub.commits("user/tiny-zo-lora")) == commits and again.commit_oid == result.commit_oid
    assert fake_hub.files("user/tiny-zo-lora") == files


def test_push_merged_to_a_branch(fake_hub, lora_run, tmp_path: Path) -> None:
    out, trained = lora_run
    result = push_run(out, "user/tiny-zo-merged", token=TOKEN, merged=True, revision="zo-merged", private=True)
    assert result.variant == "merged" and fake_hub.repos["user/tiny-zo-merged"].private
    files = fake_hub.files("user/tiny-zo-merged", "zo-merged")
    assert "model.safetensors" in files and "config.json" in files and "adapter_config.json" not in files
    assert set(fake_hub.files("user/tiny-zo-merged", "main")) == {".gitattributes"}  # main untouched
    weights = load_safetensors(files["model.safetensors"])
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    assert not any("lora_" in k for k in weights)

    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if name in files:
            (tmp_path / name).write_bytes(files[name])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = torch.tensor(pattern_dataset(4)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(merged(batch).logits, trained.eval()(batch).logits, atol=1e-5, rtol=1e-5)
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and "merged into the full-precision" in card.text


def test_push_full_weights_with_federation_figures(fake_hub, tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "out"
    trainer = ZOSplitTrainer(model=llama(), args=_zo_args(out, max_steps=2, save_strategy="no", zo_split="none",
                                                           learning_rate=1e-3), train_dataset=pattern_dataset())
    trainer.train()
    trainer.save_model()
    write_json(out / "federation.json", {"clients": 8, "rounds": 2, "uplink_bytes_per_round": 2048})
    result = push_run(out, "user/tiny-zo-full", token=TOKEN, merged=True)  # nothing to merge: pushed as is
    files = fake_hub.files("user/tiny-zo-full")
    assert result.variant == "full" and "model.safetensors" in files and "adapter_config.json" not in files
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and "federated-learning" in card.data.tags
    assert "| clients | 8 |" in card.text and "| uplink bytes per round | 2.05 KB |" in card.text
    assert "`none` → no split" in card.text and "4 full forwards" in card.text


def test_qlora_merge_reloads_the_base_in_full_precision(tmp_path: Path) -> None:
    from peft import PeftModel

    model = get_peft_model(quantized_llama(tmp_path / "base"),
                           LoraConfig(**LORA, init_lora_weights=False))  # non-zero B: the merge changes weights
    trainer = ZOSplitTrainer(model=model, args=_zo_args(tmp_path / "out", max_steps=2, save_strategy="no"),
                             train_dataset=pattern_dataset())
    trainer.train()
    trainer.save_model()

    staging = tmp_path / "staging"
    staging.mkdir()
    assert stage_run(tmp_path / "out", staging, merged=True) == "merged"
    config = json.loads((staging / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(staging).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                          tmp_path / "out").eval()
    batch = torch.tensor(pattern_dataset(4)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(merged(batch).logits, reference(batch).logits, atol=1e-5, rtol=1e-5)


def test_failed_push_leaves_the_run_untouched_and_a_retry_completes(fake_hub, lora_run) -> None:
    out, _ = lora_run
    before = _hashes(out)
    fake_hub.fail["commit"] = 500
    with pytest.raises(PushError, match=r"'user/tiny-zo-500'.*server error \(HTTP 500 on POST") as err:
        push_run(out, "user/tiny-zo-500", token=TOKEN, merged=True)
    assert "injected failure" in str(err.value) and str(out) in str(err.value)
    assert _hashes(out) == before  # byte-identical, and no new or temporary file
    assert set(fake_hub.files("user/tiny-zo-500")) == {".gitattributes"}  # nothing partial was committed

    del fake_hub.fail["commit"]
    push_run(out, "user/tiny-zo-500", token=TOKEN, merged=True)
    assert "model.safetensors" in fake_hub.files("user/tiny-zo-500")
    assert _hashes(out) == before


def test_bad_token_timeout_and_unreachable_hub_are_clear_errors(fake_hub, lora_run) -> None:
    out, _ = lora_run
    with pytest.raises(PushError, match=r"'user/x'.*authentication failed.*HTTP 401"):
        push_run(out, "user/x", token="hf_wrong")
    fake_hub.delay["commit"] = 3.0
    with pytest.raises(PushError, match=r"'user/x'.*timed out after 0.5 s"):
        push_run(out, "user/x", token=TOKEN, timeout=0.5)
    with pytest.raises(PushError, match=r"'user/x'.*could not reach http://127.0.0.1:9"):
        push_run(out, "user/x", token=TOKEN, endpoint="http://127.0.0.1:9")


def test_cli_push_in_a_fresh_process(fake_hub, lora_run) -> None:
    out, _ = lora_run
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(PYTHONPATH=str(REPO), HF_ENDPOINT=fake_hub.endpoint, HF_HOME=str(out.parent / "hf_home"))
    cmd = [sys.executable, "-m", "hf_fedzo", "push", str(out), "--repo-id", "user/cli", "--dataset",
           "stanfordnlp/sst2", "--task-type", "text-classification", "--branch", "v1"]
    done = subprocess.run([*cmd, "--token", TOKEN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "adapter -> user/cli@v1" in done.stdout
    assert "zo_trajectory.json" in fake_hub.files("user/cli", "v1")

    failed = subprocess.run([*cmd, "--token", "hf_wrong"], env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "'user/cli'" in failed.stderr and "HTTP 401" in failed.stderr


def test_one_card_template_for_trainer_and_push(lora_trainer, tmp_path: Path, monkeypatch) -> None:
    assert template_path() == REPO / "model_cards" / "zo_model_card.md"
    info = CardInfo(model_name="fed", variant="adapter", base_model="HuggingFaceTB/SmolLM2-135M",
                    settings={"eps": 1e-3, "p1": 2, "p2": 4, "split": "auto"},
                    plan={"split_index": 3, "num_layers": 30, "layers_path": "model.layers"},
                    federation={"clients": 10, "rounds": 50, "uplink_bytes_per_round": 1280})
    text = str(render_model_card(info))
    assert "## Federation" in text and "| uplink bytes per round | 1.28 KB |" in text
    assert "base_model: HuggingFaceTB/SmolLM2-135M" in text and "`auto` → block 2 starts at layer 3 of 30" in text
    assert "## Federation" not in str(render_model_card(CardInfo(model_name="central")))

    monkeypatch.setattr(lora_trainer.args, "output_dir", str(tmp_path))
    lora_trainer.create_model_card(dataset_tags="stanfordnlp/sst2", tasks="text-classification")
    card = ModelCard.load(tmp_path / "README.md")
    assert "Rendered by hf_fedzo from model_cards/zo_model_card.md" in card.text
    assert card.data.eval_results and card.data.eval_results[0].metric_type == "loss"
    assert "`2` → block 2 starts at layer 2 of 4" in card.text and "zo_trajectory.json" in card.text


@pytest.mark.skipif(not (os.environ.get("HF_FEDZO_REAL_HUB_TEST") == "1" and os.environ.get("HF_TOKEN")),
                    reason="pushes to the real Hub only with HF_FEDZO_REAL_HUB_TEST=1 and HF_TOKEN")
def test_real_hub_push(lora_run) -> None:  # pragma: no cover - needs the network and a write token
    from huggingface_hub import HfApi

    out, _ = lora_run
    api = HfApi()
    repo_id = f"{api.whoami()['name']}/hf-fedzo-test-{uuid.uuid4().hex[:8]}"
    try:
        push_run(out, repo_id, private=True, **CARD_ARGS)
        card = ModelCard.load(repo_id)
        assert {r.metric_type for r in card.data.eval_results} >= {"accuracy"}
        assert "zo_trajectory.json" in api.list_repo_files(repo_id)
    finally:
        api.delete_repo(repo_id, missing_ok=True)
