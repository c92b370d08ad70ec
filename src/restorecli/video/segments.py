"""A video restored in segments that outlive the run: each segment's frames are encoded into a file of their own in
a hidden parts folder beside the output (``.clip.mp4.parts/``), renamed into place when whole and recorded in the
folder's manifest; a run that was stopped (Ctrl-C, SIGKILL, a reboot) starts again at the first frame no finished
segment holds. When every frame is in a segment, the segments' packets are joined into the output, without
encoding them again, with the input's audio and subtitle packets copied beside them.

The manifest records the input's identity (size, modification time, a hash of its first MiB) and the settings
that change the frames: a changed input or other settings start again, as does ``--overwrite``."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..files import (LiveWriters, atomic_writer, live_writer, remove_abandoned_temporaries, temporary_writer,
                     write_atomic, writer_tag)
from .formats import VideoEncodeError, container_for, load_av
from .read import ResumeAt, VideoFacts, VideoInput
from .write import CodecChoice, Encoding, VideoOutput, add_container_extras

MANIFEST = "manifest.json"
_VERSION = 1
_HEAD = 1 << 20  # bytes of the input hashed: a file rewritten in place with the same size and time still differs


@dataclass(frozen=True)
class Segment:
    """A finished segment: its file in the parts folder, the number of its first frame and how many it holds."""

    file: str
    first: int
    frames: int


def parts_folder(output: Path) -> Path:
    """The hidden folder that holds ``output``'s finished segments while it is restored."""
    return output.parent / f".{output.name}.parts"


def parts_writer(folder: Path) -> int | None:
    """The process id of a live process of this host that is restoring into a parts folder under ``folder`` (the
    writer its manifest names, or one writing a segment there); None where none runs. Whether a process of
    another host runs cannot be told from here: its lease is what says so."""
    for parts in folder.rglob("*.parts"):
        if not parts.is_dir() or parts.is_symlink():
            continue
        writer = _read_manifest(parts / MANIFEST).get("writer")
        tags = [writer] if isinstance(writer, str) else []
        tags += [tag for child in parts.iterdir() if (tag := temporary_writer(child.name)) is not None]
        live = next((pid for tag in tags if (pid := live_writer(tag)) is not None), None)
        if live is not None:
            return live
    return None


def adopt_parts(old: Path, work: Path) -> list[Path]:
    """Move the parts folders of the outputs under ``old`` (a dead owner's work folder) to the same places under
    ``work``, where ``work`` has none of its own yet, so the finished segments they hold are resumed, not restored
    again; returns the folders moved. The caller makes sure no live process writes into them (``parts_writer``)."""
    moved = []
    for parts in sorted(old.rglob("*.parts")):
        if not parts.name.startswith(".") or not parts.is_dir() or parts.is_symlink():
            continue
        if any(parent.name.endswith(".parts") for parent in parts.relative_to(old).parents):
            continue  # inside a parts folder moved already (a Ray pool's ranges)
        target = work / parts.relative_to(old)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(parts, target)
        moved.append(target)
    return moved


def input_identity(source: Path) -> dict[str, Any]:
    """What tells the input apart from a changed one: its size, modification time and a hash of its first MiB."""
    info = source.stat()
    with open(source, "rb") as handle:
        head = hashlib.sha256(handle.read(_HEAD)).hexdigest()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "head": head}


class PartsFolder:
    """The parts folder of one output and its manifest: the segments finished so far (contiguous from frame 0).
    Opened with ``PartsFolder.open``; nothing is written until the first segment is kept."""

    def __init__(self, folder: Path, suffix: str, identity: dict[str, Any], segments: list[Segment]):
        self.folder, self.suffix, self.identity = folder, suffix, identity
        self.segments = segments

    @classmethod
    def open(cls, output: Path, source: Path, settings: dict[str, Any], fresh: bool, name: str) -> PartsFolder:
        """``output``'s parts folder, with the segments an earlier run of the same input and ``settings`` finished;
        emptied where ``fresh`` (--overwrite), the input or the settings differ, or the manifest is unreadable.
        Raises ``VideoEncodeError`` (naming ``name``) where another live process is restoring it."""
        folder = parts_folder(output)
        identity = {"version": _VERSION, "input": input_identity(source), "settings": settings}
        manifest = _read_manifest(folder / MANIFEST)
        writer = manifest.get("writer")
        busy = live_writer(writer) if isinstance(writer, str) and writer != writer_tag() else None
        if busy is None:  # a run that has not kept a segment yet: the one it is writing
            busy = LiveWriters().of(folder / f"segment-{len(_segments(manifest)):05d}{output.suffix}")
        if busy is not None:
            raise VideoEncodeError(f"{name}: another restorecli process (pid {busy}) is restoring it into "
                                   f"{output}")
        kept = _segments(manifest) if _same(manifest, identity) else []
        if fresh or not kept or not all((folder / s.file).is_file() and _times_path(folder / s.file).is_file()
                                        for s in kept):
            shutil.rmtree(folder, ignore_errors=True)
            kept = []
        else:
            remove_abandoned_temporaries(folder)  # the segment a killed run was writing
        return cls(folder, output.suffix, identity, kept)

    @property
    def covered(self) -> int:
        """Frames the finished segments hold: the run restores the frames from this one on."""
        return sum(segment.frames for segment in self.segments)

    def resume_at(self) -> ResumeAt | None:
        """Where a run resumes: the first frame no segment holds, after the last one they hold, shown at the
        greatest time its segment's times file gives (the input's, in its video stream's time base); None where no
        segment is finished."""
        if not self.segments:
            return None
        times = json.loads(_times_path(self.folder / self.segments[-1].file).read_text())
        shown = [pts for pts, _, _ in times["packets"] if pts is not None]
        return ResumeAt(self.covered, max(shown)) if shown else None

    def next_path(self) -> Path:
        """Where the next segment is written."""
        return self.folder / f"segment-{len(self.segments):05d}{self.suffix}"

    def keep(self, path: Path, frames: int) -> None:
        """Record the segment just renamed into ``path`` (``frames`` frames) as finished, in the manifest."""
        self.segments.append(Segment(path.name, self.covered, frames))
        manifest = {**self.identity, "writer": writer_tag(), "segments": [asdict(s) for s in self.segments]}
        write_atomic(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())

    def discard_if_empty(self) -> None:
        """Remove the folder where no segment was finished (a run stopped before its first)."""
        if not self.segments:
            shutil.rmtree(self.folder, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def range_output(output: Path, first: int) -> Path:
    """The name under which the frames of ``output`` from number ``first`` on are restored as a range of their own
    (a video that several workers restore at once, each a range): its segments are kept in that name's parts
    folder, inside ``output``'s."""
    return parts_folder(output) / f"range-{first:08d}{output.suffix}"


def join_ranges(output: Path, firsts: list[int], video: VideoInput) -> tuple[int, int]:
    """Write ``output`` (see ``join_segments``) from the segments of its ranges beginning at the frames ``firsts``,
    in order, then remove its parts folder; returns the frame size. Raises ``VideoEncodeError`` where the ranges'
    segments do not hold every frame from 0 on, one after the other."""
    folder = parts_folder(output)
    segments, expected = [], 0
    for first in firsts:
        kept = parts_folder(range_output(output, first))
        for segment in _segments(_read_manifest(kept / MANIFEST)):
            if first + segment.first != expected:
                raise VideoEncodeError(f"{video.name}: the restored ranges miss frames {expected} to "
                                       f"{first + segment.first - 1}")
            segments.append(Segment(f"{kept.name}/{segment.file}", expected, segment.frames))
            expected += segment.frames
    if not segments:
        raise VideoEncodeError(f"{video.name}: no frame of it was restored")
    whole = PartsFolder(folder, output.suffix, {}, segments)
    size = join_segments(whole, video, output)
    whole.remove()
    return size


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _segments(manifest: dict[str, Any]) -> list[Segment]:
    """The finished segments a manifest lists; none where it lists them in another form (another version's)."""
    try:
        return [Segment(**segment) for segment in manifest.get("segments", [])]
    except TypeError:
        return []


def _same(manifest: dict[str, Any], identity: dict[str, Any]) -> bool:
    return all(manifest.get(key) == value for key, value in identity.items())


class SegmentedOutput:
    """The frames' writer (``restore``'s encoding stage) for a video restored in segments: frames encoded into the
    parts folder's next segment file, closed and kept once it has been written to for ``seconds`` (a segment is
    that much work at most to lose), and a new one begun at the next frame. Packets of other streams are not
    taken here: they are copied when the segments are joined. Not thread-safe: one thread writes."""

    def __init__(self, parts: PartsFolder, output: VideoOutputSpec, seconds: float):
        self.parts, self.spec, self.seconds = parts, output, seconds
        self.name = output.name
        self.frames = 0
        self._writer: Any | None = None  # the atomic writer of the segment being written
        self._current: VideoOutput | None = None
        self._times: list[list[int | None]] = []  # the segment's packets' pts, dts and duration, as encoded
        self._began = 0.0
        self._count = 0

    def frame(self, color: np.ndarray, pts: int, rotation: int = 0, duration: int | None = None) -> None:
        if self._current is not None and time.perf_counter() - self._began >= self.seconds:
            self._finish()
        if self._current is None:
            self._begin()
        assert self._current is not None
        self._current.frame(color, pts, rotation, duration)
        self._count += 1
        self.frames += 1

    def packet(self, packet: Any) -> None:
        """A copied stream's packet: left for the join, which copies the whole stream."""

    def close(self) -> None:
        if self._current is not None:
            self._finish()

    def abort(self) -> None:
        """Give the segment in hand up (its temporary file removed); the finished ones stay for the next run."""
        if self._current is not None:
            self._current.abort()
            try:
                self._writer.__exit__(_Abandoned, _Abandoned(), None)  # type: ignore[union-attr]
            except _Abandoned:
                pass
            self._current = self._writer = None

    def _begin(self) -> None:
        self.parts.folder.mkdir(parents=True, exist_ok=True)
        self._path = self.parts.next_path()
        self._writer = atomic_writer(self._path)
        spec = self.spec
        self._times = []
        self._current = VideoOutput(self._writer.__enter__(), spec.container, spec.name, spec.facts, [], spec.choice,
                                    spec.encoding, on_packet=self._note)
        self._began, self._count = time.perf_counter(), 0

    def _note(self, packet: Any) -> None:
        self._times.append([packet.pts, packet.dts, packet.duration or None])

    def _finish(self) -> None:
        assert self._current is not None and self._writer is not None
        self._current.close()
        times = {"time_base": str(self.spec.facts.time_base), "packets": self._times}
        write_atomic(_times_path(self._path), json.dumps(times).encode())
        writer, self._current, self._writer = self._writer, None, None
        writer.__exit__(None, None, None)  # renamed into place
        self.parts.keep(self._path, self._count)


class _Abandoned(Exception):
    """Thrown into a segment's temporary file to remove it."""


@dataclass(frozen=True)
class VideoOutputSpec:
    """How each segment is encoded: the container and codec, the input's facts, the quality and speed asked for."""

    container: str
    name: str
    facts: VideoFacts
    choice: CodecChoice
    encoding: Encoding = Encoding()


def join_segments(parts: PartsFolder, video: VideoInput, output: Path) -> tuple[int, int]:
    """Write ``output`` (atomically) from the finished segments' video packets, unchanged, and the copied streams'
    packets of ``video`` (opened afresh, at its start), interleaved by their decoding times, with its container
    metadata and chapters. Returns the frame size (w, h)."""
    av = load_av(video.name)
    with atomic_writer(output) as handle:
        joined = av.open(handle, "w", format=container_for(output.name))
        try:
            with av.open(str(parts.folder / parts.segments[0].file)) as first:
                template = first.streams.video[0]
                # opaque: the segment's own codec object, its decoder's; PyAV would otherwise look an encoder up by
                # the decoder's name, and AV1's decoder here, libdav1d, names no encoder (nothing is encoded again)
                stream = joined.add_stream_from_template(template, opaque=True)
                stream.time_base = template.time_base
                if video.facts.rate:  # a muxer's default frame duration (Matroska's) comes from the stream's rate
                    stream.codec_context.framerate = video.facts.rate
                size, rotation = (template.codec_context.width, template.codec_context.height), _rotation(first)
            if rotation:
                stream.set_display_rotation(rotation)
            copied = add_container_extras(joined, video.name, video.metadata, video.chapters, video.copied)
            for _, target, packet in heapq.merge(_segment_packets(parts), _copied_packets(video), key=_first):
                packet.stream = stream if target < 0 else copied[target]
                joined.mux(packet)
        except BaseException:
            joined.close()
            raise
        joined.close()
    return size


def _times_path(segment: Path) -> Path:
    """Where the times of ``segment``'s packets are kept: as the encoder gave them, which a container's edit list
    (MP4's, for a segment that does not start at 0 or whose B-frames decode before it) would shift."""
    return segment.with_name(segment.name + ".times.json")


def _segment_packets(parts: PartsFolder) -> Iterator[tuple[Fraction, int, Any]]:
    """The video packets of every segment in order, at the times the encoder gave them, each with its decoding time
    (seconds) and -1 (the video). A decoding time not after the one before (a segment's first B-frames) is moved up
    to the first tick after it, where that is still no later than the packet is shown."""
    last_dts: Fraction | None = None
    for segment in parts.segments:
        path = parts.folder / segment.file
        times = json.loads(_times_path(path).read_text())
        base, stated = Fraction(times["time_base"]), iter(times["packets"])
        with load_av(segment.file).open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.dts is None and packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                times = next(stated, None)
                if times is None:
                    raise VideoEncodeError(f"{path}: the segment holds more packets than its times file says")
                packet.pts, packet.dts, packet.duration = times
                packet.time_base = base
                if last_dts is not None and packet.dts is not None and packet.dts * base <= last_dts:
                    packet.dts = min(int(last_dts / base) + 1, packet.pts)
                last_dts = _seconds(packet)
                yield last_dts, -1, packet


def _copied_packets(video: VideoInput) -> Iterator[tuple[Fraction, int, Any]]:
    """The copied streams' packets in the file's order, each with its decoding time and its input stream's index."""
    if not video.copied:
        return
    for packet in video.container.demux(*video.copied):
        if packet.dts is not None or packet.pts is not None:
            yield _seconds(packet), packet.stream.index, packet


def _first(entry: tuple[Fraction, int, Any]) -> Fraction:
    return entry[0]


def _seconds(packet: Any) -> Fraction:
    when = packet.dts if packet.dts is not None else packet.pts
    return Fraction(when * packet.time_base)


def _rotation(container: Any) -> int:
    """The display rotation a segment's frames carry (the stream's display matrix), read off its first frame."""
    for frame in container.decode(video=0):
        return int(frame.rotation or 0)
    return 0


__all__ = ["PartsFolder", "Segment", "SegmentedOutput", "VideoOutputSpec", "adopt_parts", "input_identity",
           "join_ranges", "join_segments", "parts_folder", "parts_writer", "range_output"]
