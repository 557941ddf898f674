"""What the packaged metric modules share: their `MetricInfo` and the checks on class-index inputs.

The metric scripts are loaded by `evaluate.load(<folder>)`, which imports them from a copy in its module
cache, so they reach shared code through the installed package (`hf_fedzo.metrics.modules`).
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

CLASS_INDEX_FEATURES = {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
"""Inputs of the classification metrics: one predicted and one gold class index per example."""


def metric_info(description: str, inputs_description: str, features: dict[str, Any]) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features(features),
    )


def class_index_arrays(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and references as arrays of the same shape (a mismatch is an error, not a broadcast)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    return predictions, references
