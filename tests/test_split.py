"""Split execution re-runs only layers k..N on a cached activation and gives the full forward's loss."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.modeling_layers import GradientCheckpointingLayer

from hf_fedzo.engine import UnsupportedModelError, ZOEstimator, ZOSettings, find_layer_stack, trainable_parameters
from hf_fedzo.engine.seeds import BLOCK1, BLOCK2, direction_seed
from hf_fedzo.engine.split import SplitExecutor, build_plan, choose_split
from tests.tiny_models import LAYERS, MODEL_FACTORIES, random_batch

EXPECTED_STACK = {
    "roberta_mlm": "roberta.encoder.layer",
    "roberta_cls": "roberta.encoder.layer",
    "bert_mlm": "bert.encoder.layer",
    "bert_cls": "bert.encoder.layer",
    "opt": "model.decoder.layers",
    "llama": "model.layers",
    "gpt2": "transformer.h",
    "qwen2": "model.layers",
    "mistral": "model.layers",
    "falcon": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "phi": "model.layers",
}


def _with_lora(name: str, model: torch.nn.Module) -> torch.nn.Module:
    # init_lora_weights=False gives a non-zero B so the adapters really change the output.
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            task_type="SEQ_CLS" if name.endswith("_cls") else None))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_split_forward_equals_full_forward(name: str, lora: bool) -> None:
    torch.manual_seed(0)
    model = MODEL_FACTORIES[name]().eval()
    if lora:
        model = _with_lora(name, model)
    batch = random_batch(name)

    def loss_fn() -> torch.Tensor:
        return model(**batch).loss

    path, layers = find_layer_stack(model)
    assert path.endswith(EXPECTED_STACK[name])
    with torch.inference_mode():
        full = loss_fn()
        for k in range(1, LAYERS):
            executor = SplitExecutor(layers, k)
            hidden = executor.run_prefix(loss_fn)
            torch.testing.assert_close(executor.run_suffix(loss_fn, hidden), full, rtol=0, atol=1e-6)
        # the stack's layers are restored afterwards
        torch.testing.assert_close(loss_fn(), full, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "roberta_mlm", "opt", "falcon"])
def test_blocks_own_the_parameters_their_forward_uses(name: str) -> None:
    """After caching layer k's input, only block-2 (and tied) tensors can change the suffix loss."""
    torch.manual_seed(0)
    model = MODEL_FACTORIES[name]().eval()
    batch = random_batch(name)

    def loss_fn() -> torch.Tensor:
        return model(**batch).loss

    plan = build_plan(model, loss_fn, split=2, p2=1)
    assert plan.split_index == 2
    assert {p.index for p in plan.block1} | {p.index for p in plan.block2} == {p.index for p in plan.parameters}
    assert not {p.index for p in plan.block1} & {p.index for p in plan.block2}
    tied = {p.index for p in plan.tied}
    if name in ("llama", "gpt2", "roberta_mlm", "opt"):  # these configs tie the head to the embeddings
        assert len(tied) == 1
    _, layers = find_layer_stack(model)
    executor = SplitExecutor(layers, 2)
    with torch.inference_mode():
        hidden = executor.run_prefix(loss_fn)
        reference = executor.run_suffix(loss_fn, hidden)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in plan.block1 + plan.block2:
            if p.name.endswith(("key.bias", "k_proj.bias")):
                continue  # a key bias shifts every score of a query equally: softmax cancels it
            noise = torch.randn(p.tensor.shape, generator=gen)
            # Restore from a copy: adding then subtracting the noise leaves rounding residue, which a tied
            # head weight would carry into the next parameter's comparison.
            saved = p.tensor.clone()
            p.tensor.add_(noise)
            with torch.inference_mode():
                moved = executor.run_suffix(loss_fn, hidden)
            p.tensor.copy_(saved)
            changed = not torch.equal(moved, reference)
            assert changed == (p in plan.block2 or p.index in tied), p.name


def test_auto_split_balances_block_costs() -> None:
    model = MODEL_FACTORIES["llama"]().eval()
    batch = random_batch("llama")
    plan = build_plan(model, lambda: model(**batch).loss, split="none", p2=1)
    assert len(plan.layer_flops) == LAYERS and all(c > 0 for c in plan.layer_flops)
    for p2 in (2, 3, 8):
        k = choose_split("auto", plan, p2)
        assert k is not None and 1 <= k < LAYERS
        best = min(abs(plan.block_flops(j)[0] - p2 * plan.block_flops(j)[1]) for j in range(1, LAYERS))
        assert abs(plan.block_flops(k)[0] - p2 * plan.block_flops(k)[1]) == best
    assert choose_split("auto", plan, 1) is None
    assert choose_split(0.5, plan, 4) == LAYERS // 2
    with pytest.raises(ValueError, match="zo_split=9"):
        choose_split(9, plan, 4)


def test_explicit_layer_path_and_unsupported_model_error() -> None:
    model = MODEL_FACTORIES["llama"]()
    assert find_layer_stack(model, "model.layers")[0] == "model.layers"
    with pytest.raises(UnsupportedModelError, match=r"zo_layers_path='model\.nope'"):
        find_layer_stack(model, "model.nope")

    class NoStack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

    with pytest.raises(UnsupportedModelError, match=r"NoStack.*zo_layers_path"):
        find_layer_stack(NoStack())


def test_trainable_parameters_skip_frozen_and_deduplicate_tied() -> None:
    model = MODEL_FACTORIES["llama"]()
    params = trainable_parameters(model)
    assert [p.index for p in params] == list(range(len(params)))
    assert len({id(p.tensor) for p in params}) == len(params)
    decays = {p.name: p.decay for p in params}
    assert decays["model.layers.0.self_attn.q_proj.weight"] is True
    assert decays["model.layers.0.input_layernorm.weight"] is False
    assert decays["model.norm.weight"] is False


@pytest.mark.parametrize("p2", [1, 4])
def test_auto_split_puts_a_frozen_prefix_in_block1(p2: int) -> None:
    """LoRA on the top layers only: "auto" splits at the first adapted layer (the frozen prefix then runs once
    per step), whatever P2; with every layer adapted it keeps balancing the block costs."""
    from tests.tiny_models import llama

    batch = random_batch("llama")
    top = get_peft_model(llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], layers_to_transform=[2, 3]))
    plan = build_plan(top, lambda: top(**batch).loss, split="auto", p2=p2)
    assert plan.first_trainable_layer == 2 and plan.split_index == 2
    assert not plan.block1 and len(plan.block2) == 2 * 2 * 2  # (A, B) x (q, v) x 2 layers
    everywhere = _with_lora("llama", llama())
    plan = build_plan(everywhere, lambda: everywhere(**batch).loss, split="auto", p2=p2)
    assert plan.first_trainable_layer == 0
    assert plan.split_index == choose_split("auto", plan, p2)
    assert (plan.split_index is None) == (p2 == 1)


@pytest.mark.parametrize("name", ["falcon", "gpt_neox", "phi"])
def test_split_zo_step_gives_the_projected_gradients_of_whole_forwards(name: str) -> None:
    """Each scalar of a split step (block 1 cached, block 2 re-entered through skipped layers) equals the two-point
    difference of whole forwards at θ ± ε(u_i, v_ij), rebuilt here with the same directions."""
    torch.manual_seed(0)
    model = MODEL_FACTORIES[name]().eval()
    batch = random_batch(name)

    def loss_fn() -> torch.Tensor:
        return model(**batch).loss

    eps, step_seed = 1e-2, 5
    estimator = ZOEstimator(model, ZOSettings(eps=eps, p1=2, p2=2, split=2))
    estimate = estimator.estimate(loss_fn, step_seed)
    plan = estimator.plan
    assert plan is not None and plan.split_index == 2
    assert (estimate.work.forwards_block1, estimate.work.forwards_block2) == (4, 8)
    saved = {p.index: p.tensor.detach().clone() for p in plan.parameters}
    for i in range(2):
        for j in range(2):
            losses = []
            for side in (1, -1):
                estimator.applier.add_(plan.block1, [(direction_seed(step_seed, BLOCK1, i), side * eps)])
                estimator.applier.add_(plan.block2, [(direction_seed(step_seed, BLOCK2, i, j), side * eps)])
                with torch.inference_mode():
                    losses.append(float(loss_fn()))
                with torch.no_grad():
                    for p in plan.parameters:
                        p.tensor.copy_(saved[p.index])
            expected = (losses[0] - losses[1]) / (2 * eps)
            assert float(estimate.scalars[i, j]) == pytest.approx(expected, rel=1e-3, abs=1e-3)


class _DictLayer(GradientCheckpointingLayer):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": self.proj(hidden)}


class _DictStack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_DictLayer() for _ in range(3))

    def forward(self) -> torch.Tensor:
        hidden = torch.ones(2, 4)
        for layer in self.layers:
            hidden = layer(hidden)["hidden"]
        return hidden.square().mean()


def test_layers_returning_neither_tensor_nor_tuple_are_refused_only_when_splitting() -> None:
    model = _DictStack()
    assert build_plan(model, model, split="none", p2=4).split_index is None
    with pytest.raises(UnsupportedModelError, match=r"_DictStack.*neither as a tensor.*zo_split='none'"):
        build_plan(model, model, split=1, p2=4)
