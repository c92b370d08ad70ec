"""Every device a back-end can run a model on here: torch's (the CPU, CUDA, MPS), ncnn's (the CPU, Vulkan) and
OpenVINO's (the CPU, Intel GPUs and NPUs)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import torch

from ..device import _mps_available, cpu_model
from . import openvino
from .ncnn import available, vulkan_devices


@dataclass(frozen=True)
class DeviceEntry:
    """A device as ``--device`` names it, the back-ends that run on it, and what it is."""

    device: str
    backends: tuple[str, ...]
    name: str
    kind: str  # cpu, cuda, mps, a Vulkan device's type (discrete, integrated, virtual, cpu: software), gpu, npu
    memory_mb: int | None = None


def list_devices() -> list[DeviceEntry]:
    """The CPU first, then CUDA devices, MPS, the Vulkan devices ncnn finds and the others OpenVINO lists."""
    on_cpu = ("torch",) + (("ncnn",) if available() else ()) + (("openvino",) if openvino.available() else ())
    found = [DeviceEntry("cpu", on_cpu, f"{cpu_model()}, {torch.get_num_threads()} threads", "cpu")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            found.append(DeviceEntry(f"cuda:{index}", ("torch",), properties.name, "cuda",
                                     properties.total_memory // 1024**2))
    if _mps_available():
        found.append(DeviceEntry("mps", ("torch",), "Apple Metal", "mps"))
    for gpu in vulkan_devices():
        found.append(DeviceEntry(gpu.label, ("ncnn",), gpu.name, gpu.kind, gpu.heap_mb or None))
    for name in openvino.openvino_devices():
        if not name.startswith("CPU"):  # its CPU is the CPU above
            found.append(DeviceEntry(f"openvino:{name}", ("openvino",), openvino.device_name(name),
                                     name.partition(".")[0].lower()))
    return found


def ncnn_version() -> str | None:
    """The installed ncnn package's version (None: not installed)."""
    try:
        return importlib.metadata.version("ncnn")
    except importlib.metadata.PackageNotFoundError:
        return None
