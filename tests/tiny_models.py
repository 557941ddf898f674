"""Tiny models and an in-process tokenizer for offline tests.

Every model is built from a config object with random weights (hidden 32–64, 2–4 layers), so tests
need no download and run in seconds on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
)

VOCAB_SIZE = 128
HIDDEN = 32
LAYERS = 4

_CORPUS = [
    "the film was great and the acting was wonderful",
    "the film was terrible and the plot was boring",
    "it was great",
    "it was terrible",
    "a moving and beautiful story",
    "a dull and pointless mess",
    "yes no maybe true false question answer passage",
    "does this mean that the sentence is true",
]


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on a fixed corpus, with BERT/RoBERTa-style special tokens."""
    special = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=special)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def _common(**overrides: object) -> dict[str, object]:
    kw: dict[str, object] = {"vocab_size": VOCAB_SIZE, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    kw.update(overrides)
    return kw


def roberta_mlm() -> PreTrainedModel:
    return RobertaForMaskedLM(RobertaConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=80, pad_token_id=0)))


def roberta_cls() -> PreTrainedModel:
    return RobertaForSequenceClassification(RobertaConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=80, num_labels=2)))


def bert_mlm() -> PreTrainedModel:
    return BertForMaskedLM(BertConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)))


def bert_cls() -> PreTrainedModel:
    return BertForSequenceClassification(BertConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_labels=2)))


def opt() -> PreTrainedModel:
    return OPTForCausalLM(OPTConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, ffn_dim=64,
        max_position_embeddings=64, word_embed_proj_dim=HIDDEN)))


def llama(**overrides: object) -> PreTrainedModel:
    kw = _common(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True)
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw))


def gpt2() -> PreTrainedModel:
    return GPT2LMHeadModel(GPT2Config(**_common(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64)))


def qwen2() -> PreTrainedModel:
    return Qwen2ForCausalLM(Qwen2Config(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64)))


def mistral() -> PreTrainedModel:
    return MistralForCausalLM(MistralConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, sliding_window=None)))


def falcon() -> PreTrainedModel:
    """Falcon's layers still return a tuple (hidden, attention weights) in transformers 5.x."""
    return FalconForCausalLM(FalconConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, max_position_embeddings=64)))


def gpt_neox() -> PreTrainedModel:
    return GPTNeoXForCausalLM(GPTNeoXConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)))


def phi() -> PreTrainedModel:
    return PhiForCausalLM(PhiConfig(**_common(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)))


MODEL_FACTORIES: dict[str, Callable[[], PreTrainedModel]] = {
    "roberta_mlm": roberta_mlm,
    "roberta_cls": roberta_cls,
    "bert_mlm": bert_mlm,
    "bert_cls": bert_cls,
    "opt": opt,
    "llama": llama,
    "gpt2": gpt2,
    "qwen2": qwen2,
    "mistral": mistral,
    "falcon": falcon,
    "gpt_neox": gpt_neox,
    "phi": phi,
}


def random_batch(name: str, batch: int = 3, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch with labels matching the model family (token labels, or class labels for *_cls)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB_SIZE, (batch, seq), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -3:] = 0  # one padded row exercises mask construction
    if name.endswith("_cls"):
        labels = torch.randint(0, 2, (batch,), generator=gen)
    else:
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


_BPE_EXTRA_CORPUS = [
    "does this mean that it is true? yes or no?",
    "answer: yes. answer: no.",
]


def build_bpe_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2/RoBERTa/SmolLM2 style) with a RoBERTa-like `<s> $A </s>` template.

    Unlike `build_tokenizer`, a word after a space is a distinct token (`" great"` -> `Ġgreat`), some words
    split into several tokens (`" wonderful"` -> `Ġwon derful`), and special tokens are added around the
    text, so prompt code is exercised the way real BPE checkpoints exercise it.
    """
    special = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    tok.train_from_iterator(_CORPUS + _BPE_EXTRA_CORPUS, trainer=trainer)
    bos_id, eos_id = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos_id), ("</s>", eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def token_ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def seeded(factory: Callable[[], PreTrainedModel], seed: int = 0) -> PreTrainedModel:
    """A tiny model in eval mode whose random weights depend only on ``seed``."""
    torch.manual_seed(seed)
    return factory().eval()


def quantized_llama(folder: Path) -> PreTrainedModel:
    """A tiny llama saved to ``folder`` and reloaded in 4-bit nf4 (bitsandbytes, CPU), ready for LoRA adapters."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    llama(hidden_size=64, intermediate_size=128).save_pretrained(folder)
    quantized = AutoModelForCausalLM.from_pretrained(
        folder, device_map="cpu",
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.float32))
    # Checkpointing only saves activation memory for backward passes, which ZO never runs.
    return prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
