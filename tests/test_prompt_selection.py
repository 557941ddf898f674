"""Prompt selection on validation data, contextual calibration, and the task.json a run saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_fedzo.runs import DataArguments, build_task
from hf_fedzo.tasks import (
    LabelWordTask,
    PromptCandidate,
    PromptTemplate,
    TaskFileError,
    TaskSpec,
    classification_metrics,
    load_task,
    majority_rate,
    prompt_candidates,
    save_task,
    select_prompt,
)
from tests.fake_hub import TOKEN
from tests.tiny_models import llama, seeded

ROWS = [{"sentence": s, "label": y} for s, y in [
    ("the film was great and the acting was wonderful", 1), ("the film was terrible and the plot was boring", 0),
    ("a moving and beautiful story", 1), ("a dull and pointless mess", 0), ("it was great", 1),
    ("it was terrible", 0), ("a beautiful story", 1), ("the plot was boring", 0), ("it was wonderful", 1)]]
CANDIDATES = [
    PromptCandidate("it was", "{sentence} It was{label}", (" terrible", " great")),
    PromptCandidate("question", "{sentence}\nQuestion: Is this true?\nAnswer:{label}", (" no", " yes")),
    PromptCandidate("mess", "{sentence} a{label}", (" mess", " story")),
]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return seeded(llama, seed=3).eval()


def _metrics(bpe, model, candidate: PromptCandidate, bias=None) -> dict[str, float]:
    """A candidate's validation metrics computed independently of select_prompt: predictions one row at a time."""
    task = LabelWordTask(tokenizer=bpe, template=PromptTemplate(candidate.template), label_words=candidate.label_words,
                         score_bias=bias)
    predictions = [int(task.score(model, [row], batch_size=1).argmax()) for row in ROWS]
    return classification_metrics(predictions, [r["label"] for r in ROWS], 2)


def test_select_prompt_picks_the_best_validation_candidate(bpe, model) -> None:
    task, selection = select_prompt(model, bpe, Dataset.from_list(ROWS, split="validation"), "sst2",
                                    candidates=CANDIDATES, calibrate=False)
    expected = [_metrics(bpe, model, c)["balanced_accuracy"] for c in CANDIDATES]
    assert len(set(expected)) > 1, "the tiny model must tell the candidates apart for this test to mean anything"
    scored = {s.name: s.metrics["balanced_accuracy"] for s in selection.scores}
    assert scored == pytest.approx(dict(zip([c.name for c in CANDIDATES], expected, strict=True)))
    best = CANDIDATES[expected.index(max(expected))]
    assert selection.best.name == best.name and task.template.text == best.template
    assert task.label_words == best.label_words and task.score_bias is None
    assert selection.split == "validation" and selection.examples == len(ROWS)
    assert best.name in selection.table() and selection.as_dict()["selected"] == best.name


def test_calibrated_variants_compete_and_centre_content_free_scores(bpe, model) -> None:
    task, selection = select_prompt(model, bpe, ROWS, "sst2", candidates=CANDIDATES, calibrate=True)
    assert len(selection.scores) == 2 * len(CANDIDATES)
    for score in selection.scores:
        if score.calibrated:
            candidate = next(c for c in CANDIDATES if c.name == score.name)
            assert score.metrics == pytest.approx(_metrics(bpe, model, candidate, score.score_bias))
    best = max(selection.scores, key=lambda s: s.metrics["balanced_accuracy"])
    assert selection.best.metrics["balanced_accuracy"] == best.metrics["balanced_accuracy"]
    assert task.score_bias == selection.best.score_bias  # a chosen calibration travels with the task
    calibrated = LabelWordTask(tokenizer=bpe, template=PromptTemplate(CANDIDATES[0].template),
                               label_words=CANDIDATES[0].label_words,
                               score_bias=next(s.score_bias for s in selection.scores if s.calibrated))
    content_free = calibrated.score(model, [{"sentence": t, "label": 0} for t in ("N/A", "", "[MASK]")])
    assert content_free.mean(0).abs().max() < 1e-5  # the calibration centres the content-free inputs


@pytest.mark.parametrize("how", ["dataset split", "argument"])
def test_prompt_selection_refuses_test_data(bpe, model, how: str) -> None:
    data, split = (Dataset.from_list(ROWS, split="test"), None) if how == "dataset split" else (ROWS, "test")
    with pytest.raises(ValueError, match="must not see test data"):
        select_prompt(model, bpe, data, "sst2", candidates=CANDIDATES, split=split)


def test_candidates_include_the_preset_and_chat_versions(bpe) -> None:
    names = [c.name for c in prompt_candidates("sst2", bpe)]
    assert names[0] == "sst2 preset" and len(names) == len(set(names)) >= 5
    assert not any(c.chat for c in prompt_candidates("sst2", bpe))  # the tiny tokenizer has no chat template
    with pytest.raises(ValueError, match="generation task"):
        prompt_candidates("squad")


def test_task_json_round_trip_and_three_line_evaluation(bpe, model, tmp_path: Path) -> None:
    task = LabelWordTask(tokenizer=bpe, template=PromptTemplate("{sentence} It was{label}", truncate=("sentence",)),
                         label_words=(" terrible", " great"), max_length=40, score_bias=(0.25, -0.25), name="sst2")
    save_task(task, tmp_path, selection={"metric": "balanced_accuracy", "examples": 9})
    spec = load_task(tmp_path)
    assert isinstance(spec, TaskSpec) and spec == TaskSpec.from_task(task, {"metric": "balanced_accuracy",
                                                                            "examples": 9})
    texts, labels = [r["sentence"] for r in ROWS], [r["label"] for r in ROWS]
    assert spec.accuracy(model, bpe, texts, labels) == task.evaluate(model, ROWS)["accuracy"]
    rebuilt = load_task(tmp_path, bpe)
    assert rebuilt.score_bias == (0.25, -0.25) and rebuilt.max_length == 40
    assert torch.equal(rebuilt.score(model, ROWS), task.score(model, ROWS))


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe", "not valid JSON"), (b"[1]", "expected a JSON object"), (b'{"template": "{x}{label}"}',
                                                                          "format_version"),
    (b'{"format_version": 1, "template": "no slot", "label_words": null}', "exactly one {label}"),
    (b'{"format_version": 1, "template": "{s}{label}", "label_words": [1, 2]}', "label_words"),
    (b'{"format_version": 1, "template": "{s}{label}", "label_words": null, "secret": 1}', "unknown fields"),
])
def test_bad_task_file_names_the_file_and_field(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "task.json").write_bytes(content)
    with pytest.raises(TaskFileError, match=message) as error:
        load_task(tmp_path)
    assert str(tmp_path / "task.json") in str(error.value)


def test_missing_task_file_and_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="records no task alignment"):
        load_task(tmp_path)
    with pytest.raises(ValueError, match="unknown task preset 'sst-2'"):
        load_task("sst-2")
    with pytest.raises(ValueError, match="tokenizer"):
        load_task("sst2")


def test_recipe_flags_build_the_task(bpe, model) -> None:
    args = DataArguments(prompt="Review: {sentence}\\nSentiment:{label}", label_words=[" bad", " good"])
    task, selection = build_task(args, bpe, "causal")
    assert selection is None and task.template.text == "Review: {sentence}\nSentiment:{label}"
    assert task.label_words == (" bad", " good")
    task, selection = build_task(DataArguments(prompt="auto", prompt_examples=4), bpe, "causal", model=model,
                                 validation=ROWS)
    assert selection is not None and selection.examples == 4 and len(selection.scores) >= 10
    for kwargs, flag in (({"prompt": "no slot"}, "--prompt"), ({"prompt": "auto", "label_words": ["a", "b"]},
                                                               "--label_words"),
                         ({"prompt_examples": 0}, "--prompt_examples")):
        with pytest.raises(ValueError, match=flag):
            DataArguments(**kwargs)


def test_majority_rate() -> None:
    assert majority_rate([0, 1, 1, 1]) == 0.75 and majority_rate([]) is None
    metrics = classification_metrics([1, 1, 1, 1], [0, 1, 1, 1], 2)
    assert metrics["balanced_accuracy"] == 0.5 and metrics["prediction_rate_1"] == 1.0


def test_pushed_adapter_carries_its_task(fake_hub, bpe, model, tmp_path: Path) -> None:
    from hf_fedzo.hub import push_run

    llama().save_pretrained(tmp_path)  # a run folder: weights and the task they were trained with
    task = LabelWordTask(tokenizer=bpe, template=PromptTemplate("Review: {sentence}\nSentiment:{label}"),
                         label_words=(" bad", " good"), score_bias=(0.5, -0.5))
    save_task(task, tmp_path, selection={"metric": "balanced_accuracy", "split": "validation", "examples": 9})
    push_run(tmp_path, "user/tiny-task", token=TOKEN)
    spec = load_task("user/tiny-task")  # downloaded through the fake Hub
    assert spec == TaskSpec.from_task(task, {"metric": "balanced_accuracy", "split": "validation", "examples": 9})
    card = fake_hub.files("user/tiny-task")["README.md"].decode()
    assert "`Review: {sentence}\\nSentiment:{label}`" in card and "` bad` / ` good`" in card
    assert "contextual calibration" in card and 'load_task("user/tiny-task")' in card
    assert "chosen zero-shot on 9 validation examples by balanced accuracy" in card
    assert json.loads((tmp_path / "task.json").read_text())["format_version"] == 1
