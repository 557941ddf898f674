"""SQuAD-style exact match and token F1 over free-text answers (a local, offline `evaluate` module).

Answers are normalized as in the official SQuAD v1.1 script (lowercase, no punctuation, no articles
a/an/the, single spaces); each prediction is scored against its best-matching gold answer.
"""

import collections
import re
import string

import datasets
import evaluate

from hf_fedzo.metrics.modules import metric_info

_DESCRIPTION = "Exact match and bag-of-tokens F1 between a generated answer and a list of gold answers."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated answer per question.
    references (list of list of str): the gold answers of each question (any one may match).
Returns:
    exact_match (float): fraction of predictions equal to a gold answer after normalization, in [0, 1].
    f1 (float): mean over questions of the best token-level F1 against the gold answers, in [0, 1].
    (The Hub's `squad` metric reports percentages and takes SQuAD-format dicts; this one takes strings.)
Examples:
    >>> metric = hf_fedzo.metrics.load_metric("squad")
    >>> metric.compute(predictions=["The Eiffel tower"], references=[["Eiffel Tower", "the tower"]])
    {'exact_match': 1.0, 'f1': 1.0}
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text):
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction, gold):
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty (unanswerable) is a match
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    def _info(self):
        answers = {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, answers)

    def _compute(self, predictions, references):
        if not predictions:
            return {"exact_match": 0.0, "f1": 0.0}
        em = f1 = 0.0
        for prediction, golds in zip(predictions, references, strict=True):
            golds = list(golds) or [""]
            em += max(exact_match(prediction, g) for g in golds)
            f1 += max(token_f1(prediction, g) for g in golds)
        return {"exact_match": em / len(predictions), "f1": f1 / len(predictions)}
