"""The layers import only what they may, read off the modules' own import statements (every ``import``
and ``from ... import`` in every module of a package, lazy ones inside functions included) and checked
once more in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "hyperlab"

FORBIDDEN = {  # layer -> what no module of it may import
    "hyperlab.models": ("ray", "optuna", "mlflow", "hyperlab.training", "hyperlab.search", "hyperlab.tracking",
                        "hyperlab.analysis", "hyperlab.cli"),
    "hyperlab.data": ("ray", "optuna", "mlflow", "hyperlab.models", "hyperlab.training",
                      "hyperlab.search", "hyperlab.tracking", "hyperlab.analysis", "hyperlab.cli"),
    "hyperlab.training": ("ray", "optuna", "mlflow", "hyperlab.tracking", "hyperlab.search", "hyperlab.analysis",
                          "hyperlab.cli"),
    "hyperlab.analysis": ("torch", "ray", "optuna", "mlflow", "hyperlab.models", "hyperlab.data",
                          "hyperlab.training", "hyperlab.search", "hyperlab.tracking", "hyperlab.cli"),
    "hyperlab.tracking": ("torch", "ray", "optuna", "hyperlab.models", "hyperlab.training", "hyperlab.search",
                          "hyperlab.cli"),
    "hyperlab.search": ("mlflow", "hyperlab.cli"),
}
TOP_LEVEL = ("hyperlab.metrics", "hyperlab.errors", "hyperlab.config_io")  # imported by any layer, import no layer


def imports_of(path) -> set[str]:
    """Every module name ``path`` imports, absolute (``from . import x`` resolved against its package)."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    folder = PACKAGE / layer.removeprefix("hyperlab.")
    return [f"{path.relative_to(REPO)} imports {name}" for path in sorted(folder.rglob("*.py"))
            for name in sorted(imports_of(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(layer):
    assert _violations(layer, FORBIDDEN[layer]) == []


def test_the_shared_modules_import_no_layer():
    layers = tuple(FORBIDDEN) + ("hyperlab.cli",)
    for module in TOP_LEVEL:
        path = PACKAGE / f"{module.removeprefix('hyperlab.')}.py"
        assert [n for n in imports_of(path) if n.startswith(layers)] == []


def test_the_rule_checker_sees_lazy_imports():
    """The checker itself: an import inside a function body counts like one at the top."""
    found = imports_of(PACKAGE / "training" / "loop.py")
    assert "hyperlab.models.size_model" in found  # imported inside preflight(), not at the top
    assert "hyperlab.training.checkpoint" in found


@pytest.mark.parametrize("module, absent", [
    ("hyperlab.training", ("mlflow", "ray", "hyperlab.tracking")),
    ("hyperlab.training.loop", ("mlflow", "ray", "hyperlab.tracking")),
    ("hyperlab.analysis", ("torch", "ray", "mlflow", "hyperlab.tracking")),
    ("hyperlab.tracking", ("torch", "ray")),
])
def test_importing_a_layer_loads_nothing_it_may_not(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
