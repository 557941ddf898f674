"""F1 score for single-label classification (a local, offline `evaluate` module, no scikit-learn needed)."""

import evaluate
import numpy as np

from hf_fedzo.metrics.modules import CLASS_INDEX_FEATURES, class_index_arrays, metric_info

_DESCRIPTION = (
    "F1 is the harmonic mean of precision and recall: F1 = 2 * (precision * recall) / (precision + recall)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): gold class indices.
    average (str): "binary" (F1 of `pos_label`, the default), "macro" (unweighted mean over classes),
        "micro" (global counts; equals accuracy for single-label data), "weighted" (mean weighted by support)
        or None (one F1 per class, as a list).
    pos_label (int): the positive class for `average="binary"` (default 1).
    labels (list of int, optional): the classes to average over (default: every class seen in either list).
Returns:
    f1 (float, or list of float when `average=None`): in [0, 1]. A class with no predicted and no gold
    example counts as F1 = 0 when it is listed in `labels`.
Examples:
    >>> metric = hf_fedzo.metrics.load_metric("f1")
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], average="macro")
    {'f1': 0.7333333333333334}
"""

_AVERAGES = ("binary", "macro", "micro", "weighted", None)


def _per_class(predictions, references, classes):
    f1, support = [], []
    for c in classes:
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        denominator = 2 * tp + fp + fn
        f1.append(2 * tp / denominator if denominator else 0.0)
        support.append(np.sum(references == c))
    return np.asarray(f1, dtype=float), np.asarray(support, dtype=float)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, CLASS_INDEX_FEATURES)

    def _compute(self, predictions, references, average="binary", pos_label=1, labels=None):
        if average not in _AVERAGES:
            raise ValueError(f"`average` must be one of {_AVERAGES}, got {average!r}")
        predictions, references = class_index_arrays(predictions, references)
        if average == "binary":
            f1, _ = _per_class(predictions, references, [pos_label])
            return {"f1": float(f1[0])}
        if average == "micro":
            # Single-label: every error is one false positive and one false negative, so micro-F1 = accuracy.
            mask = np.isin(references, labels) if labels is not None else np.ones(len(references), dtype=bool)
            total = np.sum(mask)
            return {"f1": float(np.sum((predictions == references) & mask) / total) if total else 0.0}
        classes = (
            sorted(set(predictions.tolist()) | set(references.tolist())) if labels is None else list(labels)
        )
        f1, support = _per_class(predictions, references, classes)
        if average is None:
            return {"f1": f1.tolist()}
        if average == "macro":
            return {"f1": float(f1.mean()) if len(f1) else 0.0}
        return {"f1": float(np.sum(f1 * support) / np.sum(support)) if np.sum(support) else 0.0}
