"""The project's import graph: layers point one way and no module imports itself back.

trainer/ (model code) <- components/ (TFX components) <- pipeline/ (assembly, runners,
CLI, reports); benchmarks/ import the product, never tests/, and edit no sys.path;
kubeflow/ holds the container image and manifests, no Python. Every import counts,
those inside functions too: a lazy import hides a circle, it does not remove it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRODUCT = ("trainer", "components", "pipeline")
# Which top-level packages each may import from the project.
MAY_IMPORT = {
    "trainer": {"trainer"},
    "components": {"trainer", "components"},
    "pipeline": {"trainer", "components", "pipeline"},
    "benchmarks": {"trainer", "components", "pipeline", "benchmarks"},
}


def _modules(package: str) -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imported(path: pathlib.Path) -> set[str]:
    """Every dotted name imported anywhere in the file (`from a import b` gives a, a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = {}
    for package in (*PRODUCT, "benchmarks", "tests"):
        modules.update(_modules(package))
    known = set(modules) | {"synthetic_images"}  # benchmarks' sibling module
    return {
        name: {imported for imported in _imported(path) if imported in known} - {name}
        for name, path in modules.items()
    }


def _wrong_way(package: str) -> list[str]:
    return sorted(
        f"{module} imports {imported}"
        for module, imports in _graph().items()
        if module.split(".")[0] == package
        for imported in imports
        if imported != "synthetic_images" and imported.split(".")[0] not in MAY_IMPORT[package]
    )


def _circles() -> list[str]:
    graph = {m: {i for i in imports if not i.startswith("tests")} for m, imports in _graph().items()
             if not m.startswith("tests")}
    # A package's __init__ is imported along with each of its modules: not an edge back.
    graph = {m: {i for i in imports if not m.startswith(f"{i}.")} for m, imports in graph.items()}
    circles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                circles.append(" -> ".join([*stack[stack.index(imported):], imported]))
            elif imported not in state:
                visit(imported, [*stack, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return circles


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_layers_point_one_way(package):
    assert _wrong_way(package) == []


def test_no_import_circle():
    assert _circles() == []


def test_the_checks_above_can_fail(tmp_path):
    """The import reader sees lazy imports and `from package import module`."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pipeline import cli\n    import trainer.export\n")
    assert {"pipeline", "pipeline.cli", "trainer.export"} <= _imported(source)


def test_benchmarks_edit_no_sys_path():
    edits = [
        f"{path.name}:{node.lineno}"
        for path in _modules("benchmarks").values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "path"
        and isinstance(node.value, ast.Name) and node.value.id == "sys"
    ]
    assert edits == []


def test_kubeflow_folder_holds_no_python():
    """A top-level `kubeflow` package would shadow the Kubeflow SDK's namespace."""
    assert sorted(p.name for p in (ROOT / "kubeflow").rglob("*.py")) == []
    assert not (ROOT / "kubeflow" / "__init__.py").exists()


def _print_graph() -> None:
    """`python tests/test_layers.py`: each product module's project imports, then the
    layer edges that point the wrong way and the circles (none, when this suite passes)."""
    graph = _graph()
    for module, imports in sorted(graph.items()):
        if not module.startswith("tests") and imports:
            print(f"{module} -> {', '.join(sorted(imports))}")
    for package in sorted(MAY_IMPORT):
        for line in _wrong_way(package):
            print(f"wrong way: {line}")
    for circle in _circles():
        print(f"circle: {circle}")


if __name__ == "__main__":
    _print_graph()
