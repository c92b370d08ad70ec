"""Face restoration on an upscaled image: detect on the input, align from the output, restore in batched network
calls (every face of an image in one, where memory holds them), paste the change back. Arrays in, arrays out;
timings per stage for the benchmark.

The faces are found on the input, before the output exists, so the output rows they read and change are known in
advance (``FacePlan``): an output written a strip of rows at a time (``FaceRows``) holds only those rows, from the
first face's top to the last face's bottom, and the whole-array path works on the same rows the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch

from ..device import run_in_batches
from .align import FACE_SIZE, alignment, crop_face, square_corners
from .detector import AnchorConfig, Face, FaceDetector
from .parsing import FaceParser
from .paste import paste_face


@dataclass(frozen=True)
class FaceOptions:
    weight: float = 1.0  # share of the restorer's change applied: 0 leaves faces as upscaled, 1 applies it fully
    only_center: bool = False
    max_faces: int | None = None
    min_size: float = 0.0  # smallest face kept, in input pixels (shorter side of its box)
    threshold: float = 0.9
    fidelity: float = 0.5  # CodeFormer's w: 0 favours quality, 1 the input's identity; other networks have none


@dataclass
class FaceReport:
    faces: list[Face] = field(default_factory=list)
    aligned: list[np.ndarray] = field(default_factory=list)  # what the restorer saw (512 x 512 x 3, [0, 1])
    restored: list[np.ndarray] = field(default_factory=list)  # what it returned
    seconds: dict[str, float] = field(default_factory=dict)  # detection, alignment, restoration, paste


# What restoring one 512 x 512 face takes, in fp32, above the weights on the CPU: measured 720 MiB for GFPGAN v1.4,
# 721 MiB for RestoreFormer and 705 MiB for CodeFormer
_RESTORE_BYTES_FP32 = 768 << 20


# Networks with a fidelity knob, by spandrel's architecture id, and the keyword their forward takes it as. spandrel's
# own wrapper for CodeFormer calls it with its default (0.5) whatever is wanted, so the network is called directly.
FIDELITY_KEYWORDS = {"CodeFormer": "weight"}


class FaceRestorer:
    """A face restoration network (GFPGAN, CodeFormer, RestoreFormer, ...) loaded through spandrel."""

    def __init__(self, descriptor, device: torch.device):
        self.descriptor = descriptor.to(device).eval()
        self.device = device
        self.fidelity_keyword = FIDELITY_KEYWORDS.get(descriptor.architecture.id) \
            if hasattr(descriptor, "architecture") else None

    @property
    def has_fidelity(self) -> bool:
        """Whether the network takes a fidelity weight (``--face-fidelity``)."""
        return self.fidelity_keyword is not None

    def __call__(self, crops: np.ndarray, fidelity: float = 0.5) -> np.ndarray:
        """N x 512 x 512 x 3 float in [0, 1] -> the same, restored: all N in one network call where memory holds
        them (a GPU with room), else as many a call as it does (on the CPU, where batches run no faster, one).
        ``fidelity`` (0 to 1) goes to networks that take one (CodeFormer's ``w``); the others have none."""
        dtype = next(self.descriptor.model.parameters()).dtype
        per_face = _RESTORE_BYTES_FP32 * torch.tensor([], dtype=dtype).element_size() // 4
        return run_in_batches(lambda batch: self._restore(batch, fidelity), crops, per_face, self.device)

    @torch.inference_mode()
    def _restore(self, crops: np.ndarray, fidelity: float = 0.5) -> np.ndarray:
        """One network call. The face networks were trained on inputs scaled to [-1, 1], and answer in it."""
        model = self.descriptor.model
        dtype = next(model.parameters()).dtype
        x = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).to(self.device, dtype) * 2 - 1
        out = model(x, **{self.fidelity_keyword: float(fidelity)}) if self.fidelity_keyword else model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return ((out.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def select_faces(faces: list[Face], width: int, height: int, options: FaceOptions) -> list[Face]:
    """Apply --min-face-size, --only-center-face and --max-faces to detections (best first)."""
    kept = [f for f in faces if f.size >= options.min_size]
    if options.only_center and kept:
        centre = np.array([width / 2, height / 2])
        kept = [min(kept, key=lambda f: float(np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre)))]
    if options.max_faces is not None:
        kept = kept[: options.max_faces]
    return kept


@dataclass(frozen=True)
class FacePlan:
    """The faces of an input placed on its output, ``height`` rows tall: their alignment matrices (output ->
    aligned face) and the output rows ``top`` to ``bottom`` that restoring them reads and changes."""

    faces: list[Face]
    matrices: list[np.ndarray]
    height: int
    top: int = 0
    bottom: int = 0
    detection_seconds: float = 0.0
    options: FaceOptions = field(default_factory=lambda: FaceOptions())  # how its faces are chosen and pasted


def _rows_read(matrix: np.ndarray, height: int) -> tuple[int, int]:
    """Output rows that cropping and pasting the face ``matrix`` aligns touch: the aligned square's, with the
    bicubic sampler's reach, and the rows the crop's mirrored border brings in where the square leaves the image."""
    ys = square_corners(matrix, FACE_SIZE)[:, 1]
    top, bottom = int(np.floor(ys.min())) - 4, int(np.ceil(ys.max())) + 4
    if top < 0:
        bottom = max(bottom, -top + 1)  # row -y reads row y
    if bottom > height:
        top = min(top, 2 * (height - 1) - bottom)  # row h - 1 + d reads row h - 1 - d
    return max(top, 0), min(bottom, height)


def plan_faces(source: np.ndarray, width: int, height: int, detector: FaceDetector,
               options: FaceOptions) -> FacePlan:
    """Find the faces of ``source`` (the input, H x W x 1 or 3) and place them on its ``width`` x ``height``
    output."""
    t0 = time.perf_counter()
    rgb = source if source.shape[2] == 3 else np.repeat(source, 3, axis=2)
    rows, cols = source.shape[:2]
    faces = select_faces(detector.detect(rgb, threshold=options.threshold), cols, rows, options)
    scale = np.array([width / cols, height / rows])
    matrices = [alignment(face.landmarks * scale, FACE_SIZE) for face in faces]
    spans = [_rows_read(matrix, height) for matrix in matrices]
    top = min((a for a, _ in spans), default=0)
    bottom = max((b for _, b in spans), default=0)
    return FacePlan(faces, matrices, height, top, bottom, time.perf_counter() - t0, options)


def restore_planned_faces(band: np.ndarray, plan: FacePlan, restorer, options: FaceOptions,
                          parser: FaceParser | None = None) -> FaceReport:
    """Restore the faces of ``plan`` in ``band``, the output's rows ``plan.top`` to ``plan.bottom`` (colour planes,
    changed in place). ``restorer`` maps N x 512 x 512 x 3 crops to restored crops (``FaceRestorer``); with a ``parser``
    the paste-back mask follows the parsed face instead of the feathered square."""
    report = FaceReport(faces=list(plan.faces), seconds={"detection": plan.detection_seconds})
    if not plan.faces:
        return report
    t1 = time.perf_counter()
    pixels = np.ascontiguousarray(band)  # the sampler needs whole rows of these planes
    crops = []
    for matrix in plan.matrices:
        shifted = matrix.copy()
        shifted[:, 2] += matrix[:, 1] * plan.top  # band row r is output row top + r
        crops.append(crop_face(pixels, shifted, FACE_SIZE))
    del pixels
    t2 = time.perf_counter()
    restored = restorer(np.stack(crops))
    t3 = time.perf_counter()
    masks = parser.masks(restored) if parser is not None else [None] * len(restored)
    for matrix, crop, face, mask in zip(plan.matrices, crops, restored, masks):
        paste_face(band, face, crop, matrix, weight=options.weight, mask=mask, top=plan.top, height=plan.height)
    t4 = time.perf_counter()
    report.aligned, report.restored = crops, list(restored)
    report.seconds.update(alignment=t2 - t1, restoration=t3 - t2, paste=t4 - t3)
    return report


def enhance_faces(canvas: np.ndarray, source: np.ndarray, detector: FaceDetector, restorer,
                  options: FaceOptions, parser: FaceParser | None = None) -> FaceReport:
    """Restore the faces of ``source`` (the input, H x W x 1 or 3) inside ``canvas`` (its upscaled version,
    changed in place)."""
    plan = plan_faces(source, canvas.shape[1], canvas.shape[0], detector, options)
    return restore_planned_faces(canvas[plan.top : plan.bottom], plan, restorer, options, parser)


class FaceRows:
    """A row sink (see ``engine.tiling.RowSink``) that restores the faces of ``plan`` on the way to ``sink``:
    rows above and below the faces pass straight through; the rows between the first face's top and the last
    face's bottom are held until the last of them has come, then ``restore(band)`` changes them in place (every face
    restored at once, memory allowing) and they go on. Only the first ``color_planes`` planes are handed to
    ``restore``; an alpha plane after them passes unchanged. What ``restore`` returns is kept in ``reports``, one
    for each pass over the image (an out-of-memory retry of the tiles makes another)."""

    def __init__(self, sink, plan: FacePlan, color_planes: int, restore: Callable[[np.ndarray], object]):
        self.sink, self.plan, self.color_planes, self.restore = sink, plan, color_planes, restore
        self.reports: list = []
        self._received = 0
        self._band: np.ndarray | None = None

    def write(self, rows: np.ndarray) -> None:
        if rows.ndim == 2:
            rows = rows[:, :, None]
        start, end = self._received, self._received + len(rows)
        self._received = end
        top, bottom = self.plan.top, self.plan.bottom
        if start < top:
            self._pass(rows[: min(end, top) - start])
        first, last = max(start, top), min(end, bottom)  # the rows of this strip that the faces span
        if first < last:
            if self._band is None:
                self._band = np.empty((bottom - top, *rows.shape[1:]), rows.dtype)
            self._band[first - top : last - top] = rows[first - start : last - start]
            if end >= bottom:
                self.reports.append(self.restore(self._band[:, :, : self.color_planes]))
                self._pass(self._band)
                self._band = None
        if end > max(start, bottom):
            self._pass(rows[max(start, bottom) - start :])

    def _pass(self, rows: np.ndarray) -> None:
        if len(rows):
            self.sink.write(rows)

    def restart(self) -> None:
        self._received = 0
        self._band = None
        self.sink.restart()


@dataclass
class FaceStage:
    """The face stage of a restore, built once with its loaded networks (the detector, the restorer and, when its
    weights are installed, ParseNet): asked once per image for a plan (the faces found on the input, placed on the
    output), then handed the output rows that plan's faces span (``rows``), or the whole output (``enhance``). It
    restores, pastes and reports the crops itself."""

    detector: FaceDetector
    restorer: FaceRestorer
    parser: FaceParser | None = None
    name: str = ""  # the face model's name, for the summary's account of what ran

    @classmethod
    def from_weights(cls, weights, device: torch.device) -> "FaceStage":
        """The networks on ``device`` from ``weights`` (``models.loading.FaceWeights``: read and checked there)."""
        anchors = AnchorConfig.from_mapping(weights.anchors, f"{weights.detector_source} anchors")
        detector = FaceDetector.from_state_dict(weights.detector, anchors, device, source=weights.detector_source)
        parser = None
        if weights.parser is not None:
            parser = FaceParser.from_state_dict(weights.parser, device, source=weights.parser_source)
        return cls(detector, FaceRestorer(weights.restorer, device), parser, weights.restorer_name)

    def plan(self, source: np.ndarray, size: tuple[int, int], options: FaceOptions) -> FacePlan:
        """The faces of ``source`` (the input) placed on its output of ``size`` (w, h)."""
        return plan_faces(source, *size, self.detector, options)

    def restore(self, band: np.ndarray, plan: FacePlan) -> FaceReport:
        """Restore and paste ``plan``'s faces into ``band``, the output's rows ``plan.top`` to ``plan.bottom``."""
        restorer = partial(self.restorer, fidelity=plan.options.fidelity) if self.restorer.has_fidelity \
            else self.restorer
        return restore_planned_faces(band, plan, restorer, plan.options, self.parser)

    def rows(self, sink, plan: FacePlan, color_planes: int) -> FaceRows:
        """A row sink that restores ``plan``'s faces on the way to ``sink``; its ``reports`` say what it did."""
        return FaceRows(sink, plan, color_planes, lambda band: self.restore(band, plan))

    def enhance(self, canvas: np.ndarray, source: np.ndarray, options: FaceOptions) -> FaceReport:
        """Restore the faces of ``source`` inside ``canvas``, its whole upscaled output (changed in place)."""
        plan = self.plan(source, (canvas.shape[1], canvas.shape[0]), options)
        return self.restore(canvas[plan.top : plan.bottom], plan)

