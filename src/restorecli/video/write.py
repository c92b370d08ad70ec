"""Encode restored frames with PyAV and mux them, with the packets of the copied streams unchanged (remuxed, never
re-encoded), into an open binary file. The codec is chosen per container from what the bundled FFmpeg has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .formats import (DECODING_TIMES_ONLY, DEFAULT_CODECS, SVT_AV1_PRESETS, X26X_CODECS, X26X_PRESETS,
                      VideoEncodeError, load_av, preset_family)
from .read import UNSPECIFIED, Colour, VideoFacts

# Pixel formats written where the codec takes them: lossless codecs keep RGB as it is, the others get 4:2:0
# (what every player decodes), which needs even frame sides
_LOSSLESS_RGB = {"ffv1": "bgr0", "libx264rgb": "bgr0", "png": "rgb24", "qtrle": "rgb24"}
_LOSSLESS_RGB_DEEP = {"ffv1": "gbrp16le", "png": "rgb48be"}  # the same for an input of more than 8 bits a sample
# Container tags the muxer writes for itself: copied, they would describe the input's muxer, not this file
_MUXER_TAGS = {"encoder", "major_brand", "minor_version", "compatible_brands"}
_CRF_CODECS = {"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libvpx", "libsvtav1", "libaom-av1"}
_LOSSLESS_CODECS = {"ffv1", "huffyuv", "ffvhuff", "utvideo", "png", "qtrle", "rawvideo"}


@dataclass(frozen=True)
class Encoding:
    """What the encoder is asked for beside its codec: a constant quality (``crf``, --crf) or a bit rate
    (``bitrate``, --video-bitrate, bits a second), and its speed (``preset``, --video-preset); None: the codec's
    own."""

    crf: int | None = None
    bitrate: int | None = None
    preset: str | None = None

    def apply(self, context: Any, codec: str, name: str) -> None:
        """Set these on the codec ``context`` of a ``codec`` stream before it opens; ``VideoEncodeError`` naming
        ``name`` where the codec has no such setting."""
        options: dict[str, str] = {}
        if self.crf is not None:
            if codec not in _CRF_CODECS:
                raise VideoEncodeError(f"{name}: --crf is for {', '.join(sorted(_CRF_CODECS))}, not {codec}")
            options |= {"crf": str(self.crf), **({"b": "0"} if "vpx" in codec else {})}
        if self.preset is not None:
            options["preset"] = self._preset_for(codec, name)
        if options:
            context.options = options
        if self.bitrate is not None:
            if codec in _LOSSLESS_CODECS:
                raise VideoEncodeError(f"{name}: {codec} is lossless: --video-bitrate is for the codecs that lose "
                                       "detail to meet it")
            context.bit_rate = self.bitrate

    def _preset_for(self, codec: str, name: str) -> str:
        preset = str(self.preset)
        if codec in X26X_CODECS:
            family, takes = "x26x", f"a speed from {X26X_PRESETS[0]} to {X26X_PRESETS[-2]}"
        elif codec == "libsvtav1":
            family = "svt-av1"
            takes = f"a number from {SVT_AV1_PRESETS[0]} (slowest) to {SVT_AV1_PRESETS[-1]} (fastest)"
        else:
            raise VideoEncodeError(f"{name}: --video-preset is for libx264, libx265 and libsvtav1, not {codec}")
        if preset_family(preset) != family:
            raise VideoEncodeError(f"{name}: --video-preset {preset} is not one of {codec}'s: it takes {takes}")
        return preset


@dataclass(frozen=True)
class CodecChoice:
    """The video codec an output is written with, its pixel format, and why it was chosen."""

    codec: str
    pix_fmt: str
    reason: str


def choose_codec(container: str, asked: str | None, name: str, pix_fmt: str | None = None,
                 bits: int = 8) -> CodecChoice:
    """The codec for a ``container`` output: ``asked`` (--video-codec) if the bundled FFmpeg can encode it into that
    container, else the container's first default it has; in ``pix_fmt`` (--pix-fmt), else the codec's own choice
    for an input of ``bits`` a sample (see ``_pix_fmt``). Raises ``VideoEncodeError`` naming ``name``."""
    av = load_av(name)
    if asked is not None:
        codec = _encoder(av, asked)
        if codec is None:
            raise VideoEncodeError(f"{name}: --video-codec {asked}: the bundled FFmpeg has no such encoder")
        return _in_format(codec, "asked for (--video-codec)", pix_fmt, bits, name)
    for candidate in DEFAULT_CODECS.get(container, ()):
        codec = _encoder(av, candidate)
        if codec is not None:
            return _in_format(codec, f"the default for {container} that this FFmpeg has", pix_fmt, bits, name)
    raise VideoEncodeError(f"{name}: the bundled FFmpeg has none of the codecs {container} is written with "
                           f"({', '.join(DEFAULT_CODECS.get(container, ()))}); name one with --video-codec")


def check_frame_size(choice: CodecChoice, size: tuple[int, int], name: str) -> None:
    """Raise ``VideoEncodeError`` where ``choice`` cannot take frames of ``size`` (w, h): 4:2:0 needs even sides."""
    if choice.pix_fmt.startswith(("yuv420", "nv12")) and (size[0] % 2 or size[1] % 2):
        raise VideoEncodeError(f"{name}: {choice.codec} in {choice.pix_fmt} needs even frame sides, and the restored "
                               f"frames would be {size[0]}x{size[1]}; choose an --outscale that gives even sides")


def _encoder(av: Any, name: str) -> Any | None:
    try:
        codec = av.codec.Codec(name, "w")
    except (av.FFmpegError, ValueError):
        return None
    return codec if codec.type == "video" else None


def _in_format(codec: Any, reason: str, asked: str | None, bits: int, name: str) -> CodecChoice:
    """``codec`` chosen for ``reason``, in the pixel format ``asked`` (--pix-fmt), which it must take, else in
    ``_pix_fmt``'s; the reason says where an input of more than 8 bits keeps them."""
    formats = [f.name for f in codec.video_formats or ()]
    if asked is None:
        pix_fmt = _pix_fmt(codec.name, formats, bits)
        if bits > 8:
            reason += (f", in {pix_fmt}: the input has {bits} bits a sample" if sample_bits(pix_fmt) > 8 else
                       f", in {pix_fmt}: the input has {bits} bits a sample, which {codec.name} cannot keep here")
        return CodecChoice(codec.name, pix_fmt, reason)
    if (formats and asked not in formats) or not _known(asked):
        raise VideoEncodeError(f"{name}: --pix-fmt {asked}: {codec.name} writes "
                               f"{', '.join(formats) or 'the pixel formats FFmpeg names'}")
    return CodecChoice(codec.name, asked, f"{reason}, in {asked} (--pix-fmt)")


def _pix_fmt(codec: str, formats: list[str], bits: int) -> str:
    """The pixel format ``codec`` writes by default: a lossless codec RGB as it is, the others 4:2:0 (what every
    player decodes); in 10 bits (16 for RGB) where the input has more than 8 bits a sample and the codec can."""
    deep = bits > 8
    for table in (_LOSSLESS_RGB_DEEP, _LOSSLESS_RGB) if deep else (_LOSSLESS_RGB,):
        if table.get(codec) in formats:
            return table[codec]
    if deep and "yuv420p10le" in formats:
        return "yuv420p10le"
    return "yuv420p" if "yuv420p" in formats or not formats else formats[0]


def _known(pix_fmt: str) -> bool:
    try:
        sample_bits(pix_fmt)
    except ValueError:
        return False
    return True


def sample_bits(pix_fmt: str) -> int:
    """Bits a sample of the pixel format named ``pix_fmt`` (its deepest component)."""
    from av import VideoFormat

    return max((component.bits for component in VideoFormat(pix_fmt).components), default=8)


class VideoOutput:
    """The output video written into ``handle`` as ``container`` (an FFmpeg muxer's name): its video stream is set up
    at the first frame (whose size and rotation it takes), with the input's time base, frame rate and colour; the
    ``copied`` input streams are added as they are, and the container's ``metadata`` (title, dates) and
    ``chapters`` where the format holds them. Packets of the copied streams are muxed unchanged; frames arriving as
    arrays are encoded at the timestamps given. Not thread-safe: one thread writes."""

    def __init__(self, handle: BinaryIO, container: str, name: str, facts: VideoFacts, copied: list[Any],
                 choice: CodecChoice, encoding: Encoding = Encoding(), metadata: dict[str, str] | None = None,
                 chapters: list[dict[str, Any]] | None = None, on_packet: Callable[[Any], None] | None = None):
        self.av = load_av(name)
        self.name, self.facts, self.choice, self.encoding = name, facts, choice, encoding
        try:
            self.container = self.av.open(handle, "w", format=container)
        except (self.av.FFmpegError, ValueError) as exc:
            raise VideoEncodeError(f"{name}: cannot write {container} here ({exc})") from None
        self._copied = copied
        self._metadata = metadata or {}
        self._chapters = chapters or []
        self._streams: dict[int, Any] = {}  # input stream index -> output stream
        self.video: Any | None = None
        self._waiting: list[Any] = []  # copied packets that came before the first frame (the header is not out)
        self.frames = 0
        self.last_pts: int | None = None
        self._durations: dict[int, int] = {}  # a frame's pts -> how long the input showed it
        self._on_packet = on_packet  # hears each encoded packet, its times as the encoder gave them, before the mux

    def _open(self, width: int, height: int, rotation: int) -> None:
        choice, facts = self.choice, self.facts
        check_frame_size(choice, (width, height), self.name)
        try:
            video = self.container.add_stream(choice.codec, rate=facts.rate or None)
        except (self.av.FFmpegError, ValueError) as exc:
            raise VideoEncodeError(f"{self.name}: {self.container.format.name} cannot hold {choice.codec} ({exc}); "
                                   "choose another --video-codec") from None
        video.width, video.height, video.pix_fmt = width, height, choice.pix_fmt
        video.time_base = facts.time_base  # the input's timestamps are kept as they are (variable rate too)
        video.codec_context.time_base = facts.time_base
        if self.container.format.name in DECODING_TIMES_ONLY:
            video.codec_context.max_b_frames = 0  # a reordered frame's time would be lost
        _describe_colour(video.codec_context, facts.colour)
        self.encoding.apply(video.codec_context, choice.codec, self.name)
        if rotation:
            video.set_display_rotation(rotation)
        self._streams = add_container_extras(self.container, self.name, self._metadata, self._chapters, self._copied)
        self.video = video

    def packet(self, packet: Any) -> None:
        """Mux a copied stream's ``packet`` unchanged."""
        if self.video is None:
            self._waiting.append(packet)
            return
        packet.stream = self._streams[packet.stream.index]
        self.container.mux(packet)

    def frame(self, color: np.ndarray, pts: int, rotation: int = 0, duration: int | None = None) -> None:
        """Encode one restored frame (H x W x 3 RGB, uint8 or uint16) shown at ``pts`` for ``duration`` (where known), both in
        the input's time base."""
        if self.video is None:
            self._open(color.shape[1], color.shape[0], rotation)
            waiting, self._waiting = self._waiting, []
            for held in waiting:
                self.packet(held)
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(color),
                                                format="rgb48le" if color.dtype == np.uint16 else "rgb24")
        colour = self.facts.colour
        frame = frame.reformat(format=self.choice.pix_fmt,
                               dst_colorspace=colour.matrix if colour.matrix != UNSPECIFIED else None,
                               dst_color_range=colour.range or None)
        frame.pts, frame.time_base = pts, self.facts.time_base
        if duration:
            self._durations[pts] = duration  # the last frame's, which no later timestamp tells, is kept so
        self._mux(self.video.encode(frame))
        self.frames += 1
        self.last_pts = pts

    def close(self) -> None:
        """Flush the encoder and finish the file (its index, trailer)."""
        if self.video is not None:
            self._mux(self.video.encode(None))
        self.container.close()

    def abort(self) -> None:
        """Give the output up (the caller removes the file)."""
        try:
            self.container.close()
        except Exception:
            pass  # a half-written file is thrown away whatever its state

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            duration = self._durations.pop(packet.pts, None) if packet.pts is not None else None
            if duration:
                packet.duration = duration  # the encoder gives the average frame's (libx264)
            if self._on_packet is not None:
                self._on_packet(packet)
            self.container.mux(packet)


def add_container_extras(container: Any, name: str, metadata: dict[str, str], chapters: list[dict[str, Any]],
                         copied: list[Any]) -> dict[int, Any]:
    """Give the output ``container`` the input's ``metadata`` (less the tags its muxer writes for itself), its
    ``chapters`` and a stream for each ``copied`` input stream, as it is; returns input stream index -> output
    stream. Raises ``VideoEncodeError`` (naming ``name``) for a stream the container cannot hold."""
    av = load_av(name)
    container.metadata.update({k: v for k, v in metadata.items() if k.lower() not in _MUXER_TAGS})
    if chapters:
        container.set_chapters(chapters)
    streams = {}
    for stream in copied:
        try:
            streams[stream.index] = container.add_stream_from_template(stream, opaque=True)  # as join_segments
        except (av.FFmpegError, ValueError) as exc:
            raise VideoEncodeError(f"{name}: its {stream.type} stream {stream.index} ({stream.codec_context.name}) "
                                   f"cannot be copied into {container.format.name} ({exc}); restore it with "
                                   "--no-audio") from None
    return streams


def _describe_colour(context: Any, colour: Colour) -> None:
    """The input's colour description on the encoder, so the stream (and the container, where it holds one) says
    the same primaries, transfer, matrix and range."""
    if colour.primaries != UNSPECIFIED:
        context.color_primaries = colour.primaries
    if colour.transfer != UNSPECIFIED:
        context.color_trc = colour.transfer
    if colour.matrix != UNSPECIFIED:
        context.colorspace = colour.matrix
    if colour.range:
        context.color_range = colour.range


__all__ = ["CodecChoice", "VideoOutput", "add_container_extras", "check_frame_size", "choose_codec", "sample_bits"]
