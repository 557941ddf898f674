"""Accuracy: the fraction of predictions equal to their reference (a local, offline `evaluate` module)."""

import evaluate
import numpy as np

from hf_fedzo.metrics.modules import CLASS_INDEX_FEATURES, class_index_arrays, metric_info

_DESCRIPTION = "Accuracy is the proportion of correct predictions among all predictions."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): gold class indices.
    normalize (bool): return the fraction (default) or the count of correct predictions.
    sample_weight (list of float, optional): per-example weights.
Returns:
    accuracy (float): in [0, 1] when `normalize`, else the (weighted) number of correct predictions.
Examples:
    >>> metric = hf_fedzo.metrics.load_metric("accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, CLASS_INDEX_FEATURES)

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions, references = class_index_arrays(predictions, references)
        weights = (
            np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        )
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total else 0.0}
