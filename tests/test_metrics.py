"""The packaged `evaluate` metric modules load offline and compute correct values."""

from __future__ import annotations

import os

import evaluate
import pytest

from hf_fedzo.metrics import METRICS_DIR, available_metrics, load_metric


def test_offline_environment():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize("name", ["accuracy", "f1", "squad"])
def test_loads_from_package_without_hub(name):
    metric = load_metric(name)
    assert isinstance(metric, evaluate.Metric)
    assert metric.name == name
    assert (METRICS_DIR / name / f"{name}.py").is_file()


def test_available_and_unknown():
    assert available_metrics() == ("accuracy", "f1", "squad")
    with pytest.raises(ValueError, match="unknown local metric 'bleu'"):
        load_metric("bleu")


def test_plain_evaluate_load_of_the_folder():
    # what users without our helper would write
    metric = evaluate.load(str(METRICS_DIR / "accuracy"))
    assert metric.compute(predictions=[1, 1], references=[1, 0]) == {"accuracy": 0.5}


def test_accuracy():
    metric = load_metric("accuracy")
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2]) == {"accuracy": 0.75}
    assert metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], normalize=False) == {"accuracy": 2.0}
    weighted = metric.compute(predictions=[0, 1], references=[0, 0], sample_weight=[3.0, 1.0])
    assert weighted["accuracy"] == pytest.approx(0.75)


def test_accuracy_add_batch():
    metric = load_metric("accuracy")
    metric.add_batch(predictions=[0, 1], references=[0, 0])
    metric.add_batch(predictions=[1, 1], references=[1, 1])
    assert metric.compute() == {"accuracy": 0.75}


def test_f1_by_hand():
    metric = load_metric("f1")
    predictions, references = [0, 1, 1, 0, 2, 2], [0, 1, 0, 0, 2, 1]
    # class 0: tp=2 fp=0 fn=1 -> 4/5; class 1: tp=1 fp=1 fn=1 -> 1/2; class 2: tp=1 fp=1 fn=0 -> 2/3
    per_class = [4 / 5, 1 / 2, 2 / 3]
    assert metric.compute(predictions=predictions, references=references, average=None)[
        "f1"
    ] == pytest.approx(per_class)
    macro = metric.compute(predictions=predictions, references=references, average="macro")["f1"]
    assert macro == pytest.approx(sum(per_class) / 3)
    weighted = metric.compute(predictions=predictions, references=references, average="weighted")["f1"]
    assert weighted == pytest.approx((3 * 4 / 5 + 2 * 1 / 2 + 1 * 2 / 3) / 6)
    micro = metric.compute(predictions=predictions, references=references, average="micro")["f1"]
    assert micro == pytest.approx(4 / 6)
    binary = metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 1])["f1"]  # tp=1 fp=1 fn=1
    assert binary == pytest.approx(0.5)
    assert metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 1], pos_label=0)[
        "f1"
    ] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="`average` must be one of"):
        metric.compute(predictions=[0], references=[0], average="samples")


def test_squad_normalization_exact_match_and_f1():
    metric = load_metric("squad")
    result = metric.compute(
        predictions=["The Eiffel Tower!", "in Paris France", "", "blue"],
        references=[["eiffel tower"], ["Paris", "Paris, France"], [""], ["red", "green"]],
    )
    # EM: 1, 0, 1 (both empty), 0. F1: 1, best of {0.5 vs "paris", 0.8 vs "paris france"}, 1, 0.
    assert result["exact_match"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx((1 + 0.8 + 1 + 0) / 4)


def test_combine_with_other_local_modules():
    combined = evaluate.combine([load_metric("accuracy"), load_metric("f1")])
    result = combined.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
