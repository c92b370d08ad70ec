"""Every device a back-end can run a model on here: torch's (the CPU, CUDA, MPS) and ncnn's (the CPU, Vulkan)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import torch

from ..device import _mps_available, cpu_model
from .ncnn import available, vulkan_devices


@dataclass(frozen=True)
class DeviceEntry:
    """A device as ``--device`` names it, the back-ends that run on it, and what it is."""

    device: str
    backends: tuple[str, ...]
    name: str
    kind: str  # cpu, cuda, mps, or a Vulkan device's type: discrete, integrated, virtual, cpu (software)
    memory_mb: int | None = None


def list_devices() -> list[DeviceEntry]:
    """The CPU first, then CUDA devices, MPS, and the Vulkan devices ncnn finds."""
    ncnn = available()
    found = [DeviceEntry("cpu", ("torch", "ncnn") if ncnn else ("torch",),
                         f"{cpu_model()}, {torch.get_num_threads()} threads", "cpu")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            found.append(DeviceEntry(f"cuda:{index}", ("torch",), properties.name, "cuda",
                                     properties.total_memory // 1024**2))
    if _mps_available():
        found.append(DeviceEntry("mps", ("torch",), "Apple Metal", "mps"))
    for gpu in vulkan_devices():
        found.append(DeviceEntry(gpu.label, ("ncnn",), gpu.name, gpu.kind, gpu.heap_mb or None))
    return found


def ncnn_version() -> str | None:
    """The installed ncnn package's version (None: not installed)."""
    try:
        return importlib.metadata.version("ncnn")
    except importlib.metadata.PackageNotFoundError:
        return None
