"""The package's structure: imports point one way (README, Layout) and no module imports itself round a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "restorecli").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The restorecli modules ``module`` imports anywhere in its code (function-local imports too; imports only
    for type checkers are left out), each named as precisely as the import names it."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in MODULES and name != module and not module.startswith(name + ".")}


GRAPH = {module: _imports(module) for module in MODULES}


def test_no_module_imports_itself_round_a_cycle():
    cycles = []

    def walk(start: str, module: str, path: list[str]) -> None:
        for imported in GRAPH[module]:
            if imported == start:
                cycles.append(" -> ".join([*path, start]))
            elif imported not in path and imported > start:  # each cycle once, from its smallest module
                walk(start, imported, [*path, imported])

    for module in sorted(GRAPH):
        walk(module, module, [module])
    assert cycles == []


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    """cli -> pipeline/jobs/evaluate -> engine/models/images -> options/files/errors; nothing imports cli."""
    layer = _layer(module)
    for imported in GRAPH[module]:
        to = _layer(imported)
        assert to != "cli" or layer in ("cli", "__main__"), f"{module} imports {imported}"
        assert to != "server" or layer in ("cli", "server"), f"{module} imports {imported}"
        if layer in ("errors", "files"):
            assert to == "errors", f"the file layer {module} imports {imported}"
        if layer in ("engine", "models", "images"):
            assert to not in ("pipeline", "jobs", "evaluate", "server", "distributed"), f"{module} imports {imported}"
        if layer == "engine":  # it receives loaded networks; models/ reads the files
            assert to != "models", f"{module} imports {imported}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "server"))
def test_the_server_never_imports_the_model_code(module):
    """The API process never runs a model: nothing of the server imports the pipeline or the engine."""
    assert not any(_layer(imported) in ("pipeline", "engine", "evaluate") for imported in GRAPH[module]), GRAPH[module]


@pytest.mark.parametrize("module", ["restorecli.jobs.store", "restorecli.models.integrity", "restorecli.models.loading",
                                    "restorecli.models.download", "restorecli.engine.device"])
def test_modules_that_only_write_files_do_not_import_the_image_package(module):
    """Atomic writes live in ``files``: these imported the image package (OpenCV, Pillow) only to write a file."""
    assert not any(_layer(imported) == "images" for imported in GRAPH[module]), GRAPH[module]


def test_the_file_layer_imports_nothing_of_restorecli_but_errors():
    assert GRAPH["restorecli.files"] <= {"restorecli.errors"}
