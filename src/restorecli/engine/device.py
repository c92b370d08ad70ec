"""Choosing the device, the precision and the memory budget. Nothing here runs at import time."""

from __future__ import annotations

import os
from typing import Literal

import torch

from ..errors import DeviceUnavailable
from ..models.loading import LoadedModel, ModelSpec

Precision = Literal["auto", "fp32", "fp16", "bf16"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
            raise DeviceUnavailable(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__})")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceUnavailable(f"--device {spec}: Apple MPS is not available on this machine")
        return device
    raise DeviceUnavailable(f"--device '{spec}' is not supported (use auto, cpu, cuda, cuda:N or mps)")


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has AMX tiles, the only place bf16 convolutions measured faster than fp32
    (4-6x on realesrgan-x4plus, 2 cores). AVX512-BF16 alone is not enough: there bf16 measured
    0.6-0.75x fp32's speed on the same model."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def choose_dtype(precision: Precision, device: torch.device, model: ModelSpec) -> torch.dtype:
    """``auto`` is fp16 on CUDA where the model supports half precision; on a CPU with AMX it is bf16
    where the model supports it, which measured 4-6x faster than fp32 there and within 53 dB of its
    pixels (the tests hold it to 45 dB); fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda" and model.supports_half:
            return torch.float16
        if device.type == "cpu" and model.supports_bfloat16 and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if precision not in _DTYPES:
        raise DeviceUnavailable(f"--precision '{precision}' is not one of auto, fp32, fp16, bf16")
    if precision == "fp16" and not model.supports_half:
        raise DeviceUnavailable(f"model '{model.name}' ({model.architecture}) does not support fp16")
    if precision == "bf16" and not model.supports_bfloat16:
        raise DeviceUnavailable(f"model '{model.name}' ({model.architecture}) does not support bf16")
    return _DTYPES[precision]


def available_memory(device: torch.device) -> int:
    """Bytes the engine may reasonably plan with on ``device``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    if device.type == "mps":
        recommended = torch.mps.recommended_max_memory()
        return int(max(recommended - torch.mps.current_allocated_memory(), 0) * 0.6)
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


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of CUDA, MPS and the CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError):
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
