"""The benchmarks' layout (issue 29): each is a script that answers --help, none imports another round a cycle, and
one function writes their figures into docs/performance.md. Nothing here measures anything."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
MODULES = {path.stem: path for path in sorted(BENCHMARKS.glob("*.py"))}
SCRIPTS = sorted(name for name in MODULES if name != "common")


def _imports(path: Path) -> set[str]:
    """The benchmark modules ``path`` imports anywhere in its code, function-local imports too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found & set(MODULES)


def test_no_benchmark_imports_another_round_a_cycle():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    cycles = []

    def walk(start: str, module: str, path: list[str]) -> None:
        for imported in graph[module]:
            if imported == start:
                cycles.append(" -> ".join([*path, start]))
            elif imported not in path:
                walk(start, imported, [*path, imported])

    for name in graph:
        walk(name, name, [name])
    assert cycles == []
    assert graph["common"] == set()  # the shared helpers stand below every benchmark


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_is_a_script_with_help(script):
    done = subprocess.run([sys.executable, str(MODULES[script]), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ") and f"{script}.py" in done.stdout.splitlines()[0]


def test_only_common_writes_the_performance_page():
    writers = [name for name, path in MODULES.items() if "PERFORMANCE.write_text" in path.read_text()
               or "performance.md\").write_text" in path.read_text()]
    assert writers == ["common"]


@pytest.fixture
def common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\n<!-- b:start -->\nold b\n"
                    "<!-- b:end -->\n")
    monkeypatch.setattr(common, "PERFORMANCE", page)
    return common


def test_a_block_replaces_only_what_its_markers_hold(common, capsys):
    common.publish("new a\n| x |", *common.markers("a"), docs=True)
    assert common.PERFORMANCE.read_text() == ("# Performance\n\n<!-- a:start -->\nnew a\n| x |\n<!-- a:end -->\n\n"
                                              "<!-- b:start -->\nold b\n<!-- b:end -->\n")
    assert capsys.readouterr().out == "new a\n| x |\n"
    common.publish("printed only", *common.markers("b"), docs=False)
    assert "old b" in common.PERFORMANCE.read_text() and "printed only" not in common.PERFORMANCE.read_text()


def test_a_block_without_its_markers_is_refused_naming_them(common):
    before = common.PERFORMANCE.read_text()
    with pytest.raises(SystemExit, match="has no <!-- c:start --> ... <!-- c:end --> section"):
        common.write_block("text", *common.markers("c"))
    assert common.PERFORMANCE.read_text() == before
