"""Accuracy: the fraction of predictions equal to their reference (a local, offline `evaluate` module)."""

import datasets
import evaluate
import numpy as np

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
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(
                f"predictions {predictions.shape} and references {references.shape} differ in shape"
            )
        weights = (
            np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        )
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total else 0.0}
