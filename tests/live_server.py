"""A real ``restorecli serve`` process on a free loopback port, for the tests that speak HTTP to it.

``LiveServer(tmp_path, "--model", model, ...)`` starts it through tests/worker_harness.py (so its workers take
the harness's fault injection: HARNESS_SLOW, HARNESS_CRASH_ON), waits until ``/health`` answers, and stops it
(SIGTERM, then SIGKILL) on ``stop()`` or at the end of a ``with`` block. ``url`` is its base address.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from helpers.wait import wait_until

HARNESS = Path(__file__).resolve().parent / "worker_harness.py"


class LiveServer:
    def __init__(self, folder: Path, *args: str, env: dict[str, str | None] | None = None, queue: Path | None = None,
                 workers: int = 1, cwd: Path | None = None):
        self.folder = folder
        self.queue = queue or folder / "queue"
        self.args = ["--queue", str(self.queue), "--workers", str(workers), *args]
        # a variable given as None is left out of the server's environment (say, an API_KEY of the test run's)
        self.env = {k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}.items() if v is not None}
        self.cwd = cwd or folder
        self.log = folder / f"serve-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, port: int = 0, timeout: float = 60.0) -> "LiveServer":
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(HARNESS), "serve", "--port", str(port), *self.args],
                                            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        wait_until(self._answers, "restorecli serve to answer", timeout, every=0.1, detail=self.output)
        return self

    def _answers(self) -> bool:
        """Whether the server answers ``/health`` yet (503 too: up, but degraded); an AssertionError with its log
        where it exited instead."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"restorecli serve exited with {self.process.returncode}:\n{self.output()}")
        match = re.search(r"listening on (http://\S+?) ", self.output())
        if not match:
            return False
        self.url = match.group(1)
        try:
            return httpx.get(self.url + "/health", timeout=5).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def wait_for(self, job_id: str, headers: dict | None = None, timeout: float = 120.0,
                 statuses: tuple[str, ...] = ("completed", "failed")) -> dict:
        """Poll /status until the job reaches one of ``statuses``; returns its document."""
        seen: list[dict] = [{}]

        def reached() -> dict | None:
            seen[0] = httpx.get(f"{self.url}/status/{job_id}", headers=headers, timeout=10).json()
            return seen[0] if seen[0].get("status") in statuses else None

        return wait_until(reached, f"job {job_id} to be {' or '.join(statuses)}", timeout, every=0.2,
                          detail=lambda: f"still {seen[0].get('status')}; the server's log:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the server process alone (its workers notice and stop by themselves)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def __enter__(self) -> "LiveServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
