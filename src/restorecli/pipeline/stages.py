"""The stages an image goes through, as data: ``Prepared`` (decoded, sized, its faces found) -> ``Enhancement``
(the model's and the faces' result, whole in memory) -> ``Restored`` (encoded: the output's bytes and the face
crops ``--save-faces`` asks for, as bytes). Nothing here writes a file: where the bytes go is the runtime's
business (``item.write_output`` for a folder, the Ray actor's reply, the Modal volume)."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.colour import ColourPlan
from ..engine.enhance import Enhanced
from ..engine.faces.enhance import FaceOptions, FacePlan, FaceReport
from ..images import DecodedImage, OutputFormat, encode_image, float_to_uint8
from ..options import RestoreOptions

FaceCrops = tuple[tuple[str, bytes], ...]  # --save-faces' files: (name, PNG bytes)


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model (``Restorer.prepare``): decoded, its output's (w, h), whether the output can
    be written a strip at a time, its faces' plan (with ``--face-enhance``) and the stages it goes through, as its
    output's processing record names them (``images.metadata.record_processing``)."""

    decoded: DecodedImage
    size: tuple[int, int]
    streams: bool
    faces: FacePlan | None
    stages: tuple[str, ...] = ()
    colour: ColourPlan | None = None  # DDColor's colour for it, where --colorize colourises it
    colorized: bool | None = None  # whether it is colourised; None: --colorize never

    def metadata(self) -> dict[str, object]:
        """What the writers take for this image's output: the input's metadata, sized to it, and its record."""
        return output_metadata(self.decoded, self.size, self.stages, bool(self.colorized))

    @property
    def planes(self) -> int:
        """The output's planes: its colour planes (three where it is colourised), then alpha where there is one."""
        return (3 if self.colorized else self.decoded.color.shape[2]) + (self.decoded.alpha is not None)


@dataclass(frozen=True)
class Restored:
    """An image restored: the encoded output (None where it went a strip at a time to its file), its sizes, the
    faces found (None without ``--face-enhance``) and the face crops asked for."""

    data: bytes | None
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    faces: int | None
    crops: FaceCrops = ()
    colorized: bool | None = None  # None: --colorize never


@dataclass(frozen=True)
class Enhancement:
    """The model's (and the face stage's) result for one image, not yet encoded: encoding touches no model state,
    so a caller may run ``encode`` on another thread while the model takes the next image."""

    decoded: DecodedImage
    result: Enhanced
    report: FaceReport | None
    stages: tuple[str, ...] = ()  # what was done, for the output's processing record
    colorized: bool | None = None  # None: --colorize never

    @property
    def out_size(self) -> tuple[int, int]:
        return self.result.color.shape[1], self.result.color.shape[0]

    @property
    def nbytes(self) -> int:
        """What the planes hold in memory (a writer's budget counts it)."""
        return self.result.color.nbytes + (self.result.alpha.nbytes if self.result.alpha is not None else 0)

    def encode_output(self, fmt: OutputFormat, options: RestoreOptions) -> bytes:
        """The output file's bytes as ``fmt``, with the input's metadata scaled to the output and the record of
        what was done to it."""
        return encode_image(self.result.color, self.result.alpha, fmt, quality=options.quality,
                            **output_metadata(self.decoded, self.out_size, self.stages, bool(self.colorized)))

    def encode(self, fmt: OutputFormat, options: RestoreOptions, stem: str) -> Restored:
        """The output's bytes and, with ``--save-faces``, its face crops named after ``stem``."""
        crops = face_crops(stem, self.report) if options.save_faces else ()
        return Restored(self.encode_output(fmt, options), self.decoded.size, self.out_size, faces_found(self.report),
                        crops, self.colorized)


def output_metadata(decoded: DecodedImage, size: tuple[int, int], stages: tuple[str, ...],
                    colorized: bool) -> dict[str, object]:
    """The input's metadata for its output of ``size``, with the record of ``stages``; a gray input's ICC profile is
    left out of a colourised output, whose RGB pixels it would describe as gray."""
    metadata = decoded.metadata_for(size, stages)
    if colorized and decoded.color.shape[2] == 1:
        metadata["icc_profile"] = None
    return metadata


def faces_found(report: FaceReport | None) -> int | None:
    return len(report.faces) if report is not None else None


def face_crops(stem: str, report: FaceReport | None) -> FaceCrops:
    """``--save-faces``' files for the faces of ``report``: each aligned crop and its restored one, as PNG bytes."""
    if report is None:
        return ()
    return tuple((f"{stem}_face{index}_{kind}.png", encode_image(float_to_uint8(crop), None, "png"))
                 for index, pair in enumerate(zip(report.aligned, report.restored))
                 for kind, crop in zip(("aligned", "restored"), pair))


def face_options(options: RestoreOptions) -> FaceOptions:
    return FaceOptions(weight=options.face_weight, only_center=options.only_center_face, max_faces=options.max_faces,
                       min_size=options.min_face_size, threshold=options.face_threshold,
                       fidelity=options.face_fidelity)

