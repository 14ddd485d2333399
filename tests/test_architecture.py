"""The layer picture of README.md#architecture, checked on the source: which package may import
which (ours and the heavy third-party frameworks), no import cycle, no oversized module. Imports
inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

# layer -> the project layers it may import (besides itself); a module's layer is the longest prefix listed
ALLOWED = {
    "adapt": set(),  # adapt/__init__.py: the version
    "adapt.errors": set(),
    "adapt.defaults": set(),
    "adapt.contract": {"adapt", "adapt.errors"},
    "adapt.data": {"adapt", "adapt.errors", "adapt.defaults", "adapt.contract"},
    "adapt.core": {"adapt", "adapt.errors", "adapt.defaults", "adapt.contract", "adapt.data"},
    "adapt.methods": {"adapt", "adapt.errors", "adapt.defaults", "adapt.contract", "adapt.data", "adapt.core"},
    "adapt.tracking": {"adapt", "adapt.errors", "adapt.defaults", "adapt.contract"},
    "adapt.training": {"adapt", "adapt.errors", "adapt.contract", "adapt.data", "adapt.core", "adapt.methods", "adapt.tracking"},
    "adapt.pipelines": {"adapt", "adapt.errors", "adapt.defaults", "adapt.contract", "adapt.data", "adapt.core", "adapt.methods",
                        "adapt.training", "adapt.tracking", "services"},
    "adapt.cli": {"adapt", "adapt.errors", "adapt.defaults", "adapt.contract", "adapt.data", "adapt.core", "adapt.methods",
                  "adapt.training", "adapt.tracking", "adapt.pipelines", "services"},
    "adapt.__main__": {"adapt.cli"},
    "services": {"adapt", "adapt.errors", "adapt.contract"},  # the serving path: never torch, open_clip or the core
}

# third-party framework -> the only modules (or layers) that may import it
THIRD_PARTY = {
    "lightning": {"adapt.training"},  # "everything Lightning"
    "pytorch_lightning": {"adapt.training"},
    "mlflow": {"adapt.tracking", "adapt.contract.model_uri"},  # + the contract's registry download / alias lookup
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in [*ROOT.glob("adapt/**/*.py"), *ROOT.glob("services/**/*.py")]:
        if "proto" in path.relative_to(ROOT).parts:  # generated gRPC stubs
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _import_targets(module: str):
    """Every name ``module`` imports (absolute, relative ones resolved), anywhere in the file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        yield from targets


def _imports(module: str) -> set[str]:
    found = set()
    for target in _import_targets(module):
        resolved = _resolve(target)
        if resolved and resolved != module and not module.startswith(resolved + "."):  # not its own package
            found.add(resolved)
    return found


def _third_party(module: str) -> set[str]:
    return {t.split(".")[0] for t in _import_targets(module)} & set(THIRD_PARTY)


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


@pytest.mark.unit
def test_every_import_follows_the_layers():
    wrong = sorted(
        f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
        if _layer(t) != _layer(m) and _layer(t) not in ALLOWED[_layer(m)]
    )
    assert not wrong, "imports against the layer picture:\n" + "\n".join(wrong)


@pytest.mark.unit
def test_lightning_only_in_training_and_mlflow_only_in_tracking():
    def allowed(module: str, owners: set[str]) -> bool:
        return any(module == o or module.startswith(o + ".") for o in owners)

    wrong = sorted(
        f"{m} -> {lib}" for m in MODULES for lib in _third_party(m) if not allowed(m, THIRD_PARTY[lib])
    )
    assert not wrong, "third-party frameworks imported outside their layer:\n" + "\n".join(wrong)


@pytest.mark.unit
def test_the_checker_sees_third_party_imports_inside_functions():
    assert "lightning" in _third_party("adapt.training.lit")  # imported inside fit_locked_image()
    assert "mlflow" in _third_party("adapt.contract.model_uri")  # imported inside registry_client()
    assert not _third_party("services.sources")


@pytest.mark.unit
def test_there_is_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.unit
def test_the_checker_sees_imports_inside_functions():
    assert "adapt.pipelines.default_backbone" in GRAPH["adapt.pipelines.retrain"]
    assert "adapt.training.supervised" in GRAPH["adapt.pipelines.retrain"]  # imported in retrain_context()
    assert _layer("adapt.core.backbone") == "adapt.core" and _layer("adapt.errors") == "adapt.errors"


@pytest.mark.unit
def test_no_module_is_oversized():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


@pytest.mark.unit
def test_the_metadata_key_of_exported_models_is_stable():
    """Models exported before the package moves carry this key; renaming modules must not rename it."""
    from adapt.contract.modelmeta import METADATA_KEY

    assert METADATA_KEY == "adapt.classifier"
