"""SQuAD-style generation: answer-token LM loss by hand, truncation, batched generation, Trainer usability."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_fedzo.tasks import GenerationTask, PromptTemplate, gold_answers, load_task
from tests.tiny_models import gpt2, llama, seeded
from tests.tiny_models import token_ids as ids

QA = [
    {
        "context": "the film was great",
        "question": "was it great",
        "answers": {"text": ["yes"], "answer_start": [0]},
    },
    {
        "context": "a dull and pointless mess",
        "question": "what was it",
        "answers": {"text": ["a dull mess", "a mess"], "answer_start": [0, 0]},
    },
    {
        "context": "it was terrible",
        "question": "was it true",
        "answers": {"text": ["no"], "answer_start": [0]},
    },
]


def prompt_ids(tokenizer, example) -> list[int]:
    text = f"{example['context']}\nQuestion: {example['question']}\nAnswer:"
    return [tokenizer.bos_token_id, *ids(tokenizer, text)]


def test_gold_answers_formats():
    assert gold_answers({"text": ["a", "b"], "answer_start": [0, 3]}) == ["a", "b"]
    assert gold_answers("a") == ["a"]
    assert gold_answers(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="answers must be"):
        gold_answers(3)


def test_preprocess_layout(bpe):
    task = load_task("squad", bpe)
    features = task.preprocess(QA[1])
    target = [*ids(bpe, " a dull mess"), bpe.eos_token_id]
    assert features["labels"] == target
    assert features["input_ids"] == prompt_ids(bpe, QA[1]) + target[:-1]
    with pytest.raises(ValueError, match="must be 'causal'"):
        load_task("squad", bpe, model_kind="mlm")
    with pytest.raises(ValueError, match="must end with"):
        GenerationTask(bpe, PromptTemplate("{question}{label}\n"))


@pytest.mark.parametrize("factory", [llama, gpt2])
def test_answer_loss_matches_hand_computation(bpe, factory):
    model = seeded(factory)
    task = load_task("squad", bpe)
    batch = task.collator([task.preprocess(e) for e in QA])
    targets = [[*ids(bpe, " " + e["answers"]["text"][0]), bpe.eos_token_id] for e in QA]
    assert batch["logits_to_keep"] == max(len(t) for t in targets)
    assert (batch["labels"] != -100).sum() == sum(len(t) for t in targets)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
        loss = task.compute_loss(outputs, batch["labels"])
    assert outputs.logits.shape[1] == batch["logits_to_keep"]

    nll = []
    for example, target in zip(QA, targets, strict=True):  # full unpadded prompt + answer + EOS
        prompt = prompt_ids(bpe, example)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + target])).logits[0], -1)
        nll += [-logp[len(prompt) - 1 + t, token] for t, token in enumerate(target)]
    torch.testing.assert_close(loss, torch.stack(nll).mean(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        share = task.compute_loss(outputs, batch["labels"], num_items_in_batch=2 * len(nll))
    torch.testing.assert_close(share, torch.stack(nll).sum() / (2 * len(nll)), rtol=1e-5, atol=1e-5)


def test_truncation_keeps_question_and_answer(bpe):
    task = load_task("squad", bpe, max_length=32, max_new_tokens=8)
    long_context = " ".join(["the film was great and the acting was wonderful"] * 10)
    example = {**QA[1], "context": long_context}
    features = task.preprocess(example)
    target = features["labels"]
    assert len(features["input_ids"]) == 32
    tail = ids(bpe, "\nQuestion: what was it\nAnswer:") + target[:-1]
    assert features["input_ids"][-len(tail) :] == tail
    assert features["input_ids"][1:4] == ids(bpe, long_context)[:3]
    # generation prompts leave room for `max_new_tokens` instead
    assert len(task.encode_prompt(example, reserve=8)) == 32 - 8


def greedy_by_hand(model, tokenizer, prompt: list[int], steps: int) -> str:
    row = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([row])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        row.append(token)
    return tokenizer.decode(row[len(prompt) :], skip_special_tokens=True).split("\n")[0].strip()


@pytest.mark.parametrize("factory", [llama, gpt2])
def test_batched_generation_matches_greedy_by_hand(bpe, factory):
    model = seeded(factory, seed=3)
    task = load_task("squad", bpe, max_new_tokens=5)
    expected = [greedy_by_hand(model, bpe, prompt_ids(bpe, e), 5) for e in QA]
    assert task.generate(model, QA, batch_size=2) == expected  # left-padded batches of 2 and 1

    # evaluate() wiring: golds equal to the model's own answers for two questions, wrong for the third
    data = [{**e, "answers": {"text": [answer or "-"]}} for e, answer in zip(QA, expected, strict=True)]
    data[2]["answers"] = {"text": ["zzz qqq"]}
    metrics = task.evaluate(model, data, batch_size=3)
    ok = sum(bool(answer) for answer in expected[:2])
    assert metrics["exact_match"] == pytest.approx(ok / 3)
    assert metrics["f1"] == pytest.approx(ok / 3)


def test_plain_trainer_trains_and_evaluates(tmp_path, bpe):
    model = seeded(llama)
    task = load_task("squad", bpe)
    data = Dataset.from_list([QA[i % 3] for i in range(8)])
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    processed = task.preprocess_dataset(data)
    trainer = Trainer(
        model=model, args=args, train_dataset=processed, eval_dataset=processed, **task.trainer_kwargs()
    )
    assert trainer.train().global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    metrics = trainer.evaluate()
    assert {
        "eval_loss",
        "eval_token_accuracy",
        "eval_teacher_forced_exact_match",
        "eval_teacher_forced_f1",
    } <= set(metrics)

    # teacher-forced metrics, recomputed by hand from the argmax at each answer position
    correct = total = exact = 0
    for example in data:
        prompt, target = prompt_ids(bpe, example), task.preprocess(example)["labels"]
        with torch.no_grad():
            predicted = (
                model(input_ids=torch.tensor([prompt + target[:-1]])).logits[0, len(prompt) - 1 :].argmax(-1)
            )
        hits = (predicted == torch.tensor(target)).tolist()
        correct, total = correct + sum(hits), total + len(hits)
        decoded = bpe.decode(predicted.tolist(), skip_special_tokens=True).split("\n")[0].strip()
        exact += decoded.lower() == bpe.decode(target, skip_special_tokens=True).strip().lower()
    assert metrics["eval_token_accuracy"] == pytest.approx(correct / total)
    assert metrics["eval_teacher_forced_exact_match"] == pytest.approx(exact / len(data))
