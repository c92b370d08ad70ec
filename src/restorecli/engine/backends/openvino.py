"""The OpenVINO back-end: a spandrel (torch) network converted once to OpenVINO's model format and run by the
``openvino`` package: on the CPU in fp32, or bf16 where OpenVINO lists BF16 among the CPU's
OPTIMIZATION_CAPABILITIES (AVX-512 BF16, AMX), and on the Intel GPUs and NPUs it lists (``--device openvino:GPU``,
``openvino:GPU.1``, ``openvino:NPU``; ``openvino`` or ``openvino:CPU`` is the CPU), in fp16 first there.

The conversion is ``openvino.convert_model`` on the torch module itself (OpenVINO's PyTorch front end traces it on
one example window), with the input declared N x C x ? x ? so that any batch of any tile size runs. Not through
ONNX, as issue 31 first planned: torch 2.14's ONNX exporter needs the onnx and onnxscript packages, which nothing
else here needs, while the PyTorch front end reads the same graph offline with nothing more (tried on x4plus: within
3e-6 of torch in fp32). The converted model holds fp32 weights, converted from the weights as loaded (under
``auto`` before torch's copy is placed in bf16: ``prepare``), and is saved in the user cache
(``openvino/<sha256 of the weights>-fp32-openvino-<version>.xml`` and ``.bin``), so a model converts once per
machine and OpenVINO release (x4plus: about 26 s on 2 cores); the precision is a compile-time hint (INFERENCE_PRECISION_HINT),
so one file serves fp32 and bf16. Each (model, OpenVINO version, device, precision) is checked once against torch
fp32 on a random window: at most ``F32_TOLERANCE`` max abs in fp32, within the precision probe's ``MIN_PSNR`` in a
reduced precision; the verdict is recorded beside the precision verdicts, and a model that fails the conversion or
the check raises ``OpenVinoUnfit`` saying why (``choice`` then keeps it on torch). Compiled models are kept per
process.

``openvino`` is imported only when a back-end is made or its devices are listed, and without its usage statistics
(``_openvino``).
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...errors import DeviceMissing, DeviceUnavailable, UsageError
from ...files import user_cache
from ..device import cpu_model
from ..model import LoadedModel
from ...progress import Step
from ..precision import MIN_PSNR, _psnr, _short, parameter_millions, recall, remember
from .base import Capabilities

INSTALL = "pip install 'restorecli[openvino]'"
F32_TOLERANCE = 1e-4  # max abs difference from torch in fp32, as the ncnn import is held to
CHECK_SIDE = 40  # the random window the conversion is checked on: a few tenths of a second of x4plus
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # --precision -> INFERENCE_PRECISION_HINT
_COMPILED: dict[tuple[str, str, str], object] = {}  # (model file, device, precision) -> compiled model, per process


class OpenVinoUnfit(DeviceUnavailable):
    """OpenVINO cannot run this model here: its conversion failed, or its result is too far from torch's."""


def available() -> bool:
    """Whether the openvino package is installed (found without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def version() -> str | None:
    """The installed openvino package's version (None: not installed)."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


TELEMETRY = "openvino_telemetry"


def _openvino():
    """The ``openvino`` module, imported with its converter's usage statistics left out. Its converter
    (``convert_model``) sends each conversion to Google Analytics unless the user declined with OpenVINO's own
    opt-in script, and sends it from a process it forks off a worker thread: restorecli would report its users'
    conversions without asking, and the fork copies a process whose other threads hold locks (FFmpeg's, decoding a
    video), so the forked copy can hang for good, and the interpreter, which waits for it at exit, with it. Where the
    ``openvino_telemetry`` package cannot be imported, OpenVINO's converter uses its own stub that sends nothing; it
    is marked so here unless something in the process imported it first."""
    sys.modules.setdefault(TELEMETRY, None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError:
        raise UsageError(f"the OpenVINO back-end needs the openvino package: {INSTALL}") from None
    return openvino


@functools.cache
def _core():
    return _openvino().Core()


@functools.cache
def openvino_devices() -> tuple[str, ...]:
    """The devices OpenVINO finds here ("CPU", "GPU.0", "NPU"), none where it is not installed."""
    return tuple(_core().available_devices) if available() else ()


def device_name(device: str) -> str:
    """What OpenVINO calls ``device`` ("CPU", "GPU.0"): its FULL_DEVICE_NAME."""
    return str(_core().get_property(device, "FULL_DEVICE_NAME"))


def parse_openvino(spec: str) -> str | None:
    """The OpenVINO device ``--device openvino[:DEVICE]`` names ("CPU" for plain ``openvino``), else None."""
    head, _, device = spec.strip().partition(":")
    if head.lower() != "openvino":
        return None
    return device.upper() or "CPU"


def openvino_device(label: str) -> str:
    """OpenVINO's name for a candidate's device: ``cpu`` -> "CPU", ``openvino:GPU.0`` -> "GPU.0"; one it does not
    list is ``DeviceMissing``, saying what it found."""
    device = parse_openvino(label) or "CPU"
    found = openvino_devices()
    if device not in found and not (device == "GPU" and "GPU.0" in found):
        raise DeviceMissing(f"--device openvino:{device}: OpenVINO finds no such device here; found: "
                            f"{', '.join(found) or 'none'}")
    return device


def precisions_for(device: str) -> tuple[str, ...]:
    """What OpenVINO runs on ``device`` (its own name), the first being what ``--precision auto`` asks of it: fp32
    on the CPU, and bf16 too where the CPU has it; fp16, then fp32, on a GPU or NPU."""
    if device.startswith("CPU"):
        capabilities = _core().get_property(device, "OPTIMIZATION_CAPABILITIES")
        return ("fp32", "bf16") if "BF16" in capabilities else ("fp32",)
    return ("fp16", "fp32")


def converted_path(model_hash: str) -> Path:
    """Where the model whose weights hash to ``model_hash`` is kept in OpenVINO's form (the .xml; .bin beside),
    converted from its fp32 weights. Earlier versions' files (``<hash>-openvino-<version>.xml``) may hold weights
    rounded to bf16 (converted after ``auto`` had placed the model in bf16) and are not read."""
    return user_cache("openvino", f"{model_hash}-fp32-openvino-{version()}.xml")


def _stale(model_hash: str) -> list[Path]:
    """Earlier versions' conversions of the model whose weights hash to ``model_hash`` (see ``converted_path``)."""
    return sorted(converted_path(model_hash).parent.glob(f"{model_hash}-openvino-*"))  # .xml and .bin


def window_side(model: LoadedModel, side: int) -> int:
    """``side``, raised to the model's minimum input size and rounded up to its multiple."""
    side = max(side, model.spec.minimum_size)
    return side + -side % model.spec.multiple_of


def convert(module: torch.nn.Module, channels: int, target: Path, side: int = 32) -> None:
    """Convert the fp32 ``module`` (``channels`` in, traced on a ``side`` x ``side`` window) and save it at
    ``target`` (.xml and .bin), atomically: the .xml, written last, exists only beside its whole .bin."""
    ov = _openvino()
    with torch.no_grad(), warnings.catch_warnings():
        # torch calls the tracing OpenVINO's front end does deprecated: nothing a user can act on, and printed
        # across the live progress bar of the run whose first probe converts
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecated", category=FutureWarning)
        graph = ov.convert_model(module, example_input=torch.rand(1, channels, side, side),
                                 input=[ov.PartialShape([-1, channels, -1, -1])])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".converting-") as scratch:
        ov.save_model(graph, str(Path(scratch) / "model.xml"), compress_to_fp16=False)
        os.replace(Path(scratch) / "model.bin", target.with_suffix(".bin"))
        os.replace(Path(scratch) / "model.xml", target)


def _verdict_key(model_hash: str, device: str, precision: str) -> str:
    where = f"cpu: {cpu_model()}" if device.startswith("CPU") else f"{device}: {device_name(device)}"
    return f"openvino | {model_hash} | {where} | openvino {version()} | {precision} | from fp32 weights"


def _fp32_module(model: LoadedModel, exact: bool = True) -> torch.nn.Module:
    """A copy of the model's network in fp32 on the CPU (the loaded one may be on a GPU). Where its weights are in a
    reduced precision (``auto`` placed it in bf16), an fp32 copy would only hold them rounded: that raises, unless
    the caller needs no ``exact`` fp32 (the check of a reduced precision, held to ``MIN_PSNR``)."""
    reduced = {str(p.dtype) for p in model.module.parameters() if p.dtype != torch.float32}
    if exact and reduced:
        raise OpenVinoUnfit(f"{model.spec.name}'s weights are {', '.join(sorted(reduced))} here: OpenVINO converts and "
                            "checks in fp32 only from fp32 weights (prepare converts it before they are placed)")
    return copy.deepcopy(model.module).float().cpu().eval()


def _check(compiled, model: LoadedModel, precision: str) -> str | None:
    """Why OpenVINO's result on a random window is too far from torch fp32's (None: it is close enough)."""
    side = window_side(model, CHECK_SIDE)
    window = torch.rand(1, model.spec.input_channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _fp32_module(model, exact=precision == "fp32")(window).clamp(0, 1).numpy()
    got = np.clip(compiled(window.numpy())[0], 0, 1)
    if got.shape != expected.shape:
        return f"OpenVINO's output is {got.shape}, torch's {expected.shape}"
    if precision == "fp32":
        worst = float(np.abs(got - expected).max())
        return None if worst <= F32_TOLERANCE else f"{worst:.2g} max abs from torch in fp32 (at most {F32_TOLERANCE})"
    db = _psnr(expected, got)
    return None if db >= MIN_PSNR else f"{db:.1f} dB from torch in {precision} (at least {MIN_PSNR:.0f} dB needed)"


def _compile(model: LoadedModel, model_hash: str, device: str, precision: str):
    """The compiled model, converted (once per machine) and checked (once per machine, device and precision)."""
    path, key = converted_path(model_hash), _verdict_key(model_hash, device, precision)
    verdict = recall(key)
    if isinstance(verdict, dict) and verdict.get("error"):
        raise OpenVinoUnfit(f"OpenVINO cannot run {model.spec.name} in {precision}: {verdict['error']}")
    try:
        if not path.is_file():
            with Step(f"converting {model.spec.name} to OpenVINO (first run only: the result is cached for later "
                      "runs)", kind="openvino conversion", size=parameter_millions(model)) as step:
                convert(_fp32_module(model), model.spec.input_channels, path, window_side(model, 32))
                step.found = f"converted {model.spec.name} to OpenVINO, cached in {path.parent}"
            for old in _stale(model_hash):
                old.unlink(missing_ok=True)
        config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        compiled = _core().compile_model(_core().read_model(str(path)), device, config)
        problem = _check(compiled, model, precision) if verdict is None else None
    except Exception as exc:  # noqa: BLE001 - whatever the converter or the plug-in raises is the verdict
        compiled, problem = None, _short(exc)
    if verdict is None:
        remember(key, {"ok": problem is None, "error": problem})
    if problem is not None:
        raise OpenVinoUnfit(f"OpenVINO cannot run {model.spec.name} in {precision}: {problem}")
    return compiled


def model_status(model_hash: str) -> str:
    """How the model whose weights hash to ``model_hash`` stands with OpenVINO on the CPU, for ``restorecli models
    --verbose`` (the package installed): each precision whose conversion or check against torch failed, and why
    (the model stays on torch in it), else converted and checked, or not converted or checked yet. Nothing is
    converted here."""
    passed, failed = [], []
    for precision in precisions_for("CPU"):
        verdict = recall(_verdict_key(model_hash, "CPU", precision))
        if isinstance(verdict, dict) and verdict.get("error"):
            failed.append(f"stays on torch in {precision}: {verdict['error']}")
        elif isinstance(verdict, dict):
            passed.append(precision)
    path = converted_path(model_hash)
    if failed or not path.is_file():
        return "; ".join(failed or ["not converted yet: its first run on OpenVINO (--backend openvino, or auto's "
                                    "probe) converts it"])
    checked = (f"runs in {', '.join(passed)} (checked against torch)" if passed
               else "not checked against torch yet (its first run checks it)")
    return f"converted ({path}), {checked}"


def prepare(model: LoadedModel, model_hash: str) -> None:
    """Convert ``model`` (its weights hashing to ``model_hash``) and check it in fp32 on the CPU, where that was not
    done on this machine yet: called while its weights are fp32 as loaded, before ``auto`` places it in a reduced
    precision, after which neither could be done exactly (``_fp32_module``). A model OpenVINO cannot run is
    recorded so, and ``OpenVinoBackend`` says why when asked for it."""
    if converted_path(model_hash).is_file() and recall(_verdict_key(model_hash, "CPU", "fp32")) is not None:
        return
    try:
        compiled_model(model, model_hash, "CPU", "fp32")
    except OpenVinoUnfit:
        pass  # recorded: the choice of back-end reads it


def compiled_model(model: LoadedModel, model_hash: str, device: str, precision: str):
    """``model`` (its weights hashing to ``model_hash``) compiled by OpenVINO for ``device`` (its own name) in
    ``precision``: kept per process, converted and checked once per machine. ``OpenVinoUnfit`` where it cannot."""
    key = (model_hash, device, precision)
    if key not in _COMPILED:
        _COMPILED[key] = _compile(model, model_hash, device, precision)
    return _COMPILED[key]


def release(model_hash: Callable[[], str], keep: tuple[str, str] | None = None) -> None:
    """Forget this process's compiled copies of the model whose weights hash to ``model_hash()`` but the one for
    ``keep`` (OpenVINO device, precision; None: every copy): those ``auto``'s probe and ``prepare`` compiled for
    the candidates it did not choose, each holding the model's weights and buffers for the process's life. A
    back-end built from a forgotten copy keeps it; a later one compiles it again (the conversion stays cached)."""
    if not _COMPILED:
        return  # nothing compiled: the weights need not be hashed
    digest = model_hash()
    for key in [key for key in _COMPILED if key[0] == digest and key[1:] != keep]:
        del _COMPILED[key]


class OpenVinoBackend:
    """A compiled OpenVINO model, run a batch of windows per call (the input's batch size is dynamic). Windows come
    and go as float32 CPU tensors, the tiler's host arrays."""

    def __init__(self, model: LoadedModel, model_hash: str, *, device: str = "cpu", precision: str = "fp32"):
        self.label, self.device = device, openvino_device(device)
        allowed = precisions_for(self.device)
        if precision not in allowed:
            raise DeviceUnavailable(f"the OpenVINO back-end runs {', '.join(allowed)} on {self.device}, "
                                    f"not --precision {precision}")
        self.precision = precision
        self._request = compiled_model(model, model_hash, self.device, precision).create_infer_request()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("openvino", self.label, precisions_for(self.device))

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        data = np.ascontiguousarray(batch.to(torch.float32).cpu().numpy())  # N x C x h x w
        self._request.infer({0: data}, share_inputs=True)  # OpenVINO reads the array in place: no copy
        output = self._request.get_output_tensor(0).data  # the request's own buffer, reused by its next call
        # clamped as spandrel's torch models clamp their output, in one pass into an array of our own; in numpy,
        # on this thread: a torch op here runs on torch's OpenMP threads, which then compete for the cores with
        # the threads OpenVINO's next call runs on (measured: issue 31)
        return torch.from_numpy(np.clip(output, 0, 1))
