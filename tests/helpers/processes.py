"""Processes as Linux's /proc shows them, for the tests that check a server's or a pool's processes come and go.
A process may end between two reads of /proc: every function here takes that as an answer, never as an error."""

from __future__ import annotations

from pathlib import Path


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """The one-letter state and the parent id of ``pid``; None where it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces, ")"
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """``pid`` exists and has not ended (a zombie, ended but not yet waited for by its parent, counts as ended)."""
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def _parents() -> dict[int, list[int]]:
    """Each process's children, for every process now in /proc."""
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _state_and_parent(entry.name)) is not None:
            by_parent.setdefault(found[1], []).append(int(entry.name))
    return by_parent


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, lowest id first."""
    return sorted(_parents().get(pid, []))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``: its children, theirs, and so on."""
    by_parent, found, todo = _parents(), set(), [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found
