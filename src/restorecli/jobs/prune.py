"""The janitor: delete finished jobs older than an age (in a folder that is not a queue, only the temporary files
restorecli left there), never following symlinks, never touching queued or running jobs, never leaving the given
root."""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..files import live_writer, remove_tree, temporary_writer
from .database import DB_NAME

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str, option: str = "--older-than") -> float:
    """``30m``, ``1h``, ``7d``, ``45s``, ``2w`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise UsageError(f"{option} '{text}': write an age like 30m, 1h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def describe_age(seconds: float) -> str:
    """Seconds in the largest unit that divides them: 1800 -> ``30m``, 3600 -> ``1h``, 90 -> ``90s``."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass
class PruneReport:
    removed: list[dict] = field(default_factory=list)  # {"path", "bytes", "job_id"?}
    dry_run: bool = False
    kept: int = 0  # files old enough that were kept all the same, as restorecli did not write them (plain folder)

    @property
    def bytes_freed(self) -> int:
        return sum(r["bytes"] for r in self.removed)


def _tree_size(path: Path) -> int:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    return sum(_tree_size(Path(entry.path)) for entry in os.scandir(path))


def prune_queue(root: Path, age: float, dry_run: bool = False,
                keep: Callable[[str], bool] = lambda job_id: False) -> PruneReport:
    """Delete completed and failed jobs whose completion is older than ``age`` seconds, and abandoned submissions.
    ``keep(job_id)`` is asked just before a job would go: True keeps it this time (the server is sending its
    files)."""
    from .store import JobStore  # SQLite's and the queue's modules: not for the CLI's start (serve's ages)

    report = PruneReport(dry_run=dry_run)
    real_root = Path(os.path.realpath(root))
    cutoff = time.time() - age
    store = JobStore(root)
    try:
        known = set()
        for job in store.jobs():
            known.add(job.id)
            if job.status not in ("completed", "failed") or (job.finished or 0) >= cutoff:
                continue
            if not dry_run and keep(job.id):
                continue
            job_dir = store.job_dir(job.id)
            size = _tree_size(job_dir) if os.path.lexists(job_dir) else 0
            report.removed.append({"path": str(job_dir), "bytes": size, "job_id": job.id})
            if not dry_run:
                if os.path.lexists(job_dir):
                    remove_tree(job_dir, real_root)
                store.forget(job.id)
        # folders no record points to: submissions that died before their record was written
        for folder in ("incoming", "jobs"):
            parent = root / folder
            for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
                if folder == "jobs" and entry.name in known:
                    continue
                if os.lstat(entry).st_mtime >= cutoff:
                    continue
                if folder == "jobs" and store.get(entry.name) is not None:  # submitted meanwhile
                    continue
                if folder == "incoming" and live_writer(entry.name.partition(".")[2]) is not None:
                    continue  # a submit or an upload still writing it, however long it takes
                report.removed.append({"path": str(entry), "bytes": _tree_size(entry), "job_id": None})
                if not dry_run:
                    remove_tree(entry, real_root)
    finally:
        store.close()
    return report


def prune_folder(root: Path, age: float, dry_run: bool = False) -> PruneReport:
    """Delete, under ``root``, the temporary files that restorecli's atomic writes left behind (named
    ``.NAME.restorecli-PID@HOST.RANDOM.part``) last modified more than ``age`` seconds ago, whose writer no longer
    runs. Nothing else is deleted: a plain folder may hold originals, and a finished output cannot be told from
    one by its name, so every other file, link and folder stays (``kept`` counts the other files older than
    ``age``). Symlinked folders are never entered."""
    report = PruneReport(dry_run=dry_run)
    real_root = Path(os.path.realpath(root))
    cutoff = time.time() - age

    def walk(folder: Path) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                walk(path)
            elif info.st_mtime >= cutoff:
                continue
            elif not _abandoned_temporary(entry.name, info.st_mode):
                report.kept += 1
            else:
                report.removed.append({"path": str(path), "bytes": info.st_size})
                if not dry_run:
                    remove_tree(path, real_root)

    walk(root)
    return report


def _abandoned_temporary(name: str, mode: int) -> bool:
    """Whether a file of ``name`` and ``mode`` is an atomic write's temporary file whose writer no longer runs
    (or ran on another host, which cannot be asked: the caller's age says it stopped writing long ago)."""
    tag = temporary_writer(name)
    return stat.S_ISREG(mode) and tag is not None and live_writer(tag) is None


def prune(target: Path, age: float, dry_run: bool = False, queue_mode: bool | None = None) -> PruneReport:
    """Prune a queue folder (it holds queue.db) or a plain folder (``prune_folder``). A queue (``queue_mode``)
    that does not exist yet has nothing to prune."""
    from .store import queue_exists

    if queue_mode and not queue_exists(target):
        return PruneReport(dry_run=dry_run)
    if not target.is_dir():
        raise UsageError(f"{target}: {'is a file, not a folder' if target.exists() else 'no such folder'}")
    if queue_mode is None:
        queue_mode = (target / DB_NAME).is_file()
    return prune_queue(target, age, dry_run) if queue_mode else prune_folder(target, age, dry_run)
