"""One registry idiom: every named plug-in refuses a taken name unless overwrite=True."""

from __future__ import annotations

import pytest

from hf_fedzo.data import loaders
from hf_fedzo.engine import perturbation
from hf_fedzo.federation import aggregation, config, partition
from hf_fedzo.registry import Registry
from hf_fedzo.tasks import templates


def test_register_refuses_a_taken_name_unless_overwrite() -> None:
    registry: Registry[int] = Registry("widget", {"a": 1})
    with pytest.raises(ValueError, match="widget 'a' is already registered; pass overwrite=True"):
        registry.register("a", 2)
    assert registry["a"] == 1
    registry.register("a", 2, overwrite=True)
    assert registry["a"] == 2 and list(registry) == ["a"] and len(registry) == 1
    with pytest.raises(KeyError, match=r"widget: unknown name 'b'; choose from \['a'\]"):
        registry["b"]
    with pytest.raises(ValueError, match=r"widget must be one of \['a'\] \(got 'b'\)"):
        registry.check("b")
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("", 3)


@pytest.mark.parametrize(("module", "attribute"), [
    (loaders, "DATASET_SOURCES"), (partition, "PARTITIONERS"), (perturbation, "PERTURBATIONS"),
    (templates, "PRESETS"), (aggregation, "AGGREGATORS"), (config, "METHODS"),
])
def test_every_plugin_kind_uses_the_registry(module: object, attribute: str) -> None:
    registry = getattr(module, attribute)
    assert isinstance(registry, Registry) and len(registry) >= 2
    name = next(iter(registry))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(name, registry[name])


def test_the_register_helpers_pass_overwrite_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition, "PARTITIONERS", Registry("partition", partition.PARTITIONERS))
    monkeypatch.setattr(perturbation, "PERTURBATIONS", Registry("zo_perturbation", perturbation.PERTURBATIONS))
    monkeypatch.setattr(aggregation, "AGGREGATORS", Registry("aggregation", aggregation.AGGREGATORS))
    with pytest.raises(ValueError, match="already registered"):
        partition.register_partitioner("iid")(lambda *a, **k: [])
    partition.register_partitioner("iid", overwrite=True)(lambda *a, **k: [])
    with pytest.raises(ValueError, match="already registered"):
        perturbation.register_perturbation("gaussian", lambda out, generator: None)
    perturbation.register_perturbation("gaussian", lambda out, generator: None, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        aggregation.register_aggregator("median", lambda s, w, t: s[0])
    aggregation.register_aggregator("median", lambda s, w, t: s[0], overwrite=True)
