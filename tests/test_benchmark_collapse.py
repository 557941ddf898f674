"""The arithmetic of benchmarks/collapse_anatomy.py: adapter norms and the pure-noise walk of B."""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, get_peft_model

from benchmarks.collapse_anatomy import lora_norms, noise_walk
from tests import tiny_models


def test_lora_norms_measure_the_weight_change_the_adapters_merge_into():
    model = get_peft_model(tiny_models.seeded(tiny_models.llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    before = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "lora" not in n}
    norms = lora_norms(model)
    merged = model.merge_and_unload()
    change = sum(float((p - before[n.replace(".weight", ".base_layer.weight")]).pow(2).sum())
                 for n, p in merged.named_parameters() if n.replace(".weight", ".base_layer.weight") in before)
    assert norms["B"] > 0 and norms["A"] > 0
    assert math.isclose(norms["delta_w"], math.sqrt(change), rel_tol=1e-4)


def test_the_noise_walk_is_the_norm_of_steps_along_independent_directions():
    torch.manual_seed(0)
    dimension, lr = 20_000, 0.01
    scalars = [0.5, -1.0, 2.0, 0.3, -0.7, 1.5]
    b = torch.zeros(dimension)
    for g in scalars:
        b -= lr * g * torch.randn(dimension)
    assert math.isclose(noise_walk(scalars, lr, dimension), float(b.norm()), rel_tol=0.02)
    assert noise_walk([], lr, dimension) == 0.0


def test_the_noise_walk_with_decay_shrinks_what_came_before_each_step():
    torch.manual_seed(0)
    dimension, lr, decay = 20_000, 0.01, 5.0
    scalars = [1.0] * 40
    b = torch.zeros(dimension)
    for g in scalars:
        b = b * (1 - lr * decay) - lr * g * torch.randn(dimension)
    walk = noise_walk(scalars, lr, dimension, decay)
    assert math.isclose(walk, float(b.norm()), rel_tol=0.02)
    assert walk < 0.6 * noise_walk(scalars, lr, dimension)  # 40 steps at 5 % decay each: well below the free walk
