"""Frozen layers held at a smaller dtype (``frozen_dtype``): what is lowered, exact restore, exact replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_fedzo.engine import LoweredLinears, find_layer_stack
from hf_fedzo.federation import FederationConfig, ZOClient, simulate_federation
from hf_fedzo.federation.protocol import ProtocolError, RoundSettings
from tests.federation_setup import batch_loss, client_data, config, replayed_from_state, tiny_model


def lora_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_peft_model(tiny_model(seed), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


@torch.no_grad()
def _loss(model: nn.Module, batch: dict) -> float:
    return float(batch_loss(model, batch))


def test_only_frozen_linears_of_the_chosen_layers_are_lowered_and_restore_is_exact() -> None:
    model = lora_model()
    _, layers = find_layer_stack(model)
    batch = client_data()[0].round_batches(0, 0, 0, 1, 4)[0]
    before, loss_full = _weights(model), _loss(model, batch)
    storage = {name: t.data_ptr() for name, t in model.state_dict().items()}
    lowered = LoweredLinears([layers[0]], torch.bfloat16)
    dtypes = {name: t.dtype for name, t in model.named_parameters()}
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.layers.0.mlp.up_proj.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == torch.float32
    assert dtypes["base_model.model.model.layers.0.input_layernorm.weight"] == torch.float32  # norms stay
    assert dtypes["base_model.model.model.layers.1.mlp.up_proj.weight"] == torch.float32  # other layers stay
    loss_lowered = _loss(model, batch)
    assert loss_lowered != loss_full and loss_lowered == pytest.approx(loss_full, rel=1e-2)
    assert lowered.saved_bytes == sum(t.numel() * 2 for n, t in model.named_parameters()
                                      if t.dtype == torch.bfloat16)
    lowered.restore()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]) and tensor.data_ptr() == storage[name], name
    assert _loss(model, batch) == loss_full  # the casts are gone too


def test_a_full_weight_model_has_nothing_to_lower() -> None:
    model = tiny_model()
    _, layers = find_layer_stack(model)
    assert LoweredLinears(list(layers), torch.bfloat16).saved_bytes == 0  # every linear is trainable
    settings = config(block_allocation="top", frozen_dtype="bfloat16").round_settings()
    standalone = ZOClient(tiny_model(), batch_loss, keep_full_precision=False)
    _round(standalone, settings, "3:4")
    assert standalone.lowered_layers == set()  # nothing was dropped, so every layer can still be trained
    _round(standalone, settings, "-1:4", 1)


def _round(client: ZOClient, settings: RoundSettings, active: str, round_id: int = 0) -> np.ndarray:
    batches = client_data()[1].round_batches(7, round_id, 1, settings.local_steps, settings.batch_size)
    scalars, _, _ = client.run_local_steps(round_id, 7, 1, settings, batches, active)
    return scalars


def test_a_standalone_lowered_client_reports_the_simulators_scalars_and_holds_less() -> None:
    cfg = config(block_allocation="top", client_budgets="half-quarter", frozen_dtype="bfloat16")
    settings, plain = cfg.round_settings(), config(block_allocation="top").round_settings()
    simulated, standalone = ZOClient(lora_model(), batch_loss), ZOClient(lora_model(), batch_loss, False)
    before = _weights(simulated.model)
    lowered = _round(simulated, settings, "3:4")
    assert all(torch.equal(t, before[n]) for n, t in simulated.model.state_dict().items())  # restored
    assert not np.array_equal(lowered, _round(simulated, plain, "3:4"))  # the lowering changed the forwards
    bytes_before = sum(t.numel() * t.element_size() for t in standalone.model.parameters())
    assert np.array_equal(_round(standalone, settings, "3:4"), lowered)  # tolerance 0
    assert standalone.lowered_layers == {0, 1, 2}
    bytes_after = sum(t.numel() * t.element_size() for t in standalone.model.parameters())
    assert bytes_after < bytes_before
    assert np.array_equal(_round(standalone, settings, "3:4", 1), _round(simulated, settings, "3:4", 1))
    with pytest.raises(ProtocolError, match=r"trains layer\(s\) \[2\] at full precision.*keep_full_precision"):
        _round(standalone, settings, "2:4", 2)
    batches = client_data()[1].round_batches(7, 3, 1, settings.local_steps, settings.batch_size)
    with pytest.raises(ProtocolError, match=r"trains layer\(s\) \[0, 1, 2\] at full precision"):
        standalone.run_local_steps(3, 7, 1, settings, batches)  # no active set: every layer


def test_an_instruction_off_the_wire_lowers_the_same_layers() -> None:
    """What a Flower node runs: the frozen dtype arrives in the encoded instruction's settings."""
    from hf_fedzo.federation.protocol import RoundInstruction, decode, encode

    settings = config(block_allocation="top", frozen_dtype="bfloat16").round_settings()
    instruction = decode(encode(RoundInstruction(0, 1, 7, 0, settings, active="3:4")), RoundInstruction)
    assert instruction.settings.frozen_dtype == "bfloat16"
    batches = client_data()[1].round_batches(7, 0, 1, settings.local_steps, settings.batch_size)
    report, _ = ZOClient(lora_model(), batch_loss, keep_full_precision=False).handle(instruction, batches, 12)
    expected, _, _ = ZOClient(lora_model(), batch_loss).run_local_steps(0, 7, 0, settings, batches, "3:4")
    assert np.array_equal(report.scalars, expected)


def test_a_federation_with_frozen_dtype_replays_exactly(tmp_path: Path) -> None:
    cfg = config(block_allocation="top", client_budgets="half-quarter", frozen_dtype="bfloat16", rounds=3)
    model = lora_model()
    simulate_federation(model, batch_loss, client_data(), cfg, output_dir=tmp_path)
    assert all(t.dtype == torch.float32 for t in model.parameters())
    replica = replayed_from_state(cfg, tmp_path, lora_model())
    for a, b in zip(model.parameters(), replica.parameters(), strict=True):
        assert torch.equal(a, b)
    plain = lora_model()
    simulate_federation(plain, batch_loss, client_data(), config(block_allocation="top", client_budgets="half-quarter",
                                                                 rounds=3), output_dir=tmp_path / "plain")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters(), strict=True))


def test_frozen_dtype_is_validated_and_travels_only_when_set() -> None:
    with pytest.raises(ValueError, match="frozen_dtype='bfloat16' lowers the layers a client does not train"):
        config(frozen_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"frozen_dtype must be one of \['bfloat16', 'float16'\] \(got 'int8'\)"):
        config(block_allocation="top", frozen_dtype="int8")
    settings = config(block_allocation="top", frozen_dtype="float16").round_settings()
    assert RoundSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert "frozen_dtype" not in config(block_allocation="top").round_settings().to_json()
    assert "frozen_dtype" not in FederationConfig(block_allocation="top").to_dict()  # fingerprints unchanged
    with pytest.raises(ValueError, match="frozen_dtype must be one of"):
        RoundSettings.from_json(settings.to_json() | {"frozen_dtype": ["bfloat16"]})


def test_a_memory_budget_counts_the_lowered_layers() -> None:
    from hf_fedzo.federation.allocation import AllocationError, allocate
    from hf_fedzo.federation.budgets import ClientBudget

    lowered_cfg = config(block_allocation="top", frozen_dtype="bfloat16")
    probe = client_data()[0].round_batches(7, 0, 0, 1, 4)[0]
    lowered = ZOClient(lora_model(), batch_loss).layer_costs(lowered_cfg.round_settings(), probe)
    plain = ZOClient(lora_model(), batch_loss).layer_costs(config(block_allocation="top").round_settings(), probe)
    top = plain.top(0.25)
    linear_mib = sum(t.numel() * 2 for n, t in lora_model().named_parameters()
                     if "layers.0." in n and "lora_" not in n and "layernorm" not in n) / 2**20
    assert lowered.memory_mib(top) < plain.memory_mib(top)
    assert lowered.memory_mib(top) == pytest.approx(plain.memory_mib(top) - 3 * linear_mib)  # layers 0-2 frozen
    assert lowered.memory_mib(plain.top(1.0)) == pytest.approx(plain.memory_mib(plain.top(1.0)))
    budget = [ClientBudget(memory_mib=(lowered.memory_mib(top) + plain.memory_mib(top)) / 2)]
    with pytest.raises(AllocationError, match="client 0"):
        allocate("top", [0], budget, plain)
    active = allocate("top", [0], budget, lowered)[0]
    assert lowered.memory_mib(active) <= budget[0].memory_mib and active.lowest <= top.lowest


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux resident high-water mark only")
def test_the_cpu_peak_window_starts_at_the_reset() -> None:
    from hf_fedzo.federation.client import peak_memory_mib, reset_peak_memory

    cpu = torch.device("cpu")
    big = torch.ones(96 * 2**20 // 4)  # 96 MiB, touched; over glibc's mmap threshold, so freeing returns it
    high = peak_memory_mib(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mib(cpu) < high - 64
