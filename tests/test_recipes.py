"""The recipes in recipes/ end to end on tiny saved models and tiny local files, offline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from hf_fedzo.reporting import plots_available
from hf_fedzo.runs import ModelUnavailableError
from hf_fedzo.tasks import get_preset, load_task
from tests.launch import launch_two_processes, offline_env
from tests.tiny_models import build_bpe_tokenizer, llama, roberta_mlm

REPO = Path(__file__).resolve().parents[1]

SST2 = [("the film was great and the acting was wonderful", 1), ("the film was terrible and the plot was boring", 0),
        ("a moving and beautiful story", 1), ("a dull and pointless mess", 0), ("it was great", 1),
        ("it was terrible", 0)]
SQUAD = [{"context": "the film was great and the acting was wonderful", "question": "how was the film",
          "answers": {"text": ["great"], "answer_start": [13]}},
         {"context": "a dull and pointless mess", "question": "what was it", "answers": {"text": ["a dull mess"],
                                                                                        "answer_start": [0]}}]
SUMMARY_KEYS = {"recipe", "trainer", "metric", "zero_shot", "final", "total_flos", "flos_counted", "global_step",
                "wall_time_s", "train_samples", "eval_samples", "arguments", "history"}
# Small and quick: two steps, an evaluation at each, no checkpoints, one thread.
FAST = ["--max_steps", "2", "--eval_steps", "1", "--logging_steps", "1", "--save_strategy", "no", "--use_cpu",
        "--disable_tqdm", "true", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--zo_p2", "2", "--learning_rate", "1e-3"]


def load_recipe(name: str) -> ModuleType:
    """Import recipes/<name>.py (a script folder, not a package) to call its `main(argv)` in process."""
    module_name = f"recipes_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "recipes" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve the module's annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models saved with their tokenizer, and tiny local data files, as a user would have them."""
    root = tmp_path_factory.mktemp("recipe_assets")
    tokenizer = build_bpe_tokenizer()
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "roberta": roberta_mlm, "llama": llama, "llama64": lambda: llama(hidden_size=64, intermediate_size=128)}
    paths = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        build().save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    with open(root / "train.csv", "w") as f:
        f.write("sentence,label\n" + "".join(f"{s},{y}\n" for s, y in SST2))
    (root / "dev.jsonl").write_text("".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in SST2[:4]))
    (root / "squad.jsonl").write_text("".join(json.dumps(row) + "\n" for row in SQUAD))
    paths.update(train=root / "train.csv", dev=root / "dev.jsonl", squad=root / "squad.jsonl")
    return paths


def check_outputs(out: Path, summary: dict[str, Any], metric: str) -> None:
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) >= SUMMARY_KEYS and written["metric"] == metric
    assert written["global_step"] == 2 and written["total_flos"] > 0
    assert written["zero_shot"]["total_flos"] == 0 and written["zero_shot"][metric] is not None
    assert written["final"]["total_flos"] == written["total_flos"] and written["final"][metric] is not None
    # Zero-shot, then one point per step (the final evaluation reuses the one at step 2).
    assert [p["step"] for p in written["history"]] == [0, 1, 2]
    flos = [p["total_flos"] for p in written["history"]]
    assert flos == sorted(flos) and flos[1] > 0
    if plots_available():  # a core install (no `plots` extra) writes everything but the figure
        assert (out / f"{metric}_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["final"] == written["final"]
    # The run records its task alignment: a user scores the saved model with exactly this prompt.
    spec, prompt = load_task(out), written["arguments"]["DataArguments"]["prompt"]
    chosen = [c["template"] for c in spec.selection["candidates"]] if prompt == "auto" else [prompt]
    assert spec.template in (chosen if prompt else [get_preset(spec.name).template.text])


def test_roberta_sst2_full_weights(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = load_recipe("roberta_sst2").main([
        "--output_dir", str(out), "--model_name_or_path", str(assets["roberta"]), "--train_file",
        str(assets["train"]), "--validation_file", str(assets["dev"]), "--max_length", "64", *FAST])
    check_outputs(out, summary, "accuracy")
    assert summary["trainer"] == "ZOSplitTrainer" and summary["arguments"]["zo"]["zo_p2"] == 2
    assert not summary["loaded_in_4bit"] and summary["trainable_parameters"] > 40_000  # every weight
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_roberta_sst2_lora_first_order_baseline(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = load_recipe("roberta_sst2").main([
        "--output_dir", str(out), "--model_name_or_path", str(assets["roberta"]), "--train_file",
        str(assets["train"]), "--validation_file", str(assets["dev"]), "--max_length", "64", "--max_train_samples",
        "4", "--peft", "lora", "--first_order", *FAST])
    check_outputs(out, summary, "accuracy")
    assert summary["trainer"] == "Trainer" and summary["train_samples"] == 4
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()


def test_causal_lm_qlora(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = load_recipe("causal_lm").main([
        "--output_dir", str(out), "--model_name_or_path", str(assets["llama64"]), "--train_file",
        str(assets["train"]), "--validation_file", str(assets["dev"]), "--max_length", "48", "--peft", "qlora",
        "--lora_target_modules", "q_proj", "v_proj", "--columns", "sentence=sentence", "--prompt", "auto",
        "--prompt_examples", "4", *FAST])
    check_outputs(out, summary, "accuracy")
    # --prompt auto chose on training rows (the validation split reports the result) and saved its table.
    selection = load_task(out).selection
    assert selection["split"] == "train" and selection["examples"] == 4 and len(selection["candidates"]) >= 10
    assert summary["loaded_in_4bit"] and 0 < summary["trainable_parameters"] < 10_000  # the adapters only
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] in (["q_proj", "v_proj"],
                                                                                        ["v_proj", "q_proj"])


def test_squad_generation(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = load_recipe("squad").main([
        "--output_dir", str(out), "--model_name_or_path", str(assets["llama"]), "--train_file", str(assets["squad"]),
        "--validation_file", str(assets["squad"]), "--max_length", "48", "--max_new_tokens", "4", *FAST])
    check_outputs(out, summary, "f1")
    assert {"eval_exact_match", "eval_f1", "eval_teacher_forced_f1"} <= set(summary["final"])
    assert (out / "model.safetensors").exists()


def test_offline_model_name_says_what_to_pass(tmp_path: Path) -> None:
    recipe = load_recipe("causal_lm")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="--model_name_or_path /path/to/local/folder"):
        recipe.main(["--output_dir", str(tmp_path), "--model_name_or_path", "hf-fedzo-tests/not-a-cached-model"])
    assert time.perf_counter() - started < 10  # fails fast: no retries, no download attempt


def test_offline_dataset_name_says_what_to_pass(assets: dict[str, Path], tmp_path: Path) -> None:
    from hf_fedzo.data import DatasetUnavailableError

    with pytest.raises(DatasetUnavailableError, match="--train_file/--validation_file"):
        load_recipe("roberta_sst2").main(["--output_dir", str(tmp_path), "--model_name_or_path",
                                          str(assets["roberta"])])


def test_wrong_task_for_recipe_names_the_other_recipe(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        load_recipe("squad").main(["--output_dir", str(tmp_path), "--task", "sst2"])


def test_script_entry_reports_offline_model_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "roberta_sst2.py"), "--output_dir", str(tmp_path)],
        env=offline_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "error: Cannot load 'roberta-large'" in result.stderr and "--model_name_or_path" in result.stderr


@pytest.mark.slow
def test_accelerate_launch_two_processes(assets: dict[str, Path], tmp_path: Path) -> None:
    """The script entry under `accelerate launch` with two CPU processes: one set of outputs, from rank 0."""
    out = tmp_path / "out"
    launch_two_processes(REPO / "recipes" / "causal_lm.py", "--output_dir", str(out), "--model_name_or_path",
                         str(assets["llama"]), "--train_file", str(assets["train"]), "--validation_file",
                         str(assets["dev"]), "--max_length", "48", "--peft", "lora", *FAST, cwd=tmp_path)
    written = json.loads((out / "metrics.json").read_text())
    assert written["world_size"] == 2 and written["global_step"] == 2
    assert (out / "accuracy_vs_flops.png").exists() == plots_available()
    assert (out / "adapter_model.safetensors").exists()
    assert not list(out.glob(".*.tmp"))


def test_federated_compares_methods_at_equal_flops(assets: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fed"
    summary = load_recipe("federated").main([
        "--output_dir", str(out), "--model_name_or_path", str(assets["llama"]), "--train_file", str(assets["train"]),
        "--validation_file", str(assets["dev"]), "--num_clients", "3", "--clients_per_round", "2", "--rounds", "2",
        "--batch_size", "2", "--partition", "iid", "--eval_every", "1", "--zo_p2", "2", "--threads", "1",
        "--compare_with", "mezo", "fedavg", "--prompt", "Review: {sentence}\\nSentiment:{label}", "--label_words",
        " bad", " good"])
    assert summary["zero_shot_accuracy"] is not None and summary["held_out_examples"] == 4
    fedspzo, mezo = summary["methods"]["fedspzo"], summary["methods"]["mezo"]
    assert fedspzo["rounds"] == 2 and fedspzo["settings"]["zo"]["p2"] == 2 and mezo["settings"]["zo"]["p2"] == 1
    assert mezo["forward_tflops"] >= fedspzo["forward_tflops"] and mezo["rounds"] > fedspzo["rounds"]
    assert 0 < fedspzo["bytes_up_per_client_round"] < 500
    assert summary["methods"]["fedavg"]["bytes_up_per_client_round"] > 10 * fedspzo["bytes_up_per_client_round"]
    assert json.loads((out / "summary.json").read_text())["methods"].keys() == {"fedspzo", "mezo", "fedavg"}
    figures = json.loads((out / "fedavg" / "adapter" / "federation.json").read_text())
    assert figures["method"] == "fedavg" and figures["clients"] == 3
    assert figures["rounds"] == summary["methods"]["fedavg"]["rounds"] >= 1
    for path in ("fedspzo/federation_results.json", "fedspzo/adapter/adapter_config.json"):
        assert (out / path).is_file(), path
    for path in ("accuracy_vs_flops.png", "mezo/accuracy_vs_bytes.png"):
        assert (out / path).is_file() == plots_available(), path
    for method in ("fedspzo", "mezo", "fedavg"):  # each shared adapter carries the prompt it was trained with
        spec = load_task(out / method / "adapter")
        assert spec.template == "Review: {sentence}\nSentiment:{label}" and spec.label_words == (" bad", " good")
    held_out = summary["methods"]["fedspzo"]["held_out"]
    assert held_out["prediction_rate_0"] + held_out["prediction_rate_1"] == pytest.approx(1.0)
    assert summary["majority_rate"] == 0.5 and summary["prompt_selection"] is None
    printed = capsys.readouterr().out
    for method in ("fedspzo", "mezo", "fedavg"):  # each method's held-out result is printed as soon as it is known
        accuracy = summary["methods"][method]["held_out_accuracy"]
        assert f"{method}: accuracy on 4 held-out examples {accuracy:.4f}" in printed


def test_bad_flags_end_in_one_error_line_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, named in ((["--output_dir", str(tmp_path), "--no_such_flag", "1"], "--no_such_flag"),
                        (["--output_dir", str(tmp_path), "--dropout", "1.0"], "dropout"),
                        (["--output_dir", str(tmp_path), "--server_lr", "4", "--compare_with", "fedavg"],
                         "--compare_with fedavg: server_lr")):
        with pytest.raises(SystemExit) as exit_info:
            load_recipe("federated").main(argv)
        assert exit_info.value.code == 2
        assert named in capsys.readouterr().err


def test_federated_run_with_another_prompt_is_never_resumed(assets: dict[str, Path], tmp_path: Path) -> None:
    """The prompt is part of the run's identity: a finished run in --output_dir is not reused for another one."""
    argv = ["--output_dir", str(tmp_path / "fed"), "--model_name_or_path", str(assets["llama"]), "--train_file",
            str(assets["train"]), "--validation_file", str(assets["dev"]), "--num_clients", "2",
            "--clients_per_round", "1", "--rounds", "1", "--batch_size", "2", "--partition", "iid", "--zo_p2", "2",
            "--threads", "1", "--compare_with", "none"]
    load_recipe("federated").main(argv)
    with pytest.raises(ValueError, match="belongs to a different run"):
        load_recipe("federated").main([*argv, "--prompt", "Review: {sentence}\\nSentiment:{label}"])


def test_lora_last_layers_adapts_only_the_top_of_the_stack() -> None:
    from hf_fedzo.runs import ModelArguments, run_recipe
    from hf_fedzo.runs.models import ModelArgumentError, apply_peft
    from tests.tiny_models import LAYERS

    args = ModelArguments(model_name_or_path="tiny", peft="lora", lora_target_modules=["q_proj", "v_proj"],
                          lora_last_layers=2)
    model = apply_peft(llama(), args, "causal")
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, p in model.named_parameters() if p.requires_grad}
    assert adapted == {LAYERS - 2, LAYERS - 1}
    too_many = ModelArguments(model_name_or_path="tiny", peft="lora", lora_last_layers=LAYERS + 1)
    with pytest.raises(ModelArgumentError, match="--lora_last_layers must be in"):
        apply_peft(llama(), too_many, "causal")
    with pytest.raises(SystemExit, match="2"):  # the script entry: one line, no traceback
        run_recipe(lambda argv: apply_peft(llama(), too_many, "causal"))
