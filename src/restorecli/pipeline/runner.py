"""The model-holding runner: ``Restorer`` loads a model (and the face models) once on its device and back-end and
restores image after image, bytes or arrays in, data out (``stages``). It knows nothing of files or folders: where
an image comes from and where its output goes is the caller's (``batch`` for a local run, the Ray actor, the Modal
function). Precision fallbacks (``--precision auto``) and the 16-bit copy of the model are kept here."""

from __future__ import annotations

import functools
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import numpy as np
import torch

from ..engine.backends.choice import (BackendChoice, choose_backend, host_device, may_run_ncnn, prepare_openvino,
                                      realise, runs_torch)
from ..engine.colour import ColourPlan, ColourRows, Colouriser, colourise, wants_colour
from ..engine.device import choose_device, choose_dtype, place_model, precision_name
from ..engine.enhance import EngineOptions, Enhanced, enhance, enhance_rows, streamable, target_size
from ..engine.faces.enhance import FacePlan, FaceReport, FaceStage
from ..engine.precision import Notice, checked, is_precision_error
from ..engine.tiling import TileProgress
from ..errors import ImageError, PrecisionFallback
from ..images import (
    SIXTEEN_BIT_FORMATS,
    STRIP_WRITERS,
    DecodedImage,
    OutputFormat,
    check_output_pixels,
    check_output_size,
    decode_image,
    writes_planes_as_they_are,
)
from ..models.integrity import sha256_of
from ..models.loading import LoadedModel, load_colorizer, load_face_weights, load_model, ncnn_form, weights_dir
from ..options import RestoreOptions, model_chain
from .chain import EarlierModels, load_chain
from .stages import Enhancement, Prepared, Restored, face_options

T = TypeVar("T")


class RowSink(Protocol):
    """Where a streamed output's rows go: an output's strip writer (``overlap.StripOutput``)."""

    def write(self, rows: np.ndarray) -> None: ...

    def restart(self) -> None: ...


class Restorer:
    """Models loaded on their device, ready to restore many images. Reused across a batch or a queue."""

    def __init__(self, model: LoadedModel, engine: EngineOptions, faces: FaceStage | None = None,
                 options: RestoreOptions | None = None,
                 load_16bit: tuple[Callable[[], LoadedModel], torch.dtype] | None = None):
        self.model = model
        self.engine = engine
        self.faces = faces
        self.options = options or RestoreOptions()  # defaults for restore_array
        # 16-bit images run at a higher precision than ``engine`` (auto chose bf16 for 8-bit ones): a loader
        # for that second copy of the model, called on the first 16-bit image, and its dtype.
        self._load_16bit = load_16bit
        self._runner_16bit: tuple[LoadedModel, EngineOptions] | None = None
        self.fallback: str | None = None  # why ``auto`` runs the model in fp32 after all
        self._reload: Callable[[torch.dtype], LoadedModel] | None = None  # the model again, from its file
        self.backend: BackendChoice | None = None  # the back-end ``from_options`` chose, and why
        self.before = EarlierModels()  # a chain's earlier models, each a restorer of its own (``chain``)
        self.colouriser: Colouriser | None = None  # DDColor, with --colorize auto or always

    @classmethod
    def from_options(cls, options: RestoreOptions, notice: Notice | None = None) -> "Restorer":
        """The models of ``options`` loaded, on the back-end, device and precision they resolve to; first-run work
        (a probe, a conversion to ncnn) is said to ``notice`` as it starts."""
        if len(model_chain(options.model)) > 1:
            return load_chain(cls.from_options, options, notice)
        device = choose_device(host_device(options.device, options.backend))  # the tiler's: the CPU for ncnn
        folder = weights_dir(options.weights_dir)
        model = load_model(options.model, folder, notice)
        # the weights file's sha256, read once whichever of the precision probe, pnnx's cache, OpenVINO and auto
        # asks first
        model_hash = functools.cache(lambda: sha256_of(model.spec.path))
        on_torch = runs_torch(options.backend, options.device)  # else torch's precision is not asked for
        dtype = choose_dtype(options.precision if on_torch else "fp32", device, model.spec)
        dtype_16bit = choose_dtype(options.precision if on_torch else "fp32", device, model.spec, depth=16)
        fallback = None
        if options.precision == "auto" and dtype != torch.float32:  # is the reduced precision really usable?
            verdict = checked(model, device, dtype, model_hash(), notice)
            if not verdict.ok:
                fallback = verdict.reason(dtype)
                dtype_16bit = torch.float32 if dtype_16bit == dtype else dtype_16bit
                dtype = torch.float32
        # found (converted) while its weights are fp32 on the CPU, as loaded
        asked = not runs_torch(options.backend, options.device)
        form = (ncnn_form(model, notice, asked, model_hash)
                if may_run_ncnn(options.backend, options.device, device) else None)
        graph, no_graph = (form.graph, form.why_not) if form is not None else (None, None)
        prepare_openvino(options.backend, options.device, device, dtype, model, model_hash)
        place_model(model, device, dtype)
        backend = choose_backend(options.backend, options.device, options.precision, model, device, dtype, graph,
                                 model_hash, no_graph=no_graph, notice=notice)
        backend, model.backend = realise(backend, model, graph, device, model_hash)
        # 16-bit images never get a reduced precision from auto, on a back-end either: torch in fp32 runs them
        reduced_backend = (model.backend is not None and options.precision == "auto"
                           and backend.candidate.precision != "fp32")
        if model.backend is not None:  # ncnn and OpenVINO take float32 windows whatever precision they run in
            dtype = dtype_16bit = torch.float32
            fallback = None
        elif backend.candidate.precision != precision_name(dtype):  # auto measured torch's fp32 faster: its weights
            model = place_model(load_model(options.model, folder), device, torch.float32)  # from the file again
            dtype = dtype_16bit = torch.float32
            fallback = None
        engine = EngineOptions(device=device, dtype=dtype, tile=options.tile, tile_pad=options.tile_pad,
                               alpha=options.alpha)
        faces = None
        if options.face_enhance:
            faces = FaceStage.from_weights(load_face_weights(options.face_model, options.face_detector, folder),
                                           device)
        load_16bit = None
        if dtype_16bit != dtype or reduced_backend:
            load_16bit = (lambda: place_model(load_model(options.model, folder), device, dtype_16bit), dtype_16bit)
        restorer = cls(model, engine, faces, options, load_16bit)
        restorer.backend = backend
        restorer.colouriser = _colouriser(options, folder, device)
        restorer._reload = lambda dtype: place_model(load_model(options.model, folder), device, dtype)
        if fallback:
            restorer._note_fallback(fallback)
        return restorer

    def run_stage(self, color: np.ndarray, alpha: np.ndarray | None, name: str, fmt: OutputFormat | None,
                  on_tile: TileProgress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """This restorer's model alone on the planes of image ``name``, whole in memory at the model's own scale
        (a chain's earlier stage), with its precision fallback; returns the colour and alpha planes."""
        def run() -> tuple[np.ndarray, np.ndarray | None]:
            model, engine = self._runner(color, fmt)
            result = enhance(model, color, alpha, engine, None, on_tile)
            return result.color, result.alpha

        return self._guarded(name, run)

    def output_size(self, size: tuple[int, int], outscale: float | None) -> tuple[int, int]:
        """The (w, h) of the result for an input of ``size`` at the final ``outscale`` (None: each model's own)."""
        return target_size(self.model, *self.before.size(size), self.before.last_outscale(outscale))

    def _note_fallback(self, reason: str) -> None:
        """Say once that the model runs in fp32, and why; the setup (JSON summary, queue results) records it."""
        self.fallback = reason
        warnings.warn(PrecisionFallback(f"{self.model.spec.name} ({self.model.spec.architecture}) runs in fp32: "
                                        f"{reason}"), stacklevel=2)

    def _guarded(self, name: str, run: Callable[[], T]) -> T:
        """``run()``, the restoring of one image. Where it fails for its reduced precision: under ``auto`` the
        model moves to fp32 for this image and the rest (the probe at load missed the case); an explicit
        ``--precision`` stays what was asked, and the failure is this image's error, saying what to do."""
        try:
            return run()
        except Exception as exc:
            if self.engine.dtype == torch.float32 or not is_precision_error(exc):
                raise
            asked, spec = precision_name(self.engine.dtype), self.model.spec
            if self.options.precision != "auto":
                raise ImageError(f"{name}: {spec.architecture} cannot run in {asked} here ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); run it with --precision fp32") from None
            # fp32 weights from the file: rounded to bf16/fp16 and back they are not fp32's
            self.model = (self._reload(torch.float32) if self._reload is not None
                          else place_model(self.model, self.engine.device, torch.float32))
            self.engine = replace(self.engine, dtype=torch.float32)
            self._note_fallback(f"it failed in {asked} on {name}")
            return run()

    def _runner(self, color: np.ndarray, fmt: OutputFormat | None = None) -> tuple[LoadedModel, EngineOptions]:
        """The model and engine options for this image: the 16-bit copy for uint16 planes where there is one,
        unless the output is ``fmt`` that holds 8 bits only (JPEG, WebP), which bf16's steps never reach."""
        model, engine = self.model, self.engine
        keeps_16bit = fmt is None or fmt in SIXTEEN_BIT_FORMATS
        if color.dtype == np.uint16 and keeps_16bit and self._load_16bit is not None:
            if self._runner_16bit is None:
                load, dtype = self._load_16bit
                self._runner_16bit = (load(), replace(self.engine, dtype=dtype))
            model, engine = self._runner_16bit
        return model, engine

    @property
    def setup(self) -> dict[str, str]:
        """What runs: the model's name, the device and the precision ``auto`` resolved to; where 16-bit
        images ran at another precision, that one too (``precision_16bit``, once one has)."""
        setup = {"model": self.model.spec.name, "device": str(self.engine.device),
                 "precision": precision_name(self.engine.dtype), "backend": "torch"}
        if self.faces is not None:
            setup["face_model"] = self.faces.name
        if self.colouriser is not None:
            setup["colorize_model"] = self.colouriser.name
        if self.backend is not None and self.backend.candidate.backend != "torch":
            chosen = self.backend.candidate
            setup.update(backend=chosen.backend, device=chosen.device, precision=chosen.precision)
        if self.backend is not None and (self.backend.reason.startswith("measured") or self.backend.ncnn_note
                                         or self.backend.fell_back):
            setup["backend_reason"] = self.backend.reason
        if self._runner_16bit is not None:
            setup["precision_16bit"] = precision_name(self._runner_16bit[1].dtype)
        if self.fallback:
            setup["precision_fallback"] = self.fallback
        if self.before:
            setup.update(self.before.setup(self))
        return setup

    def restore_array(self, color: np.ndarray, alpha: np.ndarray | None = None,
                      options: RestoreOptions | None = None) -> np.ndarray:
        """Upscale (and restore faces in) an H x W x C array; returns the colour planes. For callers that
        measure rather than write files."""
        color, alpha = self.before.run(color, alpha, "the array", None, None)
        return self._enhance(color, alpha, options or self.options)[0].color

    def _enhance(self, color: np.ndarray, alpha: np.ndarray | None, options: RestoreOptions,
                 on_tile: TileProgress | None = None, fmt: OutputFormat | None = None,
                 faces: FacePlan | None = None,
                 colour: ColourPlan | None = None) -> tuple[Enhanced, FaceReport | None]:
        """The whole result, with its faces restored (from ``faces``, their plan, where it was made ahead) and, with
        a ``colour`` plan, colourised."""
        model, engine = self._runner(color, fmt)
        result = enhance(model, color, alpha, engine, self.before.last_outscale(options.outscale), on_tile)
        report = None
        if self.faces is not None:
            if faces is None:
                report = self.faces.enhance(result.color, color, face_options(options))
            else:
                report = self.faces.restore(result.color[faces.top : faces.bottom], faces)
        if colour is not None:
            result = replace(result, color=colourise(result.color, colour, 0))
        return result, report

    def prepare(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat) -> Prepared:
        """What comes before the model, for an image of ``data`` to be restored as ``fmt``: decoded, its output's
        size checked, its faces found (with ``--face-enhance``), its colour worked out (with ``--colorize``, where
        it applies). Reads no model state that restoring changes, so a batch runs it for the next image on another
        thread."""
        decoded = decode_image(data, name, options.max_pixels)
        size = self.output_size(decoded.size, options.outscale)
        check_output_size(name, fmt, size)
        check_output_pixels(name, size, options.max_output_pixels)
        faces = self.faces.plan(decoded.color, size, face_options(options)) if self.faces is not None else None
        colour = None
        if self.colouriser is not None and wants_colour(options.colorize, decoded.color):
            colour = self.colouriser.plan(decoded.color, size)
        stages = self._stages(faces) + ((f"colorize:{self.colouriser.name}",) if colour is not None else ())
        return Prepared(decoded, size, self._streams(decoded, fmt, colour is not None), faces, stages, colour,
                        None if self.colouriser is None else colour is not None)

    def _stages(self, faces: FacePlan | None) -> tuple[str, ...]:
        """What is done to an image, for its output's processing record: the model, then the face model where
        the image has faces to restore."""
        stages = tuple(f"model:{stage.model.spec.name}" for stage in (*self.before.stages, self))
        return stages + ((f"faces:{self.faces.name}",) if self.faces is not None and faces and faces.faces else ())

    def enhance(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat,
                on_tile: TileProgress | None = None) -> Enhancement:
        """The model's part for an image ``prepare`` made ready: the whole output in memory, its faces restored.
        ``on_tile(done, total)`` follows the tiles of each pass through the model."""
        decoded = prepared.decoded
        color, alpha = self.before.run(decoded.color, decoded.alpha, name, fmt, on_tile)

        def run() -> Enhancement:
            result, report = self._enhance(color, alpha, options, on_tile, fmt, prepared.faces,
                                           prepared.colour)
            return Enhancement(decoded, result, report, prepared.stages, prepared.colorized)

        return self._guarded(name, run)

    def enhance_rows(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat,
                     strips: RowSink, on_tile: TileProgress | None = None) -> FaceReport | None:
        """The model's part for an image whose output streams (``prepared.streams``): its rows go to ``strips`` (an
        output's strip writer) as the tiles finish, resized to ``--outscale`` on the way, so its colour planes are
        never whole in memory (an alpha plane is; with faces, the rows from the first face's top to the last face's
        bottom are held until the faces are restored; colourised, a strip at a time, after them). Returns the last
        pass's face report (its crops)."""
        decoded, plan, planes = prepared.decoded, prepared.faces, prepared.decoded.color.shape[2]

        color, alpha = self.before.run(decoded.color, decoded.alpha, name, fmt, on_tile)

        def run() -> FaceReport | None:
            out = ColourRows(strips, prepared.colour, planes) if prepared.colour is not None else strips
            sink = self.faces.rows(out, plan, planes) if plan is not None and plan.faces else out
            model, engine = self._runner(color, fmt)
            enhance_rows(model, color, engine, sink, on_tile, self.before.last_outscale(options.outscale), alpha)
            return sink.reports[-1] if sink is not out and sink.reports else None

        return self._guarded(name, run)

    def restore_bytes(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat,
                      stem: str | None = None) -> Restored:
        """Decode, enhance (and restore faces in) and encode one image as ``fmt``, all in memory; with
        ``--save-faces`` its crops come back named after ``stem`` (the input's, by default)."""
        done = self.enhance(self.prepare(data, name, options, fmt), name, options, fmt)
        return done.encode(fmt, options, stem or Path(name).stem)

    def _streams(self, decoded: DecodedImage, fmt: OutputFormat, coloured: bool = False) -> bool:
        """Whether the output can be written a strip of rows at a time as the tiles finish (a ``coloured`` one has
        three planes, whatever the input had)."""
        return (fmt in STRIP_WRITERS and (coloured or writes_planes_as_they_are(fmt, decoded.color, decoded.alpha))
                and streamable(self.model, decoded.color))


def _colouriser(options: RestoreOptions, folder: Path, device: torch.device) -> Colouriser | None:
    """DDColor on ``device`` where ``--colorize`` may use it (auto or always), else None."""
    if options.colorize == "never":
        return None
    name, descriptor = load_colorizer(options.colorize_model, folder)
    return Colouriser(descriptor, device, name)


__all__ = ["Restorer", "RowSink"]
