"""Hashes and the weights directory's lock file: a file that fails its published or pinned hash is never used."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..errors import SetupError, UnsupportedModel
from ..files import write_atomic
from .registry import ModelEntry

LOCK_NAME = "restorecli-lock.json"
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lock(directory: Path) -> dict[str, dict]:
    path = directory / LOCK_NAME
    if not path.is_file():
        return {}
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path}: unreadable lock file ({exc}); fix or delete it") from None
    _check_lock_shape(lock, path)
    return lock


def _check_lock_shape(lock: object, path: Path) -> None:
    """A lock file is an object of ``{file name: {"sha256": 64 hex digits, ...}}``. Any other shape is a setup
    error naming the first bad entry: an entry without a usable hash must never read as "not pinned", which would
    let its file load unverified."""
    if not isinstance(lock, dict):
        raise SetupError(f"{path}: not a restorecli lock file (holds a JSON {type(lock).__name__}, not an object "
                         "of file names); fix or delete it")
    for name, entry in lock.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise SetupError(f"{path}: the entry for {name!r} holds no sha256 (64 hex digits) but "
                             f"{repr(entry)[:80]}; fix or delete the lock file (its files are then pinned again on "
                             "their next use)")


def pin(directory: Path, filename: str, digest: str, source: str) -> None:
    """Record ``digest`` for ``filename`` in the lock file (atomically)."""
    lock = read_lock(directory)
    lock[filename] = {"sha256": digest, "source": source,
                      "pinned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(directory / LOCK_NAME, json.dumps(lock, indent=2, sort_keys=True).encode("utf-8"))


def expected_hash(entry: ModelEntry, filename: str, directory: Path) -> tuple[str | None, bool]:
    """(sha256, pinned_locally) for a file of ``entry``: the published hash, else the local pin, else None."""
    if entry.sha256 and filename == entry.filename:
        return entry.sha256, False
    pinned = read_lock(directory).get(filename)
    return (pinned["sha256"], True) if pinned else (None, False)


def check_file(entry: ModelEntry, path: Path, directory: Path) -> str:
    """Raise ``UnsupportedModel`` if ``path`` does not match its published or pinned hash; return its hash."""
    digest = sha256_of(path)
    wanted, local = expected_hash(entry, path.name, directory)
    if wanted and digest != wanted:
        origin = f"one pinned in {directory / LOCK_NAME}" if local else "published"
        raise UnsupportedModel(
            f"{path}: sha256 {digest} does not match the {origin} {wanted}; refusing to load it. "
            f"Re-download with: restorecli download-weights {entry.name} --force"
        )
    return digest
