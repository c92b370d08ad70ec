"""The file-system layer: atomic writes under temporary names that say who writes them, finding live and
abandoned writers, file identities and output-folder checks. Imports nothing of restorecli but ``errors``."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError

STDIO = "-"  # an input or output of "-" is standard input or output

# What a path that is not a regular file is, for the error: reading one would block (a named pipe) or never end
# (a character device such as /dev/zero)
_FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def special_file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) that is not a regular file is, in words: "a named pipe"."""
    return next((label for test, label in _FILE_KINDS if test(mode)), "not a regular file")


def file_id(path: Path) -> tuple[int, int] | None:
    """The (device, inode) naming a file, so that two paths to one file match whatever their spelling
    (symbolic and hard links, and case on case-insensitive file systems); None if it does not exist."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_output_folder(folder: Path, option: str = "-o") -> None:
    """Refuse an output folder that is a file, or lies under one, before any model time is spent (every write
    into it would fail). ``option`` names the command-line option that gave it, for the message."""
    existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        what = "a file" if existing.is_file() else "a broken link" if not existing.exists() else "no folder"
        where = "is" if existing == folder else f"lies under {existing}, which is"
        raise UsageError(f"{option} {folder}: {where} {what}, not a folder")


@functools.cache
def _host() -> str:
    """Where a process id means something: the host name and, on Linux, the pid namespace (containers that
    share a host name and a volume have different ones)."""
    name = socket.gethostname().replace(".", "_") or "localhost"
    try:
        name += f"_pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return name


# .NAME.restorecli-PID@HOST.RANDOM.part: who wrote a temporary file, so a later run can tell it is abandoned
_TEMPORARY = re.compile(r"^\..+\.restorecli-(?P<pid>\d+)@(?P<host>[^.]+)\.[^.]+\.part$")
_NAME_MAX = 255  # bytes in a file name, on every common file system


def _temporary_name(name: str) -> str:
    """NAME as temporary file names carry it: whole, or when the rest would push the name past 255 bytes, its
    start and a hash of the whole (the same for every process of this host, so another run finds it)."""
    room = _NAME_MAX - len(f"..restorecli-{'9' * 7}@{_host()}.XXXXXXXX.part".encode())  # pids have 7 digits at most
    raw = name.encode()
    if len(raw) <= room:
        return name
    return raw[: room - 11].decode(errors="ignore") + "~" + hashlib.sha256(raw).hexdigest()[:10]


def temporary_writer(name: str) -> str | None:
    """The ``writer_tag`` (``PID@HOST``) of the process that named ``name``, a file name, as an ``atomic_writer``'s
    temporary file; None for any other name (a file restorecli did not name, or names only once it is whole)."""
    match = _TEMPORARY.match(name)
    return f"{match['pid']}@{match['host']}" if match else None


def writer_tag() -> str:
    """``PID@HOST`` of this process, for names that say who is writing something (a staged job's folder)."""
    return f"{os.getpid()}@{_host()}"


def live_writer(tag: str) -> int | None:
    """The process id in a ``writer_tag`` if that process runs on this host; None for a tag of a process that
    ended, or of another host (whose processes this one cannot see), or text that is not a tag."""
    pid, _, host = tag.partition("@")
    if not pid.isdigit() or host != _host():
        return None
    return int(pid) if _process_exists(int(pid)) else None


def _process_exists(pid: int) -> bool:
    if os.name == "nt":
        return _windows_process_exists(pid)  # there os.kill(pid, 0) would end the process, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _windows_process_exists(pid: int, kernel32=None, last_error=None) -> bool:
    """Whether process ``pid`` runs, asked of Windows without touching it: a handle that may only read its
    state, and its exit code, which reads STILL_ACTIVE (259) while it runs."""
    import ctypes

    kernel32 = kernel32 or ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    last_error = last_error or ctypes.get_last_error  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return last_error() == 5  # ERROR_ACCESS_DENIED: it runs, as someone else
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:
        kernel32.CloseHandle(handle)


def _own_host_temporaries(folder: Path) -> Iterator[tuple[str, int, bool]]:
    """The temporary files in ``folder`` that an ``atomic_writer`` of this host named: each name with its writer's
    process id and whether that process still runs."""
    host = _host()
    try:
        names = [entry.name for entry in os.scandir(folder)
                 if entry.name.startswith(".") and entry.name.endswith(".part")]
    except OSError:  # no such folder yet
        return
    for name in names:
        match = _TEMPORARY.match(name)
        if match and match["host"] == host:
            yield name, int(match["pid"]), _process_exists(int(match["pid"]))


def remove_abandoned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files in ``folder`` that an ``atomic_writer`` of a process that no longer exists
    left behind (only SIGKILL, the out-of-memory killer's signal, leaves one). A file written on another host,
    by a live process, or not named by ``atomic_writer``, is kept. Returns what was deleted."""
    removed = []
    for name, _, running in _own_host_temporaries(folder):
        if not running:
            (folder / name).unlink(missing_ok=True)
            removed.append(folder / name)
    return removed


class LiveWriters:
    """Finds outputs that another live process on this host is writing through an ``atomic_writer``, so that two
    runs over one folder (overlapping cron runs) share the images instead of both doing each. Files of other hosts
    are not counted, since whether their writer lives cannot be told from here.

    Listing a folder costs in proportion to its files (about 50 ms for 100,000), so a folder's listing is reused
    until 20 times as long as it took has passed: at most a twentieth more time for a batch, and a listing at
    every image where folders are small. A writer found is asked again whether it still runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._seen: dict[Path, tuple[float, float, dict[str, int]]] = {}  # folder: (listed at, took, writers)

    def of(self, path: Path) -> int | None:
        """The process id of a live other writer of ``path``, or None."""
        folder = path.parent
        now = self.clock()
        listed = self._seen.get(folder)
        if listed is None or now - listed[0] > 20 * listed[1]:
            writers = {name: pid for name, pid, running in _own_host_temporaries(folder)
                       if running and pid != os.getpid()}
            listed = (now, self.clock() - now, writers)
            self._seen[folder] = listed
        prefix = f".{_temporary_name(path.name)}.restorecli-"
        return next((pid for name, pid in listed[2].items() if name.startswith(prefix) and _process_exists(pid)),
                    None)


@contextmanager
def atomic_writer(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``, renamed to ``path`` when the block ends
    without an error and removed when it raises: ``path`` holds nothing new, its old content, or
    everything written. The temporary file's name says which process on which host writes it (see
    ``remove_abandoned_temporaries``). ``durable``: on disk (fsync) before the rename; a cache, which a crash may
    lose at no cost but the work of filling it again, passes False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_temporary_name(path.name)}.restorecli-{os.getpid()}@"
                               f"{_host()}.", suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename,
    so ``path`` holds either nothing, its old content, or all of ``data`` (see ``atomic_writer``)."""
    with atomic_writer(path, durable) as handle:
        handle.write(data)


def user_cache(*parts: str) -> Path:
    """A path in restorecli's user cache folder (platformdirs'): converted models, and the findings measured once
    per machine (``read_record``/``update_record``)."""
    import platformdirs

    return platformdirs.user_cache_path("restorecli").joinpath(*parts)


def read_record(path: Path) -> dict:
    """The JSON object a record of findings at ``path`` holds; empty where it is missing, unreadable or not one."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def update_record(path: Path, key: str, value: object) -> None:
    """Set ``key`` to ``value`` (JSON) in the record at ``path`` beside its other findings, written atomically; a
    read-only cache keeps nothing (later processes then measure again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**read_record(path), key: value}, indent=2, sort_keys=True).encode(),
                     durable=False)
    except OSError:
        pass


def inside(path: Path, root: Path) -> bool:
    """True if ``path``'s parent resolves inside ``root`` (the path itself may be a symlink: it is never followed)."""
    try:
        return Path(os.path.realpath(path.parent)).is_relative_to(root) or path == root
    except OSError:
        return False


def remove_tree(path: Path, root: Path) -> None:
    """Delete ``path`` without following symlinks: a link is removed as a link, its target survives."""
    if not inside(path, root):
        raise UsageError(f"refusing to delete {path}: outside {root}")
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode):
        for entry in os.scandir(path):
            remove_tree(Path(entry.path), root)
        os.rmdir(path)
    else:
        os.unlink(path)
