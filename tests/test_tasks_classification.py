"""Label-word classification: scores against hand computations on tiny models, and Trainer usability."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_fedzo.tasks import LabelWordTask, PromptTemplate, get_preset, infer_model_kind, load_task
from tests.tiny_models import (
    MODEL_FACTORIES,
    bert_mlm,
    build_tokenizer,
    gpt2,
    llama,
    opt,
    roberta_mlm,
    seeded,
)
from tests.tiny_models import token_ids as ids

EXAMPLES = [
    {"sentence": "the film was great and the acting was wonderful", "label": 1},
    {"sentence": "a dull and pointless mess", "label": 0},
    {"sentence": "it was boring", "label": 0},
]


def forward(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs)


# --- masked LM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [roberta_mlm, bert_mlm])
def test_mlm_scores_match_hand_computation(bpe, factory):
    model = seeded(factory)
    task = load_task("sst2", bpe, model_kind="mlm")
    batch = task.collator([task.preprocess(e) for e in EXAMPLES])
    with torch.no_grad():
        scores = task.scores(forward(model, batch), batch["labels"])
        loss = task.compute_loss(forward(model, batch), batch["labels"])

    word_ids = [bpe.convert_tokens_to_ids("Ġterrible"), bpe.convert_tokens_to_ids("Ġgreat")]
    expected = []
    for example in EXAMPLES:  # one unpadded sequence at a time, built from the full string
        row = [
            bpe.bos_token_id,
            *ids(bpe, example["sentence"] + " It was"),
            bpe.mask_token_id,
            bpe.eos_token_id,
        ]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row])).logits[0, len(row) - 2]
        expected.append(torch.log_softmax(logits, -1)[word_ids])
    expected = torch.stack(expected)
    gold = torch.tensor([e["label"] for e in EXAMPLES])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(expected, gold), rtol=1e-5, atol=1e-5)
    # cross-entropy over restricted log-probs == over the restricted raw logits
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"] != -100).sum() == len(EXAMPLES)


def test_mlm_template_with_suffix(bpe):
    model = seeded(roberta_mlm)
    template = PromptTemplate("{sentence} ?{label} , it was great")
    task = LabelWordTask(bpe, template, (" no", " yes"), "mlm")
    features = task.preprocess({"sentence": "it was great", "label": 1})
    row = [
        bpe.bos_token_id,
        *ids(bpe, "it was great ?"),
        bpe.mask_token_id,
        *ids(bpe, " , it was great"),
        bpe.eos_token_id,
    ]
    assert features["input_ids"] == row
    batch = task.collator([features])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0, row.index(bpe.mask_token_id)]
        got = task.scores(forward(model, batch), batch["labels"])
    torch.testing.assert_close(
        got[0], torch.log_softmax(logits, -1)[[ids(bpe, " no")[0], ids(bpe, " yes")[0]]]
    )


def test_mlm_rejects_multi_token_label_word(bpe):
    with pytest.raises(ValueError, match=r"label word ' wonderful' is 3 tokens"):
        LabelWordTask(bpe, get_preset("sst2").template, (" terrible", " wonderful"), "mlm")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ((" great", " "), "label word ' ' tokenizes to nothing"),
        ((" great", " zebra"), "label word ' zebra' contains the unknown token"),
        ((" great", "great"), "label words ' great' and 'great' tokenize to the same ids"),
        ((" great",), "at least two words"),
        (" great terrible", "not one string"),
    ],
)
def test_label_word_validation(words, message):
    tokenizer = build_tokenizer()  # word level: " " is nothing, "zebra" is unknown, " great" == "great"
    with pytest.raises(ValueError, match=message):
        LabelWordTask(tokenizer, get_preset("sst2").template, words, "causal")


def test_causal_rejects_text_after_slot(bpe):
    with pytest.raises(ValueError, match="slot must end the template"):
        LabelWordTask(bpe, PromptTemplate("{sentence} It was{label}."), (" terrible", " great"), "causal")


def test_unknown_model_kind(bpe):
    with pytest.raises(ValueError, match="`model_kind` must be one of"):
        load_task("sst2", bpe, model_kind="seq2seq")


# --- causal LM ------------------------------------------------------------------------------------


def hand_causal_scores(
    model, tokenizer, prompts: list[list[int]], candidates: list[list[int]]
) -> torch.Tensor:
    """Mean log-prob of each candidate's tokens after each prompt, one unpadded full sequence at a time."""
    scores = torch.zeros(len(prompts), len(candidates))
    for b, prompt in enumerate(prompts):
        for c, candidate in enumerate(candidates):
            row = prompt + candidate
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0], -1)
            scores[b, c] = torch.stack(
                [logp[len(prompt) - 1 + t, token] for t, token in enumerate(candidate)]
            ).mean()
    return scores


@pytest.mark.parametrize("factory", [llama, gpt2, opt])
def test_causal_single_token_scores_match_hand_computation(bpe, factory):
    model = seeded(factory)
    task = load_task("sst2", bpe, model_kind="causal")
    batch = task.collator([task.preprocess(e) for e in EXAMPLES])
    assert batch["logits_to_keep"] == 1 and batch["input_ids"].shape[0] == len(EXAMPLES)
    with torch.no_grad():
        outputs = forward(model, batch)
        scores = task.scores(outputs, batch["labels"])
        loss = task.compute_loss(outputs, batch["labels"])
    assert outputs.logits.shape[:2] == (len(EXAMPLES), 1)  # head logits only at the one needed position

    prompts = [[bpe.bos_token_id, *ids(bpe, e["sentence"] + " It was")] for e in EXAMPLES]
    expected = hand_causal_scores(model, bpe, prompts, [ids(bpe, " terrible"), ids(bpe, " great")])
    gold = torch.tensor([e["label"] for e in EXAMPLES])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(expected, gold), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", [llama, gpt2])
def test_causal_multi_token_scores_match_hand_computation(bpe, factory):
    model = seeded(factory)
    words = (" terrible", " wonderful", " yes")  # 1, 3 and 1 tokens
    task = LabelWordTask(bpe, get_preset("sst2").template, words, "causal")
    examples = [{**e, "label": i % 3} for i, e in enumerate(EXAMPLES)]
    batch = task.collator([task.preprocess(e) for e in examples])
    assert batch["input_ids"].shape[0] == len(examples) * len(words)
    assert batch["logits_to_keep"] == 3
    with torch.no_grad():
        outputs = forward(model, batch)
        scores = task.scores(outputs, batch["labels"])
        loss = task.compute_loss(outputs, batch["labels"])
    assert outputs.logits.shape[1] == 3

    prompts = [[bpe.bos_token_id, *ids(bpe, e["sentence"] + " It was")] for e in examples]
    expected = hand_causal_scores(model, bpe, prompts, [ids(bpe, w) for w in words])
    gold = torch.tensor([e["label"] for e in examples])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(expected, gold), rtol=1e-5, atol=1e-5)


def test_causal_without_logits_to_keep_or_position_ids_gives_same_scores(bpe):
    model = seeded(llama)
    lean = load_task("rte", bpe, model_kind="causal")
    full = load_task("rte", bpe, model_kind="causal", logits_to_keep=False, position_ids=False)
    examples = [
        {"premise": e["sentence"], "hypothesis": "it was great", "label": e["label"]} for e in EXAMPLES
    ]
    lean_batch = lean.collator([lean.preprocess(e) for e in examples])
    full_batch = full.collator([full.preprocess(e) for e in examples])
    assert "logits_to_keep" not in full_batch and "position_ids" not in full_batch
    with torch.no_grad():
        full_out = forward(model, full_batch)
        torch.testing.assert_close(
            lean.scores(forward(model, lean_batch), lean_batch["labels"]),
            full.scores(full_out, full_batch["labels"]),
            rtol=1e-5,
            atol=1e-5,
        )
    assert full_out.logits.shape[1] == full_batch["input_ids"].shape[1]


def test_loss_uses_num_items_in_batch(bpe):
    model = seeded(llama)
    task = load_task("sst2", bpe)
    batch = task.collator([task.preprocess(e) for e in EXAMPLES])
    with torch.no_grad():
        outputs = forward(model, batch)
        per_example = F.cross_entropy(
            task.scores(outputs, batch["labels"]), batch["labels"][:, 1], reduction="none"
        )
        # e.g. gradient accumulation over two such batches: the loss is this batch's share of the global mean
        accumulated = task.compute_loss(outputs, batch["labels"], num_items_in_batch=torch.tensor(6))
    torch.testing.assert_close(accumulated, per_example.sum() / 6)


@pytest.mark.parametrize(("factory", "kind"), [(llama, "causal"), (gpt2, "causal"), (roberta_mlm, "mlm")])
def test_trainer_counts_one_item_per_example(tmp_path, bpe, factory, kind):
    """Trainer's `num_items_in_batch` (it skips column 0 for causal-LM models) equals the example count."""
    task = load_task("sst2", bpe, model_kind=kind)
    trainer = Trainer(
        model=factory(),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
        compute_loss_func=task.compute_loss,
    )
    batch = task.collator([task.preprocess(e) for e in EXAMPLES])
    assert int(trainer._get_num_items_in_batch([batch, batch], torch.device("cpu"))) == 2 * len(EXAMPLES)


def test_infer_model_kind():
    assert infer_model_kind(roberta_mlm()) == "mlm"
    assert infer_model_kind(gpt2()) == "causal"
    with pytest.raises(ValueError, match="pass `model_kind`"):
        infer_model_kind(torch.nn.Linear(2, 2))


# --- standalone zero-shot scoring and Trainer (first-order baseline) -------------------------------


def sentiment_data(n: int = 12) -> Dataset:
    sentences = ["the film was great", "a moving and beautiful story", "it was terrible", "a dull mess"]
    return Dataset.from_dict(
        {
            "sentence": [sentences[i % 4] for i in range(n)],
            "label": [int(i % 4 < 2) for i in range(n)],
            "idx": list(range(n)),
        }
    )


@pytest.mark.parametrize(("factory", "kind"), [(llama, "causal"), (roberta_mlm, "mlm")])
def test_score_predict_evaluate(bpe, factory, kind):
    model = seeded(factory).train()
    task = load_task("sst2", bpe, model_kind=kind)
    data = sentiment_data(7)
    scores = task.score(model, data, batch_size=3)
    assert model.training  # restored
    batch = task.collator([task.preprocess(e) for e in data])
    with torch.no_grad():
        expected = task.scores(forward(model.eval(), batch), batch["labels"])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(task.predict(model, task.preprocess_dataset(data), batch_size=4), expected.argmax(-1))
    metrics = task.evaluate(model, data, batch_size=5)
    gold = torch.tensor(data["label"])
    assert metrics["accuracy"] == pytest.approx((expected.argmax(-1) == gold).float().mean().item())
    assert set(metrics) == {"accuracy", "f1", "balanced_accuracy", "prediction_rate_0", "prediction_rate_1"}
    predicted = expected.argmax(-1)
    assert metrics["prediction_rate_1"] == pytest.approx(predicted.float().mean().item())
    recalls = [(predicted[gold == k] == k).float().mean().item() for k in (0, 1)]
    assert metrics["balanced_accuracy"] == pytest.approx(sum(recalls) / 2)


@pytest.mark.parametrize(
    ("factory", "kind", "words"),
    [
        (llama, "causal", (" terrible", " great")),
        (gpt2, "causal", (" terrible", " wonderful")),
        (roberta_mlm, "mlm", (" terrible", " great")),
    ],
)
def test_plain_trainer_trains_and_evaluates(tmp_path, bpe, factory, kind, words):
    model = seeded(factory)
    task = load_task("sst2", bpe, model_kind=kind, label_words=words)
    train, dev = sentiment_data(16), sentiment_data(6)
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=task.preprocess_dataset(train),
        eval_dataset=task.preprocess_dataset(dev),
        **task.trainer_kwargs(),
    )
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    metrics = trainer.evaluate()
    standalone = task.evaluate(model, dev, batch_size=4)
    assert metrics["eval_accuracy"] == pytest.approx(standalone["accuracy"])
    assert metrics["eval_f1"] == pytest.approx(standalone["f1"])
    scores = task.score(model, dev, batch_size=4)
    expected_loss = F.cross_entropy(scores, torch.tensor(dev["label"])).item()
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-4)
    prediction = trainer.predict(task.preprocess_dataset(dev))
    assert prediction.predictions.shape == (len(dev), 2)  # reduced to per-class scores, not B x T x V


@pytest.mark.parametrize("name", ["roberta_mlm", "bert_mlm", "opt", "llama", "gpt2", "qwen2", "mistral"])
def test_batch_keys_are_forward_kwargs(bpe, name):
    """Trainer pops `labels` and calls `model(**rest)`: every other key must be a forward argument."""
    model = MODEL_FACTORIES[name]().eval()
    kind = infer_model_kind(model)
    for task in (load_task("sst2", bpe, model_kind=kind), load_task("wic", bpe, model_kind=kind)):
        example = {"word": "film", "sentence1": "the film", "sentence2": "a film", **EXAMPLES[0]}
        batch = task.collator([task.preprocess(example)] * 2)
        assert set(batch) - {"labels"} <= set(inspect.signature(model.forward).parameters)
        with torch.inference_mode():  # as the ZO trainer runs it
            loss = task.compute_loss(forward(model, batch), batch["labels"])
        assert torch.isfinite(loss)


def test_pad_to_multiple_of_does_not_change_scores(bpe):
    model = seeded(gpt2)
    plain = load_task("sst2", bpe, label_words=(" terrible", " wonderful"))
    padded = load_task("sst2", bpe, label_words=(" terrible", " wonderful"), pad_to_multiple_of=8)
    features = [plain.preprocess(e) for e in EXAMPLES]
    batch, padded_batch = plain.collator(features), padded.collator(features)
    assert padded_batch["input_ids"].shape[1] % 8 == 0
    assert padded_batch["input_ids"].shape[1] > batch["input_ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(
            plain.scores(forward(model, batch), batch["labels"]),
            padded.scores(forward(model, padded_batch), padded_batch["labels"]),
            rtol=1e-5,
            atol=1e-5,
        )
