"""Prompt templates, presets, column mapping and truncation (no model needed)."""

from __future__ import annotations

import pytest

from hf_fedzo.registry import Registry
from hf_fedzo.tasks import (
    LabelWordTask,
    PromptTemplate,
    TaskPreset,
    get_preset,
    list_presets,
    load_task,
    register_preset,
    special_tokens_around,
    templates,
)
from tests.tiny_models import build_bpe_tokenizer, build_tokenizer

LONG = " ".join(["the film was great and the acting was wonderful"] * 12)


@pytest.fixture
def bpe():
    return build_bpe_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_template_parses_fields_and_slot():
    template = PromptTemplate('{premise} "{hypothesis}" {premise}?{label}.')
    assert template.fields == ("premise", "hypothesis")
    assert template.has_suffix
    assert not PromptTemplate("{sentence} It was{label}").has_suffix
    assert template.render({"premise": " a ", "hypothesis": "b"}, "<mask>") == 'a "b" a?<mask>.'


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("{sentence} It was", {}, "exactly one {label}"),
        ("{label} {sentence}{label}", {}, "exactly one {label}"),
        ("{sentence:>10}{label}", {}, "plain name"),
        ("{sentence}{label}", {"truncate": ("passage",)}, "passage"),
        ("{sentence}{label}", {"truncation_side": "middle"}, "truncation_side"),
        ("{sentence{label}", {}, "not a valid template"),
    ],
)
def test_template_validation(text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(text, **kwargs)


def test_presets_registered_with_standard_wording():
    assert {"sst2", "rte", "boolq", "wic", "squad"} <= set(list_presets())
    sst2 = get_preset("sst2")
    assert sst2.label_words == (" terrible", " great")
    assert sst2.template.render({"sentence": "a fine film"}, " great") == "a fine film It was great"
    assert get_preset("rte").template.fields == ("premise", "hypothesis")
    assert get_preset("boolq").template.fields == ("passage", "question")
    assert get_preset("wic").template.fields == ("word", "sentence1", "sentence2")
    assert get_preset("squad").task_type == "generation" and get_preset("squad").target == "answers"
    with pytest.raises(ValueError, match="unknown task preset 'mnli'"):
        get_preset("mnli")


def test_user_preset_registration(monkeypatch, bpe):
    monkeypatch.setattr(templates, "PRESETS", Registry("preset", templates.PRESETS))
    preset = TaskPreset(
        "review", PromptTemplate("review: {text} verdict:{label}"), (" terrible", " great"), "stars"
    )
    register_preset(preset)
    with pytest.raises(ValueError, match="already registered"):
        register_preset(preset)
    task = load_task("review", bpe, model_kind="causal")
    assert task.preprocess({"text": "a film", "stars": 1})["labels"] == 1
    assert task.render({"text": "a film", "stars": 0}) == "review: a film verdict: terrible"


def test_special_tokens_around(bpe, tokenizer):
    assert special_tokens_around(bpe) == ([bpe.bos_token_id], [bpe.eos_token_id])
    assert special_tokens_around(tokenizer) == ([], [])  # the word-level tokenizer adds none


def test_columns_mapping_for_vader_style_and_renamed_data(bpe):
    vader = load_task("sst2", bpe, model_kind="causal")
    renamed = load_task("sst2", bpe, model_kind="causal", columns={"sentence": "text", "label": "stars"})
    a = vader.preprocess({"sentence": "it was great", "label": 1})
    b = renamed.preprocess({"text": "it was great", "stars": 1})
    assert a == b
    with pytest.raises(ValueError, match=r"unknown names \['sentense'\]"):
        load_task("sst2", bpe, columns={"sentense": "text"})
    with pytest.raises(KeyError, match="no column 'text'"):
        renamed.preprocess({"sentence": "it was great", "label": 1})


@pytest.mark.parametrize(("label", "message"), [(2, "out of range"), ("pos", "integer class index")])
def test_bad_label_values(bpe, label, message):
    task = load_task("sst2", bpe)
    with pytest.raises(ValueError, match=message):
        task.preprocess({"sentence": "it was great", "label": label})


def test_bool_and_numpy_labels_accepted(bpe):
    import numpy as np

    task = load_task("boolq", bpe)
    assert task.preprocess({"passage": "a", "question": "b", "label": True})["labels"] == 1
    assert task.preprocess({"passage": "a", "question": "b", "label": np.int64(0)})["labels"] == 0


def test_field_text_cannot_inject_a_mask(bpe):
    task = load_task("sst2", bpe, model_kind="mlm")
    features = task.preprocess({"sentence": "the <mask> was great", "label": 1})
    assert features["input_ids"].count(bpe.mask_token_id) == 1


# --- truncation: never cut the template tail holding the label position ----------------------------


def test_truncation_keeps_mask_and_template_tail_mlm(bpe):
    task = load_task("sst2", bpe, model_kind="mlm", max_length=24)
    features = task.preprocess({"sentence": LONG, "label": 1})
    input_ids, labels = features["input_ids"], features["labels"]
    tail = [*ids(bpe, " It was"), bpe.mask_token_id, bpe.eos_token_id]
    assert len(input_ids) == 24
    assert input_ids[-len(tail) :] == tail
    assert input_ids[: 1 + 5] == [bpe.bos_token_id, *ids(bpe, LONG)[:5]]  # right truncation keeps the start
    mask_position = input_ids.index(bpe.mask_token_id)
    assert [i for i, v in enumerate(labels) if v != -100] == [mask_position]
    assert labels[mask_position] == 1


def test_truncation_keeps_label_position_causal(bpe):
    # " wonderful" is three tokens: rows hold prompt + 2 candidate tokens, so the prompt gets 24 - 2.
    task = LabelWordTask(
        bpe, get_preset("sst2").template, (" terrible", " wonderful"), "causal", max_length=24
    )
    prompt = task.preprocess({"sentence": LONG, "label": 0})["input_ids"]
    assert len(prompt) == 22
    assert prompt[-2:] == ids(bpe, " It was")
    batch = task.collator([{"input_ids": prompt, "labels": 0}])
    assert batch["input_ids"].shape == (2, 24)


def test_truncation_left_side_and_longest_first(bpe):
    template = PromptTemplate("{a} | {b} ?{label}", truncation_side="left")
    # the space before {b} travels with the field, so `b` encodes like " it was great" in running text
    short, long_, qmark = ids(bpe, " it was great"), ids(bpe, LONG), ids(bpe, " ?")
    budget = len(ids(bpe, " |")) + len(qmark) + 2 * len(short) + 1
    encoded = template.encode(bpe, {"a": LONG, "b": "it was great"}, budget)
    assert len(encoded.prefix) == budget
    # the long field shrinks first, to one token more than the short one, keeping its end (left side)
    assert encoded.prefix[: len(short) + 1] == long_[-(len(short) + 1) :]
    assert encoded.prefix[-len(short) - len(qmark) : -len(qmark)] == short
    # two tokens tighter: the long field stops at the short one's length, then a tie (broken towards the
    # later field) takes the first token of `b`
    tighter = template.encode(bpe, {"a": LONG, "b": "it was great"}, budget - 2)
    assert tighter.prefix[: len(short)] == long_[-len(short) :]
    assert tighter.prefix[-len(short) - len(qmark) + 1 : -len(qmark)] == short[1:]


def test_space_before_field_is_tokenized_with_the_field(bpe):
    template = PromptTemplate("Question: {question}\nAnswer:{label}")
    encoded = template.encode(bpe, {"question": "was it great"}, 100)
    assert encoded.prefix == ids(bpe, "Question: was it great\nAnswer:")
    assert template.encode(bpe, {"question": ""}, 100).prefix == ids(bpe, "Question:") + ids(bpe, "\nAnswer:")


def test_space_before_label_slot_rejected():
    with pytest.raises(ValueError, match=r"space right before \{label\}"):
        PromptTemplate("{sentence} It was {label}")
    PromptTemplate("{sentence}\n{label}")  # a newline is fine: label words decide their own spacing


def test_truncation_only_touches_declared_fields(bpe):
    template = PromptTemplate("{question} {context}{label}", truncate=("context",))
    encoded = template.encode(bpe, {"question": LONG, "context": LONG}, len(ids(bpe, LONG)) + 3)
    assert encoded.prefix[: len(ids(bpe, LONG))] == ids(bpe, LONG)
    with pytest.raises(ValueError, match="only 5 fit"):
        template.encode(bpe, {"question": LONG, "context": LONG}, 5)


def test_word_level_tokenizer_roundtrip():
    tokenizer = build_tokenizer()
    task = load_task("sst2", tokenizer, model_kind="mlm")
    features = task.preprocess({"sentence": "the film was great", "label": 1})
    assert features["input_ids"] == [*ids(tokenizer, "the film was great it was"), tokenizer.mask_token_id]
