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


def client_command(*args) -> list[str]:
    """The command line of ``restorecli restore ARGS`` as a client process."""
    return [sys.executable, "-c", CLIENT, "restore", *map(str, args)]


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
