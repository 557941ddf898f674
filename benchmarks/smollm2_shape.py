"""The SmolLM2-135M architecture built from its config (random weights): what the benchmarks measure on.

Bytes and replay time do not depend on the weight values, so no asset is needed; the shape matches the
real model the demo fine-tunes (30 layers, hidden 576, GQA 9/3 heads, vocabulary 49152, tied head).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                    rms_norm_eps=1e-5, rope_theta=100000.0)


def smollm2_shaped(lora_r: int | None = None, seed: int = 0) -> nn.Module:
    """SmolLM2-135M-shaped causal LM; with ``lora_r``, LoRA on q_proj/v_proj as in the demo."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    if lora_r is not None:
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=["q_proj", "v_proj"]))
    return model


def token_batch(batch: int, seq: int, seed: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}
