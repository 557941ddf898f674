"""The package's shape, checked from source with ``ast`` (nothing is imported): layers point one way.

* no import cycle between modules of ``hf_fedzo`` (function-level imports count: a lazy import is still a
  dependency; ``if TYPE_CHECKING:`` blocks of package ``__init__`` facades do not, they only re-export);
* no module under ``hf_fedzo/`` over 400 lines;
* no private name (``_x``) imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hf_fedzo"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The module a dotted name refers to (a submodule, else its package), or None outside hf_fedzo."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """``(target module, imported names, line)`` for every hf_fedzo import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    facade = path.name == "__init__.py"
    skipped: set[int] = set()
    if facade:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and is_type_checking(node):
                skipped |= {id(n) for n in ast.walk(node)}
    package = module if facade else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target is not None:
                    found.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("hf_fedzo"):
                continue
            for alias in node.names:
                target = resolve(f"{base}.{alias.name}")
                target = target if target == f"{base}.{alias.name}" else resolve(base)
                if target is not None:
                    found.append((target, [alias.name], node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports_of(m) if t != m} for m in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_checker_sees_a_cycle_and_a_private_import():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert resolve("hf_fedzo.engine.ZOSettings") == "hf_fedzo.engine"
    assert resolve("numpy") is None


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles in hf_fedzo: {cycles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(PACKAGE.parent)} has {lines} lines (max {MAX_LINES})"


def test_no_private_names_across_modules():
    offenders = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name} from {target}"
                 for m in MODULES for target, names, line in imports_of(m)
                 for name in names if target != m and name.startswith("_") and not name.startswith("__")]
    assert not offenders, "\n".join(offenders)


# What each layer may import (besides itself); docs/architecture.md explains the layers.
ALLOWED = {
    "hf_fedzo.registry": set(),
    "hf_fedzo.reporting": set(),
    "hf_fedzo.redaction": set(),
    "hf_fedzo.progress": set(),
    "hf_fedzo.known_warnings": set(),
    "hf_fedzo.engine": {"hf_fedzo.registry"},
    "hf_fedzo.fingerprints": {"hf_fedzo.engine"},
    # data.errors is a leaf (the DataError type), so client data can name a bad row the way loaders do.
    "hf_fedzo.federation": {"hf_fedzo.engine", "hf_fedzo.registry", "hf_fedzo.reporting", "hf_fedzo.progress",
                            "hf_fedzo.data.errors"},
    "hf_fedzo.integrations": {"hf_fedzo.engine", "hf_fedzo.federation", "hf_fedzo.progress"},
    "hf_fedzo.trajectory": {"hf_fedzo", "hf_fedzo.engine", "hf_fedzo.reporting", "hf_fedzo.fingerprints",
                            "hf_fedzo.redaction"},
    "hf_fedzo.config": {"hf_fedzo.engine"},
    "hf_fedzo.trainer": {"hf_fedzo.config", "hf_fedzo.engine", "hf_fedzo.trajectory", "hf_fedzo.model_card",
                         "hf_fedzo.redaction"},
}


def layer_of(module: str) -> str | None:
    return next((layer for layer in sorted(ALLOWED, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), None)


def test_layers_point_one_way():
    wrong = []
    for module, targets in import_graph().items():
        layer = layer_of(module)
        if layer is None:
            continue
        for target in targets:
            other = layer_of(target) or target
            if other != layer and other not in ALLOWED[layer] and target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)
