"""Tiny stand-ins for a smoke run of the Flower app on a laptop or CI: a 4-layer Llama (hidden 32) saved with a
byte-level BPE tokenizer, and labelled sentences for the sst2 prompt. Needs the repository checkout (the tiny
builders live in tests/tiny_models.py).

    python recipes/flower_app/make_tiny_assets.py /tmp/tiny   # -> /tmp/tiny/{model/, train.csv, validation.csv}
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.tiny_models
from tests.tiny_models import build_bpe_tokenizer, llama

POSITIVE = ["the film was great", "the acting was wonderful", "a moving and beautiful story", "it was great"]
NEGATIVE = ["the film was terrible", "the plot was boring", "a dull and pointless mess", "it was terrible"]


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    llama().save_pretrained(root / "model")
    build_bpe_tokenizer().save_pretrained(root / "model")
    rows = [(f"{s} and {t}", label) for label, texts in ((1, POSITIVE), (0, NEGATIVE)) for s in texts for t in texts]
    rows = [rows[i // 2] if i % 2 == 0 else rows[len(rows) // 2 + i // 2] for i in range(len(rows))]  # interleave
    (root / "train.csv").write_text("sentence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    (root / "validation.csv").write_text("sentence,label\n" + "".join(f"{s},{y}\n" for s, y in rows[::4]))
    print(root)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
