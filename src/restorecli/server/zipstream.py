"""A ZIP archive written as it is sent: nothing is built in memory or on disk first."""

from __future__ import annotations

import zipfile
from typing import Iterable, Iterator

from .views import Served

_CHUNK = 1 << 16


class _Sink:
    """A write-only stream whose bytes are taken out as they come (ZIP's unseekable mode: each entry's sizes
    follow its data)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def zip_chunks(files: Iterable[Served]) -> Iterator[bytes]:
    """The archive of ``files``, each under its download name, stored uncompressed (images are compressed
    already), in chunks of about 64 KiB."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for served in files:
            info = zipfile.ZipInfo.from_file(served.path, served.download_name)
            with open(served.path, "rb") as source, archive.open(info, "w", force_zip64=True) as entry:
                while chunk := source.read(_CHUNK):
                    entry.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
