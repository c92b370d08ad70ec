"""Joining Ray for the pool's driver: start a private local instance or join a cluster, keeping this process's
signal handlers, and leave it again with no process left behind."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

from ..errors import SetupError, UsageError


def connect(address: str) -> Callable[[], None]:
    """Start (``local``) or join (``auto``, an address) Ray, keeping this process's signal handlers; returns what
    ends the connection. A process already connected (a caller's own ``ray.init``) keeps its connection.
    Raises ``SetupError`` where Ray is not installed or the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise SetupError("--ray needs Ray: pip install 'restorecli[ray]'") from None
    if ray.is_initialized():
        return lambda: None
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    settings: dict[str, Any] = {"logging_level": logging.WARNING}
    if address == "local":
        settings["include_dashboard"] = False
    else:
        _check_reachable(address)
    before = set(_descendants(os.getpid())) if address == "local" else None  # this process's own, left alone
    try:
        ray.init(address=address, **settings)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise SetupError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    except BaseException:  # a signal while Ray started (its own handler raises SystemExit): leave nothing running
        _end_ray(ray, before)
        raise StoppedWhileStarting() from None
    finally:
        for signum, handler in handlers.items():  # ray.init makes SIGTERM exit at once: keep the polite stop
            signal.signal(signum, handler)
    return lambda: _end_ray(ray, before)


class StoppedWhileStarting(Exception):
    """A stop signal came while Ray was starting; what it had started is ended."""


def _end_ray(ray, before: set[int] | None) -> None:
    """Disconnect; where this process started Ray (``before``: the processes below it until then), also end every
    process Ray left: ``ray.shutdown`` ends the head's processes, but their own children (the raylet's agents,
    actors mid-task) can outlive it, orphaned, for as long as they take to notice."""
    started = [pid for pid in _descendants(os.getpid()) if pid not in before] if before is not None else []
    if ray.is_initialized():
        ray.shutdown()
    _end_processes(started)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from /proc; empty where there is none to read."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _end_processes(pids: list[int], wait: float = 5.0) -> None:
    """SIGTERM each of ``pids`` still running, then SIGKILL those still there after ``wait`` seconds."""
    alive = [pid for pid in pids if _signal_pid(pid, signal.SIGTERM)]
    deadline = time.monotonic() + wait
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        _signal_pid(pid, signal.SIGKILL)


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended and waiting for its parent, does not); reaps it where it is ours."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_address(address: str) -> None:
    """Raise ``UsageError`` for a ``--ray`` that is none of local, auto, HOST:PORT and ray://HOST:PORT."""
    if address in ("local", "auto") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: give local, auto, HOST:PORT or ray://HOST:PORT")


def _check_reachable(address: str) -> None:
    """Raise ``SetupError`` where the cluster's head (its GCS port) refuses a connection or does not answer: Ray's
    own connect goes on retrying for minutes. An address Ray resolves itself (``auto`` without ``$RAY_ADDRESS``:
    the cluster ``ray start`` left on this machine) or reaches through Ray Client is left to Ray."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if not address or "://" in address:
        return
    check_address(address)
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise SetupError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
