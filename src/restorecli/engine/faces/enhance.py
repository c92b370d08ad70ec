"""Face restoration on an upscaled image: detect on the input, align from the output, restore in one batched
network call, paste the change back. Arrays in, arrays out; timings per stage for the benchmark."""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import torch

from .align import FACE_SIZE, alignment, crop_face
from .detector import Face, FaceDetector
from .parsing import FaceParser
from .paste import paste_face


@dataclass(frozen=True)
class FaceOptions:
    weight: float = 1.0  # share of the restorer's change applied: 0 leaves faces as upscaled, 1 applies it fully
    only_center: bool = False
    max_faces: int | None = None
    min_size: float = 0.0  # smallest face kept, in input pixels (shorter side of its box)
    threshold: float = 0.9


@dataclass
class FaceReport:
    faces: list[Face] = field(default_factory=list)
    aligned: list[np.ndarray] = field(default_factory=list)  # what the restorer saw (512 x 512 x 3, [0, 1])
    restored: list[np.ndarray] = field(default_factory=list)  # what it returned
    seconds: dict[str, float] = field(default_factory=dict)  # detection, alignment, restoration, paste


class FaceRestorer:
    """A face restoration network (GFPGAN, RestoreFormer++, ...) loaded through spandrel."""

    def __init__(self, descriptor, device: torch.device):
        self.descriptor = descriptor.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """N x 512 x 512 x 3 float in [0, 1] -> the same, restored, in one network call.
        The face networks were trained on inputs scaled to [-1, 1]."""
        model = self.descriptor.model
        dtype = next(model.parameters()).dtype
        x = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).to(self.device, dtype) * 2 - 1
        out = model(x)
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


def enhance_faces(canvas: np.ndarray, source: np.ndarray, detector: FaceDetector, restorer,
                  options: FaceOptions, parser: FaceParser | None = None) -> FaceReport:
    """Restore the faces of ``source`` (the input, H x W x 1 or 3) inside ``canvas`` (its upscaled version,
    changed in place). ``restorer`` maps N x 512 x 512 x 3 crops to restored crops; with a ``parser`` the
    paste-back mask follows the parsed face instead of the feathered square."""
    report = FaceReport()
    t0 = time.perf_counter()
    rgb = source if source.shape[2] == 3 else np.repeat(source, 3, axis=2)
    height, width = source.shape[:2]
    faces = select_faces(detector.detect(rgb, threshold=options.threshold), width, height, options)
    report.faces = faces
    t1 = time.perf_counter()
    report.seconds["detection"] = t1 - t0
    if not faces:
        return report
    scale = np.array([canvas.shape[1] / width, canvas.shape[0] / height])
    matrices = [alignment(face.landmarks * scale, FACE_SIZE) for face in faces]
    crops = np.stack([crop_face(canvas, m, FACE_SIZE) for m in matrices])
    t2 = time.perf_counter()
    restored = restorer(crops)
    t3 = time.perf_counter()
    masks = parser.masks(restored) if parser is not None else [None] * len(restored)
    for matrix, crop, face, mask in zip(matrices, crops, restored, masks):
        paste_face(canvas, face, crop, matrix, weight=options.weight, mask=mask)
    t4 = time.perf_counter()
    report.aligned, report.restored = list(crops), list(restored)
    report.seconds.update(alignment=t2 - t1, restoration=t3 - t2, paste=t4 - t3)
    return report


@dataclass
class FaceStack:
    """The loaded detector and restorer for ``--face-enhance``."""

    detector: FaceDetector
    restorer: FaceRestorer
    parser: FaceParser | None = None  # ParseNet, when its weights are installed

    @classmethod
    def load(cls, face_model: str, face_detector: str, directory, device: torch.device) -> "FaceStack":
        """Load both networks, or raise ``WeightsNotFound``/``UnsupportedModel`` saying what to fetch."""
        import spandrel

        from ...errors import UnsupportedModel, WeightsNotFound
        from ...models.loading import read_state_dict, resolve_model_path
        from ...models.registry import REGISTRY
        from .detector import AnchorConfig

        paths: dict[str, Path] = {}
        missing = []
        for name, kind in ((face_model, "face"), (face_detector, "detector")):
            try:
                paths[kind] = resolve_model_path(name, directory, kind)[1]
            except WeightsNotFound:
                if name not in REGISTRY:
                    raise
                missing.append(name)
        if missing:
            raise WeightsNotFound(f"--face-enhance needs {' and '.join(missing)}, not installed in {directory}.\n"
                                  f"Run: restorecli download-weights {' '.join(missing)} --weights-dir {directory}")
        state, _ = read_state_dict(paths["face"])
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
        except Exception as exc:
            raise UnsupportedModel(f"{paths['face']}: not a face restoration model spandrel recognises ({exc})") \
                from None
        if getattr(descriptor, "purpose", None) != "FaceSR":
            raise UnsupportedModel(f"{paths['face']}: is a {descriptor.architecture.name} model, not a face restorer")
        sidecar = paths["detector"].with_name(paths["detector"].stem + ".anchors.json")
        anchors = AnchorConfig.from_file(sidecar) if sidecar.is_file() else AnchorConfig()
        state, _ = read_state_dict(paths["detector"])
        detector = FaceDetector.from_state_dict(state, anchors, device, source=str(paths["detector"]))
        parser = None
        try:
            parser_path = resolve_model_path("parsenet", directory, "parser")[1]
        except WeightsNotFound:
            parser_path = None  # optional: the feathered mask is used instead
        if parser_path is not None:
            state, _ = read_state_dict(parser_path)
            parser = FaceParser.from_state_dict(state, device, source=str(parser_path))
        return cls(detector, FaceRestorer(descriptor, device), parser)

