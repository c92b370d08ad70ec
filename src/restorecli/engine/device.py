"""Choosing the device, the precision and the memory budget. Nothing here runs at import time."""

from __future__ import annotations

import functools
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from ..errors import DeviceMissing, DeviceUnavailable, SlowPrecision
from ..files import read_record, update_record, user_cache
from ..progress import Step
from .model import LoadedModel, ModelSpec

Precision = Literal["auto", "fp32", "fp16", "bf16"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype) -> str:
    """The ``--precision`` value that means ``dtype`` (fp32, fp16 or bf16)."""
    return next(name for name, value in _DTYPES.items() if value == dtype)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def choose_device(spec: str = "auto") -> torch.device:
    """``auto`` prefers CUDA, then MPS, then the CPU; an explicit device must exist or ``DeviceUnavailable``."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceUnavailable(f"--device '{spec}' is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMissing(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__})")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceMissing(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceMissing(f"--device {spec}: Apple MPS is not available on this machine")
        return device
    raise DeviceUnavailable(f"--device '{spec}' is not supported (use auto, cpu, cuda, cuda:N or mps)")


# bf16 must run at least this much faster than fp32 before ``auto`` trades fp32's pixels for it.
BF16_MIN_SPEEDUP = 1.3


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ('model name', 'flags', ...); empty where there is none."""
    fields: dict[str, str] = {}
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC 9B14'), or the processor architecture where the system does not say."""
    return cpu_info().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def load_per_core() -> float | None:
    """The machine's load average over the last minute per CPU this process may run on (1.0: as many runnable
    tasks as CPUs), or None where the system keeps none (Windows)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return load / max(cpus, 1)


# Load average per CPU above which a speed measured on this machine (the bf16 check, ``--backend auto``'s probe) is
# measured again once the machine is quieter: the measurement's own threads (one per CPU) make up to about 1.0 of
# it, so this is others' work on half the CPUs or more
LOADED = 1.5


def highest_load(*loads: float | None) -> float | None:
    """The highest of ``loads`` known (per CPU, read before and after a measurement), to hundredths: the load a
    measurement is recorded under. None where none is known."""
    return max((round(load, 2) for load in loads if load is not None), default=None)


def busy_then(then: float | None, now: float | None) -> str | None:
    """Why a speed measured under load ``then`` (per CPU) is to be measured again, or None where it stands: it was
    above ``LOADED``, or not recorded (an earlier version's measurement, under a load nobody knows), and the load
    ``now`` is below ``LOADED``. Nothing is measured again where ``now`` is not known (a system without a load
    average, which records none either)."""
    if now is None or now >= LOADED or (then is not None and then <= LOADED):
        return None
    if then is None:
        return f"taken by an earlier version under a load not recorded, {now:.1f} per CPU now"
    return f"taken under load {then:.1f} per CPU, {now:.1f} now"


def _probe_record() -> Path:
    return user_cache("cpu-bf16-speedup.json")


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU runs a small dense block in bf16 than in fp32. Measured once per machine:
    the first process records it in the user cache (``cpu-bf16-speedup.json``, keyed by CPU model, thread
    count and torch version), and later ones read it there, so every run on a machine makes the same choice,
    whatever load it meets (a probe timed beside other work can read either side of the threshold), with the
    load average it was measured under: one measured above ``LOADED`` (or by an earlier version, which recorded no
    load) is measured again by a later run that finds the machine quieter. Delete the file to measure again."""
    if not torch.backends.mkldnn.is_available():
        return 0.0  # no oneDNN: bf16 convolutions fall back to slow reference kernels
    record = _probe_record()
    key = f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    known, now = read_record(record).get(key), load_per_core()
    if isinstance(known, (int, float)):  # an earlier version's record: a bare number, with no load
        known = {"speedup": known}
    again = None
    if isinstance(known, dict) and isinstance(known.get("speedup"), (int, float)) and known["speedup"] > 0:
        load = known.get("load")
        again = busy_then(load if isinstance(load, (int, float)) else None, now)
        if again is None:
            return float(known["speedup"])
    title = "checking whether this CPU runs bf16 faster than fp32 (" + (
        f"again: the last check was {again})" if again else "once per machine)")
    with Step(title, kind="bf16 check", size=1) as step:
        speedup = _measure_bf16_speedup()
        step.found = (f"bf16 runs {speedup:.2f}x as fast as fp32 on this CPU: --precision auto "
                      f"{'may use bf16' if speedup >= BF16_MIN_SPEEDUP else 'keeps fp32'}")
    # a read-only cache: measured in every process
    update_record(record, key, {"speedup": round(speedup, 3), "load": highest_load(now, load_per_core())})
    return speedup


def _measure_bf16_speedup() -> float:
    """The probe itself, about 150 ms on 2 cores. The block is shaped like the models' own: 3x3 convolutions on
    64 channels, channels_last, a leaky ReLU, a concatenation and a residual add, so the elementwise work
    that bf16 can slow down counts too. CPU flags do not predict it: on realesrgan-x4plus, AMX measured
    4-6x, AVX512-BF16 on an AMD EPYC (Zen 4) about 2x, and AVX512-BF16 on an Intel Xeon without AMX
    0.6-0.75x."""
    generator = torch.Generator().manual_seed(0)  # its own generator: the probe leaves torch's seed alone
    shapes = {"x": (1, 64, 64, 64), "grow": (32, 64, 3, 3), "fuse": (64, 96, 3, 3)}
    sample = {name: torch.rand(shape, generator=generator) * 0.1 for name, shape in shapes.items()}

    def block_for(dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        x, grow, fuse = (sample[n].to(dtype).contiguous(memory_format=torch.channels_last) for n in shapes)

        def block() -> torch.Tensor:
            y = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x, grow, padding=1), 0.2)
            return torch.nn.functional.conv2d(torch.cat((x, y), 1), fuse, padding=1) * 0.2 + x

        return block

    ratios = []
    with torch.inference_mode():
        blocks = {dtype: block_for(dtype) for dtype in (torch.float32, torch.bfloat16)}
        for block in blocks.values():
            block()  # the first call selects kernels
        for _ in range(3):  # the median of three readings, each the best of five alternating rounds, so that
            best = {}       # neither side gets the cold caches or clocks, nor a burst of other work
            for _ in range(5):
                for dtype, block in blocks.items():
                    start = time.perf_counter()
                    block()
                    best[dtype] = min(best.get(dtype, float("inf")), time.perf_counter() - start)
            ratios.append(best[torch.float32] / best[torch.bfloat16])
    return sorted(ratios)[1]


def cpu_has_fast_bf16() -> bool:
    """Whether ``auto`` precision runs bf16 on this CPU: where ``cpu_bf16_speedup`` is at least
    ``BF16_MIN_SPEEDUP``."""
    return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def choose_dtype(precision: Precision, device: torch.device, model: ModelSpec, depth: int = 8) -> torch.dtype:
    """``auto`` is fp16 on CUDA where the model supports half precision; on a CPU where bf16 measures
    clearly faster (``cpu_has_fast_bf16``) it is bf16 where the model supports it, which came within
    53 dB of fp32's pixels on realesrgan-x4plus (the tests hold it to 45 dB); fp32 elsewhere.

    16-bit images (``depth=16``) never get bf16 from ``auto``: its 8-bit mantissa moved x4plus's 16-bit
    output by up to 2168 of 65535 (49 dB), coarser than the 8-bit steps such images are kept from."""
    if precision == "auto":
        if device.type == "cuda" and model.supports_half:
            return torch.float16
        if device.type == "cpu" and depth <= 8 and model.supports_bfloat16 and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if precision not in _DTYPES:
        raise DeviceUnavailable(f"--precision '{precision}' is not one of auto, fp32, fp16, bf16")
    if precision == "fp16" and not model.supports_half:
        raise DeviceUnavailable(f"model '{model.name}' ({model.architecture}) does not support fp16")
    if precision == "fp16" and device.type == "cpu":  # said once a process (the same text, from this line)
        warnings.warn(SlowPrecision("--precision fp16 on the CPU is emulated and slow (5-10x slower than fp32 on "
                                    "these machines); --precision auto picks what runs fastest here (bf16 where "
                                    "the CPU has it, else fp32)"), stacklevel=1)
    if precision == "bf16" and not model.supports_bfloat16:
        raise DeviceUnavailable(f"model '{model.name}' ({model.architecture}) does not support bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceMissing(f"--precision bf16: {device} has no bfloat16 support (it needs compute capability "
                            "8.0, Ampere, or newer); use fp16 or fp32")
    return _DTYPES[precision]


def available_memory(device: torch.device) -> int:
    """Bytes the engine may reasonably plan with on ``device``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    if device.type == "mps":
        # Metal's recommended working set; torch before 2.5 does not report it, and the memory is unified:
        # plan with what the host has free then
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        if recommended is None:
            return int(_host_available_memory() * 0.6)
        return int(max(recommended() - torch.mps.current_allocated_memory(), 0) * 0.6)
    # CPU: a share of the available RAM, capped: larger tiles do not run faster on a CPU, and a batch job
    # should leave room for everything else on the machine.
    available = _host_available_memory()
    return int(min(available * 0.25, 1024**3))


def _host_available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


# torch.OutOfMemoryError (any device) came with torch 2.5; torch.cuda.OutOfMemoryError is older
_OUT_OF_MEMORY = tuple({error for error in (getattr(torch, "OutOfMemoryError", None),
                                            getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(error, type)})


def run_in_batches(run: Callable[[np.ndarray], np.ndarray], items: np.ndarray, bytes_each: int,
                   device: torch.device) -> np.ndarray:
    """``run`` over ``items`` (at least one, stacked on the first axis), results joined in order, in as few calls
    as memory allows: as many items a call as ``available_memory(device)`` holds at ``bytes_each``, at least one,
    and half as many after an out-of-memory error (a crowd photo's faces, at hundreds of MB each, would otherwise
    need many GB in one call: on a GPU an error, on the CPU the kernel's out-of-memory killer, ending the batch)."""
    per_call = int(max(1, available_memory(device) // max(bytes_each, 1)))
    done: list[np.ndarray] = []
    start = 0
    while start < len(items):
        part = items[start : start + per_call]
        try:
            done.append(run(part))
        except Exception as exc:
            if not is_out_of_memory(exc) or len(part) == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            per_call = len(part) // 2  # half of what failed, not of the budget (which may exceed what is left)
            continue
        start += len(part)
    return np.concatenate(done)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of CUDA, MPS and the CPU allocator."""
    if isinstance(exc, _OUT_OF_MEMORY):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    )


def place_model(model: LoadedModel, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Move ``model`` to ``device`` in ``dtype``, channels_last, eval mode; returns it for chaining."""
    descriptor = model.descriptor
    descriptor.to(device)  # type: ignore[attr-defined]
    descriptor.to(dtype)  # type: ignore[attr-defined]
    model.module.to(memory_format=torch.channels_last)
    model.module.eval()
    return model
