"""The documentation does what it says: each shell block marked runnable (an HTML comment, ``<!-- runnable -->``, on
the line before its fence) is run as written with bash, from a folder laid out like the repository's root, and
against a live ``restorecli serve`` for the blocks that speak to one; the command reference is generated for every
command; the benchmarks' blocks of figures have their markers in docs/performance.md. ``nox -s docs`` builds the
site itself (mkdocs build --strict)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, TEST_INPUTS
from live_server import LiveServer

DOCS = ROOT / "docs"
RUNNABLE = "<!-- runnable -->"
LOCAL_SERVER = "http://127.0.0.1:8001"  # the address `restorecli serve` listens on by default, as the docs write it


def runnable_blocks() -> list[tuple[str, str]]:
    """(where, script) for every block marked runnable in README.md and docs/."""
    blocks = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != RUNNABLE:
                continue
            fence = lines[number + 1]
            assert fence.startswith("```sh"), f"{path}:{number + 2}: a runnable block must be a ```sh block"
            end = lines.index("```", number + 2)
            blocks.append((f"{path.relative_to(ROOT)}:{number + 2}", "\n".join(lines[number + 2:end])))
    return blocks


BLOCKS = runnable_blocks()


def test_the_docs_mark_blocks_runnable():
    """The blocks below are the proof that the docs' examples work; losing the markers would lose the proof."""
    where = {place.split(":")[0] for place, _ in BLOCKS}
    assert {"docs/server.md", "docs/jobs.md", "docs/restore.md"} <= where


def _run(script: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"  # this venv's restorecli
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def repository_root(tmp_path):
    """A working folder laid out as the repository's root is, for what the blocks read: test_inputs/."""
    work = tmp_path / "repo"
    shutil.copytree(TEST_INPUTS, work / "test_inputs", ignore=shutil.ignore_patterns("*.py", "*.md"))
    return work


def json_objects(text: str) -> list[dict]:
    """Every JSON object in ``text``, in order: curl prints each answer with no newline after it."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            end = at + 1
        else:
            found.append(value)
        at = text.find("{", end)
    return found


SHELL = [block for block in BLOCKS if LOCAL_SERVER not in block[1]]
CURL = [block for block in BLOCKS if LOCAL_SERVER in block[1]]


@pytest.mark.parametrize("where, script", SHELL, ids=[where for where, _ in SHELL])
def test_a_runnable_shell_block_works_as_written(where, script, repository_root, embedded_dir):
    done = _run(script, repository_root)
    assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"
    assert "error:" not in done.stderr, f"{where}\n{done.stderr}"
    if "restorecli worker" in script:  # the job is done and its outputs are where the docs say
        outputs = list(repository_root.glob("queue/jobs/*/outputs/*"))
        submitted = len(re.findall(r"test_inputs/\S+", script.split("restorecli worker")[0]))
        assert len(outputs) == submitted, outputs
        assert "completed" in done.stdout + done.stderr
    if "restorecli restore" in script:
        written = sorted(path.name for path in (repository_root / "results").iterdir())
        inputs = sorted(path.name for path in (repository_root / "test_inputs").iterdir())
        assert written == inputs
        items = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert {item.get("status") for item in items if item["type"] == "item"} == {"ok"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed: the docs' API examples use it")
@pytest.mark.parametrize("where, script", CURL, ids=[where for where, _ in CURL])
def test_a_runnable_curl_block_works_against_a_live_server(where, script, repository_root, make_model, tmp_path):
    """The block as written but for the port: the test's server listens on a free one, not 8001."""
    key = "docs-test-key"
    with LiveServer(tmp_path, "--model", str(make_model(2)), "--device", "cpu",
                    env={"API_KEY": key}).start() as server:
        done = _run(script.replace(LOCAL_SERVER, server.url), repository_root, env={"API_KEY": key})
        log = server.output()
    assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}\n{log}"
    answers = json_objects(done.stdout)
    assert answers[0]["status"] == "ok" and "queue" in answers[0]  # /health
    assert "event: completed" in done.stdout  # /events followed the job to its end
    documents = [answer for answer in answers if "results" in answer]  # /events' data, then /status
    assert documents[-1]["status"] == "completed"
    assert [result["status"] for result in documents[-1]["results"]] == ["ok", "ok"]
    assert answers[-1]["deleted"] is True  # DELETE removed the finished job
    with zipfile.ZipFile(repository_root / "results.zip") as archive:
        assert len(archive.namelist()) == 2
        assert all(archive.read(name)[:8] == b"\x89PNG\r\n\x1a\n" for name in archive.namelist())


def test_the_command_reference_has_every_command_with_its_help():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import cli_reference
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    page = cli_reference.reference_page()
    names = cli_reference.command_names()
    assert "restore" in names and "serve" in names
    for name in names:
        assert f"## restorecli {name}\n" in page
        assert f"Usage: restorecli {name} [OPTIONS]" in page
    assert "--face-enhance" in page and "-h, --help" in page


def test_each_benchmark_block_has_its_place_in_the_performance_page():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import startup

        modules = [startup, *(__import__(name) for name in ("bench", "gpu", "serve", "ray_pool"))]
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    page = (DOCS / "performance.md").read_text()
    assert startup.PERFORMANCE == DOCS / "performance.md"
    for module in modules:
        assert page.count(module.START) == 1 and page.count(module.END) == 1, module.__name__
        assert page.index(module.START) < page.index(module.END)
