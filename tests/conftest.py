import os

import pytest
import torch

from tests.fake_hub import FakeHub

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# huggingface_hub reads HF_ENDPOINT once, at import (download URLs are built from it), so the fake Hub
# must be listening and named here, before any test module imports transformers or huggingface_hub.
# The real-Hub test opts out and keeps the user's endpoint.
REAL_HUB = os.environ.get("HF_FEDZO_REAL_HUB_TEST") == "1"
FAKE_HUB: FakeHub | None = None if REAL_HUB else FakeHub().start()
if FAKE_HUB is not None:
    os.environ["HF_ENDPOINT"] = FAKE_HUB.endpoint

# Tiny models gain nothing from intra-op threads, and OpenMP barriers stall badly when the
# machine is shared: one thread keeps the suite fast and its timing stable. The variable too: recipes run in
# process choose their thread count from it (hf_fedzo.runs.threads), and launched processes inherit it.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """The session's fake Hub, emptied, with this process's huggingface_hub online and caching under tmp."""
    if FAKE_HUB is None:
        pytest.skip("HF_FEDZO_REAL_HUB_TEST=1: the fake Hub is off")
    from huggingface_hub import constants

    if FAKE_HUB.endpoint != constants.ENDPOINT:
        pytest.fail(f"huggingface_hub was imported before conftest set HF_ENDPOINT ({constants.ENDPOINT})")
    FAKE_HUB.reset()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs with HF_HUB_OFFLINE=1
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub_cache")))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield FAKE_HUB
    unrouted = list(FAKE_HUB.unrouted)
    FAKE_HUB.reset()
    assert not unrouted, f"the client called endpoints the fake Hub does not implement: {unrouted}"


@pytest.fixture
def tiny_assets(tmp_path, monkeypatch):
    """A tiny Llama saved with its tokenizer, and a prepared fake VADER asset in a private cache (the accuracy
    benchmarks' end-to-end tests)."""
    from hf_fedzo.data.assets import ASSETS, write_manifest
    from tests.asset_fixtures import make_fake_vader_sdist
    from tests.tiny_models import build_bpe_tokenizer, llama

    spec = ASSETS["vader"]
    folder = tmp_path / "cache" / spec.relpath
    folder.mkdir(parents=True)
    make_fake_vader_sdist(folder / spec.entry, n_rows=80)  # movie: 64 train, 8 validation, 8 test sentences
    write_manifest(spec, folder)
    monkeypatch.setenv("HF_FEDZO_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    llama().save_pretrained(tmp_path / "llama")
    build_bpe_tokenizer().save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.fixture
def tokenizer():
    from tests.tiny_models import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer (leading-space label words), trained in process."""
    from tests.tiny_models import build_bpe_tokenizer

    return build_bpe_tokenizer()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many tests waited for the real assets, and how to run them (a fresh clone has none)."""
    from tests.asset_fixtures import REAL_ASSET_SKIP

    skipped = [r for r in terminalreporter.stats.get("skipped", []) if REAL_ASSET_SKIP in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("-", "real assets")
        terminalreporter.write_line(f"{len(skipped)} real-asset test(s) skipped (no prepared SmolLM2-135M-Instruct or "
                                    "VADER in the cache): run `make demo` or `hf-fedzo prepare-assets` first, then "
                                    "`make test` again to include them.")
