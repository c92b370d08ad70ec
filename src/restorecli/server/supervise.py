"""The server's work outside the request path: worker processes running ``restorecli worker`` on the queue
(restarted when one dies), and the janitor pruning finished jobs on a timer. Both only act on the job folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..jobs.prune import prune_queue

Log = Callable[[str], None]
_RESTART_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0)  # after a worker that died soon after it started, wait longer each time
_STABLE_SECONDS = 60.0  # a worker that ran this long before it died is restarted at once
# Workers run at a lower CPU priority than the API: model work is batch work, a request is someone waiting, and
# on a machine where the model's threads fill every core the API would otherwise answer late. A worker that has
# the CPU to itself runs as fast as at normal priority.
WORKER_NICENESS = 10


def self_command() -> list[str]:
    """How to start restorecli the way this process was started: its console script, ``python -m restorecli``,
    or a script that wraps the command (the tests' harness)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if (spec is not None and spec.name.startswith("restorecli")) or not path:
        return [sys.executable, "-m", "restorecli"]
    return [sys.executable, path]


class _Slot:
    def __init__(self, number: int):
        self.number = number
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.failures = 0  # deaths in a row, each soon after its start
        self.restart_at = 0.0


def _lower_priority() -> None:
    """In the worker's process, before it runs: its threads (PyTorch's) inherit the priority."""
    os.nice(WORKER_NICENESS)


class WorkerPool:
    """``count`` worker processes on ``queue``. Each runs the same worker loop as ``restorecli worker``, and stops
    by itself when this process is gone (``--parent``), so a server killed outright leaves no worker behind. A
    worker that dies has its job queued again at once (its lease need not run out first). The workers run in a
    session of their own: a terminal's Ctrl-C reaches the server, which stops them in its own time (``drain``)."""

    def __init__(self, queue: Path, count: int, log: Log, extra_args: tuple[str, ...] = (), max_attempts: int = 3):
        self.queue, self.log, self.extra_args, self.max_attempts = queue, log, extra_args, max_attempts
        self.slots = [_Slot(n) for n in range(1, count + 1)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)
        self.restarts = 0

    def command(self) -> list[str]:
        return [*self_command(), "worker", "--queue", str(self.queue), "--parent", str(os.getpid()),
                "--max-attempts", str(self.max_attempts), *self.extra_args]

    def _requeue(self, pid: int, why: str, counted: bool) -> None:
        """Queue again the jobs the worker process ``pid`` held, now that it is gone."""
        from ..jobs.store import JobStore
        from ..jobs.worker import worker_name

        try:
            store = JobStore(self.queue)
            try:
                ids = store.requeue_worker(worker_name(pid), self.max_attempts, why, counted)
            finally:
                store.close()
        except Exception as exc:  # the queue cannot be reached: the lease's expiry requeues them later
            self.log(f"could not queue again the jobs of worker process {pid}: {exc}")
            return
        for job_id in ids:
            self.log(f"job {job_id}: queued again ({why})")

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        self._thread.start()

    def alive(self) -> int:
        return sum(1 for slot in self.slots if slot.process is not None and slot.process.poll() is None)

    def _spawn(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_lower_priority if hasattr(os, "nice") else None)
        slot.started = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for slot in self.slots:
                self._check(slot)

    def _check(self, slot: _Slot) -> None:
        process = slot.process
        now = time.monotonic()
        if process is not None:
            code = process.poll()
            if code is None:
                return
            ran = now - slot.started
            slot.failures = 0 if ran >= _STABLE_SECONDS else slot.failures + 1
            delay = _RESTART_DELAYS[min(slot.failures, len(_RESTART_DELAYS)) - 1] if slot.failures else 0.0
            self.log(f"worker {slot.number} (process {process.pid}) exited with code {code} after {ran:.0f}s; "
                     f"restarting it{f' in {delay:.0f}s' if delay else ''}")
            self._requeue(process.pid, f"its worker process exited with code {code}", counted=True)
            slot.process, slot.restart_at = None, now + delay
        if now >= slot.restart_at and not self._stop.is_set():
            self.restarts += 1
            self._spawn(slot)

    def running(self) -> list[subprocess.Popen]:
        return [slot.process for slot in self.slots if slot.process is not None and slot.process.poll() is None]

    def _signal_all(self, sig: int) -> list[subprocess.Popen]:
        """Restart no more workers, and send ``sig`` to those running; returns them."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        running = self.running()
        for process in running:
            _signal(process, sig)
        return running

    def drain(self, grace: float, hurry: threading.Event, stop_wait: float = 10.0) -> None:
        """Stop the pool for a shutdown: no restarts; each worker finishes the job in hand and exits (SIGUSR1),
        for up to ``grace`` seconds (or until ``hurry`` is set); those still running are stopped (``stop``) and
        the jobs they held queued again, resumable. Returns once no worker process is left."""
        self._signal_all(signal.SIGUSR1)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline and not hurry.is_set():
            hurry.wait(0.1)
        if self.running():
            self.log(f"{len(self.running())} worker(s) still busy after the grace period: stopping them; their jobs "
                     "are queued again, resumable")
        self.stop(stop_wait)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every worker (each finishes its image in hand and gives its job back), then SIGKILL those still
        running after ``grace`` seconds; the jobs of a killed one are queued again at once."""
        running = self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.log(f"worker process {process.pid} did not stop within {grace:.0f}s: killing it")
                process.kill()
                process.wait()
                self._requeue(process.pid, "the server stopped its worker", counted=False)


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:  # it has just exited
        pass


class Janitor:
    """Every ``every`` seconds, prunes the queue's finished jobs older than ``retention`` (``prune``'s rules)."""

    def __init__(self, queue: Path, retention: float, every: float, log: Log,
                 keep: Callable[[str], bool] = lambda job_id: False):
        self.queue, self.retention, self.every, self.log, self.keep = queue, retention, every, log, keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.sweep()
            if self._stop.wait(self.every):
                return

    def sweep(self) -> None:
        try:
            report = prune_queue(self.queue, self.retention, keep=self.keep)
        except Exception as exc:  # a busy or damaged queue: said, and tried again next time
            self.log(f"janitor: could not prune {self.queue}: {exc}")
            return
        if report.removed:
            self.log(f"janitor: removed {len(report.removed)} item(s), {report.bytes_freed:,} bytes")

    def stop(self) -> None:
        self._stop.set()
