"""``restorecli restore ... --server URL`` run as a client machine runs it: a process of its own, with the serve
extra's packages (FastAPI and the rest) absent and torch never imported; used by tests/test_client.py and the
hostile-server tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# httpx is the client's own (a core dependency); the server's packages must not be needed
CLIENT = """
import sys
for name in ("fastapi", "starlette", "uvicorn", "python_multipart", "multipart"):
    sys.modules[name] = None  # importing any of them fails
from restorecli.cli.app import main
try:
    main()
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
"""

FOLLOWING = "harness: the client asks the server for its job's status"
# Put before CLIENT, it says FOLLOWING on stderr once, when the client first asks for a job's status: it holds the
# job's id from then on (a test that interrupts it waits for this line instead of guessing how long that takes).
SAY_WHEN_FOLLOWING = f"""
import signal
import sys
import httpx
# Ctrl-C as at a terminal: a test run started in the background (``cmd &`` in a script) ignores SIGINT, and a
# child inherits that, so the client would never hear the test's SIGINT
signal.signal(signal.SIGINT, signal.default_int_handler)
_send = httpx.Client.send
def _saying(self, request, **kwargs):
    if request.url.path.startswith("/status/") and not getattr(_saying, "said", False):
        _saying.said = True
        print({FOLLOWING!r}, file=sys.stderr, flush=True)
    return _send(self, request, **kwargs)
httpx.Client.send = _saying
"""


def client_command(*args, say_when_following: bool = False) -> list[str]:
    """The command line of ``restorecli restore ARGS`` as a client process; ``say_when_following``: it prints
    FOLLOWING on stderr once it holds a job's id."""
    script = (SAY_WHEN_FOLLOWING if say_when_following else "") + CLIENT
    return [sys.executable, "-c", script, "restore", *map(str, args)]


def remote(*args, key_env: dict[str, str] | None = None, stdin: bytes | None = None, cwd: Path | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """``restorecli restore ARGS`` in a process of its own, as a client machine runs it: no API key in its
    environment but ``key_env``'s."""
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "MYKEY")}
    result = subprocess.run(client_command(*args), env={**env, **(key_env or {})}, input=stdin, capture_output=True,
                            timeout=timeout, cwd=cwd)
    assert result.stderr.decode().rstrip().endswith("torch not imported"), result.stderr.decode()
    return result


def lines(result) -> list[dict]:
    out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]
