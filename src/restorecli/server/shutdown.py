"""How ``restorecli serve`` stops on SIGTERM or SIGINT (a container's ``stop``, Ctrl-C): uploads are refused with
503 while the worker processes finish the jobs in hand, for up to the grace period; what is still running then is
stopped and queued again, resumable; the janitor stops; then the HTTP server closes and the process exits 0. A
second signal cuts the grace period short. Nothing is lost on the way, and no process is left behind."""

from __future__ import annotations

import threading
from typing import Callable

import uvicorn

from .supervise import Janitor, WorkerPool

Log = Callable[[str], None]


class GracefulServer(uvicorn.Server):
    """uvicorn's server, whose signal handler starts ``shutdown`` instead of closing at once and raising the
    signal again after (uvicorn's own way, which ends the process before the caller's clean-up runs)."""

    def __init__(self, config: uvicorn.Config, stopping: "Shutdown"):
        super().__init__(config)
        self.stopping = stopping  # (``shutdown`` is uvicorn's own method)
        stopping.server = self

    def handle_exit(self, sig: int, frame) -> None:  # in the main thread, as a signal handler: start, return
        self.stopping.begin(sig)


class Shutdown:
    """The server's way out: ``begin`` on a signal, ``fail`` on a fault it cannot serve through (then the process
    exits with ``exit_code`` 3, for its supervisor to start it anew)."""

    QUEUE_CHECK = 2.0  # seconds between looks at the queue's database, requests or none

    def __init__(self, draining: threading.Event, pool: WorkerPool | None, janitor: Janitor, grace: float, log: Log):
        self.draining, self.pool, self.janitor, self.grace, self.log = draining, pool, janitor, grace, log
        self.hurry = threading.Event()
        self.server: uvicorn.Server | None = None
        self.exit_code = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def begin(self, sig: int, why: str | None = None) -> None:
        with self._lock:
            if self._thread is not None:  # a second signal: the workers' grace is over
                self.hurry.set()
                return
            self._thread = threading.Thread(target=self._run, args=(sig, why), name="shutdown", daemon=True)
            self._thread.start()

    def fail(self, why: str) -> None:
        import signal

        self.exit_code = 3
        self.begin(signal.SIGTERM, why)

    def watch(self, check: Callable[[], None]) -> None:
        """Call ``check`` (which raises, having called ``fail``, on a fault) every few seconds until the end."""

        def run() -> None:
            while not self.draining.wait(self.QUEUE_CHECK):
                try:
                    check()
                except Exception:
                    return

        threading.Thread(target=run, name="queue-watch", daemon=True).start()

    def _run(self, sig: int, why: str | None) -> None:
        import signal

        self.draining.set()  # uploads answer 503 from now on; status and downloads still work
        busy = self.pool.running() if self.pool is not None else []
        self.log(f"restorecli serve: {why or signal.Signals(sig).name}: stopping; "
                 + (f"{len(busy)} worker(s) finish the job in hand (up to {self.grace:g}s; signal again to stop "
                    "them sooner)" if busy else "no worker is busy"))
        try:
            if self.pool is not None:
                self.pool.drain(self.grace, self.hurry)
            self.janitor.stop()
        finally:
            if self.server is not None:
                self.server.should_exit = True
