"""What a run prints: the per-round line, the log-level switches, the thread policy, the hidden harmless warnings."""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hf_fedzo.federation import simulate_federation
from hf_fedzo.known_warnings import (
    BNB_KERNEL_NOT_CACHED,
    BNB_KERNELS_MISSING,
    BNB_LOGGER,
    CHECKPOINTING_DEPRECATION,
    KERNELS_LOGGER,
    KERNELS_TRUST_SKIPPED,
)
from hf_fedzo.progress import LIBRARY_LOGGER, format_duration, set_verbosity
from hf_fedzo.runs.threads import choose_threads
from tests.federation_setup import batch_loss, checksum, client_data, config, tiny_model

ROUND_LINE = re.compile(r"^(\w+) round (\d+)(?:/(\d+)| \((\d+)% of the FLOP budget\)) \| (\d+)/(\d+) clients answered"
                        r" \| train loss [\d.]+ \| [\d.]+ TFLOPs \| elapsed \S+ \| ETA \S+$")
EVAL_LINE = re.compile(r"^(\w+) round (\d+) \| eval accuracy ([\d.]+) \| elapsed \S+$")


@pytest.fixture
def verbosity():
    yield set_verbosity
    logging.getLogger(LIBRARY_LOGGER).setLevel(logging.NOTSET)


def round_lines(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := ROUND_LINE.match(line))]


def test_simulate_federation_prints_one_line_per_round(capsys: pytest.CaptureFixture[str]) -> None:
    simulate_federation(tiny_model(), batch_loss, client_data(), config(rounds=3, eval_every=2),
                        evaluate=lambda model: {"accuracy": 0.5})
    capsys_text = capsys.readouterr().out
    lines = round_lines(capsys_text)
    assert [(m[1], m[2], m[3]) for m in lines] == [("fedspzo", "1", "3"), ("fedspzo", "2", "3"), ("fedspzo", "3", "3")]
    assert all((m[5], m[6]) == ("3", "3") for m in lines)  # every sampled client answered
    evaluated = [m for line in capsys_text.splitlines() if (m := EVAL_LINE.match(line))]
    assert [(m[2], m[3]) for m in evaluated] == [("2", "0.5000"), ("3", "0.5000")]  # round 2 and after the last
    text_lines = capsys_text.splitlines()
    assert text_lines.index(lines[1][0]) + 1 == text_lines.index(evaluated[0][0])  # the eval follows its round
    assert lines[-1][0].endswith("ETA 0s")


def test_round_line_under_a_flop_budget_and_for_fedavg(capsys: pytest.CaptureFixture[str]) -> None:
    result = simulate_federation(tiny_model(), batch_loss, client_data(), config(method="fedavg", rounds=50,
                                                                                 flop_budget=2e8))
    lines = round_lines(capsys.readouterr().out)
    assert len(lines) == len(result.rounds) >= 2
    assert lines[0][1] == "fedavg" and lines[0][4] is not None and lines[-1][4] == "100"


def test_progress_output_changes_no_number(verbosity, capsys: pytest.CaptureFixture[str]) -> None:
    shown = tiny_model()
    simulate_federation(shown, batch_loss, client_data(), config(rounds=2))
    assert round_lines(capsys.readouterr().out)
    verbosity("warning")  # --log_level warning: no round line
    hidden = tiny_model()
    simulate_federation(hidden, batch_loss, client_data(), config(rounds=2))
    assert not round_lines(capsys.readouterr().out)
    assert checksum(shown) == checksum(hidden)


def test_quiet_hides_round_lines_and_bars(capsys: pytest.CaptureFixture[str]) -> None:
    import datasets
    import transformers

    from hf_fedzo.progress import bars_enabled
    from hf_fedzo.runs import configure_console

    before = transformers.logging.get_verbosity()
    try:
        configure_console("passive", quiet=True)
        assert not bars_enabled() and transformers.logging.get_verbosity() == logging.ERROR
        simulate_federation(tiny_model(), batch_loss, client_data(), config(rounds=1))
        captured = capsys.readouterr()
        assert not round_lines(captured.out) and "rounds" not in captured.err
    finally:
        transformers.logging.enable_progress_bar()
        datasets.enable_progress_bars()
        transformers.logging.set_verbosity(before)
        datasets.logging.set_verbosity(logging.WARNING)
        logging.getLogger(LIBRARY_LOGGER).setLevel(logging.NOTSET)
    assert bars_enabled()


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 187, 3720)] == ["0s", "42s", "3m07s", "1h02m"]


@pytest.mark.parametrize(("requested", "environ", "expected"), [
    (3, {"OMP_NUM_THREADS": "2"}, (3, "--threads")),
    (None, {"OMP_NUM_THREADS": "2", "LOCAL_WORLD_SIZE": "4"}, (2, "OMP_NUM_THREADS")),
    (None, {"LOCAL_WORLD_SIZE": "4"}, (4, "16 usable cores / 4 processes on this machine")),
    (None, {"LOCAL_WORLD_SIZE": "32"}, (1, "16 usable cores / 32 processes on this machine")),
    (None, {"OMP_NUM_THREADS": "many"}, (16, "16 usable cores")),
    (None, {}, (16, "16 usable cores")),
])
def test_thread_policy(requested, environ, expected) -> None:
    assert choose_threads(requested, environ, cores=16) == expected


def test_thread_count_never_exceeds_the_cores_this_process_may_use() -> None:
    threads, _ = choose_threads(None, {})
    assert 1 <= threads <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_hf_fedzo_makes_openmp_wait_passively_unless_told_otherwise(preset, expected) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import sys, hf_fedzo, os; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "False"]  # set before torch is loaded, so OpenMP reads it


@pytest.mark.parametrize("recipe", sorted(Path("recipes").glob("*.py")), ids=lambda p: p.name)
def test_recipes_import_hf_fedzo_before_torch(recipe: Path) -> None:
    imports = [node for node in ast.parse(recipe.read_text()).body if isinstance(node, ast.Import | ast.ImportFrom)]
    first = next(node for node in imports if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"))
    assert isinstance(first, ast.Import) and first.names[0].name == "hf_fedzo", f"{recipe}: import hf_fedzo first"


def test_bitsandbytes_kernel_fallback_warnings_are_hidden_and_others_are_not(caplog: pytest.LogCaptureFixture) -> None:
    import hf_fedzo  # noqa: F401  (installs the filters on import)

    bnb, kernels = logging.getLogger(BNB_LOGGER), logging.getLogger(KERNELS_LOGGER)
    template = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already " \
               "`pip install kernels` and the kernels >= 0.11.1"
    not_cached = ("Version 1 of 'kernels-community/quantization-bitsandbytes' is not available in the local cache "
                  "and Hugging Face Hub is in offline mode. Download the kernel while online first, or pass an "
                  "explicit `revision=<commit>`.")
    with caplog.at_level(logging.WARNING):
        bnb.warning(template, ModuleNotFoundError("No module named 'kernels'"))
        bnb.warning(template, ValueError(not_cached))
        kernels.warning(KERNELS_TRUST_SKIPPED)
        bnb.warning(template, RuntimeError("kernel download failed"))
        kernels.warning("Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline "
                        "mode.")
        bnb.warning("another bitsandbytes warning")
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith((BNB_KERNELS_MISSING, BNB_KERNEL_NOT_CACHED)) for m in messages)
    assert len(messages) == 3 and "kernel download failed" in messages[0]
    assert "'someone/else'" in messages[1] and messages[2] == "another bitsandbytes warning"


def test_importing_hf_fedzo_offline_prints_nothing() -> None:
    """The warnings above are emitted in a fresh process importing bitsandbytes (through PEFT) on CPUs with
    AVX512-BF16, as every hf_fedzo user does; offline, with or without the ``kernels`` package, nothing shows."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", "import hf_fedzo, peft, bitsandbytes"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_peft_checkpointing_deprecation_is_hidden_only_around_the_wrap() -> None:
    import peft
    from packaging.version import Version
    from peft import LoraConfig, get_peft_model

    from hf_fedzo.runs import ModelArguments
    from hf_fedzo.runs.models import apply_peft
    from tests.tiny_models import llama

    with warnings.catch_warnings(record=True) as caught:  # the source: PEFT's wrap, without our filter
        warnings.simplefilter("always")
        get_peft_model(llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    # PEFT <= 0.21 reads the property while wrapping; 0.22 no longer does, and then there is nothing to hide, but
    # the filter must still let the warning through outside the wrap (below).
    peft_reads_it = any(CHECKPOINTING_DEPRECATION in str(w.message) for w in caught)
    assert peft_reads_it or Version(peft.__version__) >= Version("0.22")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = apply_peft(llama(), ModelArguments(peft="lora", lora_target_modules=["q_proj"]), "causal")
        assert not [w for w in caught if CHECKPOINTING_DEPRECATION in str(w.message)]
        model.get_base_model().is_gradient_checkpointing  # noqa: B018  (outside the wrap: still warned)
        warnings.warn("an unrelated FutureWarning", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert any(CHECKPOINTING_DEPRECATION in m for m in messages) and "an unrelated FutureWarning" in messages
