"""Waiting on a condition instead of sleeping: a test that sleeps a fixed time passes on a quiet machine and fails
on a loaded one (these run on 2 shared cores), and waits the whole time even where the condition came at once."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str = "the condition", timeout: float = 120.0,
               every: float = 0.1, detail: Callable[[], str] | None = None) -> T:
    """Call ``condition`` every ``every`` seconds until it returns something truthy, and return that (not faster by
    default: a condition may ask a server or a database on the cores the test shares with what it waits for).
    After ``timeout`` seconds (generous: a slow machine is not a failure) raise an AssertionError naming ``what``,
    followed by what ``detail`` returns then (a server's log, the last state seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = f"timed out after {timeout:g}s waiting for {what}"
            raise AssertionError(f"{said}:\n{detail()}" if detail else said)
        time.sleep(every)
