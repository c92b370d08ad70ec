"""The API contract, checked by a client nobody here wrote: schemathesis generates requests from the server's own
``/openapi.json`` (the coverage, fuzzing and stateful phases, following the document's links from a new job's id)
and runs every check it has against a real ``restorecli serve`` on 127.0.0.1 with an API key, a temporary queue
and one worker (so a job's event stream ends, and its results can be downloaded). Any failure fails the test.
Deselected by default (it takes minutes): ``nox -s api_contract`` installs schemathesis and runs it, and .ci/run
runs that session."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from live_server import LiveServer

KEY = "contract-key"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 28  # a fixed seed, so a failure found here is found again by the next run

pytestmark = pytest.mark.api_contract


def test_schemathesis_finds_no_failure_in_the_servers_own_document(tmp_path, make_model):
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if schemathesis is None:
        pytest.fail("schemathesis is not installed; nox -s api_contract installs it")
    with LiveServer(tmp_path, "--model", str(make_model(2)), env={"API_KEY": KEY}, workers=1) as live:
        document = httpx.get(f"{live.url}/openapi.json", timeout=30).json()
        done = subprocess.run([schemathesis, "--config-file", str(CONFIG), "run", f"{live.url}/openapi.json",
                               "--header", f"X-API-Key: {KEY}", "--checks", "all", "--seed", str(SEED), "--no-color",
                               "--generation-database", "none", "--request-timeout", "30"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        server_output = live.output()
    report = done.stdout[-30000:] + done.stderr[-5000:]
    assert done.returncode == 0, f"schemathesis found failures:\n{report}\nserver:\n{server_output[-5000:]}"
    operations = sum(len(item) for item in document["paths"].values())
    links = sum(len(response.get("links", {})) for item in document["paths"].values() for operation in item.values()
                for response in operation["responses"].values())
    assert re.search(rf"Tested: {operations}\b", done.stdout), report  # every operation was reached
    covered = re.search(r"API Links: +(\d+) covered", done.stdout)  # the document's links (and ones it infers)
    assert covered and int(covered.group(1)) >= links, report
    assert "Internal Server Error" not in server_output, server_output[-5000:]
