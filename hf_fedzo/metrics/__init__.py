"""Local `evaluate` metric modules shipped inside the package.

`evaluate.load("accuracy")` fetches its script from the Hugging Face Hub, which is unreachable offline and
in CI. The modules here (one folder per metric, holding `<name>/<name>.py`) load with
`evaluate.load(<folder>)` and never touch the network; `load_metric(name)` does exactly that.

Available: `accuracy`, `f1` (binary/macro/micro/weighted) and `squad` (SQuAD-normalized exact match and
token F1 over string answers, as fractions in [0, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent


def available_metrics() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file()))


def metric_path(name: str) -> Path:
    """Folder of the local metric module `name`."""
    path = METRICS_DIR / name
    if name not in available_metrics():
        raise ValueError(f"unknown local metric {name!r}; available: {', '.join(available_metrics())}")
    return path


def load_metric(name: str, **kwargs: Any):  # -> evaluate.EvaluationModule (import kept lazy)
    """`evaluate.load` on the packaged module `name`; keyword arguments go to `evaluate.load`.

    Results are kept in memory by default (`keep_in_memory=True`): metrics are computed once on the main
    process after Trainer has gathered predictions, so evaluate's cache files and locks buy nothing.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)
