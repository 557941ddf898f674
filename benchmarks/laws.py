"""The direction laws the benchmarks compare, the library's default first (a light module: timing scripts import it)."""

from __future__ import annotations

from collections.abc import Sequence

from hf_fedzo.engine.perturbation import DEFAULT_PERTURBATION


def laws_default_first(laws: Sequence[str] = ("gaussian", "gaussian_table", "rademacher_philox")) -> list[str]:
    """The library's default direction law first, then the others it is compared with (each once)."""
    return [DEFAULT_PERTURBATION, *(law for law in laws if law != DEFAULT_PERTURBATION)]


def law_label(law: str) -> str:
    return f"{law} (default)" if law == DEFAULT_PERTURBATION else law
