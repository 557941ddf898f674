import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and OpenMP barriers stall badly when the
# machine is shared: one thread keeps the suite fast and its timing stable.
torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    from tests.tiny_models import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer (leading-space label words), trained in process."""
    from tests.tiny_models import build_bpe_tokenizer

    return build_bpe_tokenizer()
