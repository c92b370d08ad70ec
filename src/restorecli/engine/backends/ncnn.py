"""The ncnn back-end: an ncnn model (``.param`` + ``.bin``) run natively by the ``ncnn`` package, no conversion: on
the CPU (its Winograd convolutions, fp32 or bf16 storage) or on a Vulkan GPU (``vulkan:N``: AMD, Intel, Apple
through MoltenVK, NVIDIA, or Mesa's lavapipe on the CPU), with fp16 storage and arithmetic where the device has
them.

``ncnn`` is imported only when a back-end is made or devices are listed: importing it loads the Vulkan loader.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from ...errors import DeviceMissing, DeviceUnavailable
from .base import Capabilities

INSTALL = "pip install ncnn"  # the extra restorecli[ncnn] says the same
T = TypeVar("T")


@dataclass(frozen=True)
class NcnnGraph:
    """Where an ncnn model is and which blobs to feed and read: the network's input, and its own output (before
    any final resize the published graph adds, which restorecli's final resize does instead)."""

    param: Path
    bin: Path
    input_blob: str
    output_blob: str


@dataclass(frozen=True)
class VulkanDevice:
    """A Vulkan device as ncnn sees it."""

    index: int
    name: str
    kind: str  # discrete, integrated, virtual, cpu (a software renderer such as lavapipe)
    heap_mb: int  # the memory budget ncnn plans with on it, MiB

    @property
    def label(self) -> str:
        return f"vulkan:{self.index}"


def _ncnn():
    try:
        import ncnn
    except ImportError:
        raise DeviceUnavailable(f"the ncnn back-end needs the ncnn package: {INSTALL}") from None
    return ncnn


def available() -> bool:
    """Whether the ncnn package is installed (found without importing it, which would load the Vulkan loader)."""
    import importlib.util

    return importlib.util.find_spec("ncnn") is not None


_KINDS = {0: "discrete", 1: "integrated", 2: "virtual", 3: "cpu"}


def _quietly(call: Callable[[], T]) -> T:
    """``call()`` with file descriptor 2 sent to /dev/null: ncnn's C++ code writes there, past Python's stderr."""
    sys.stderr.flush()
    saved, sink = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(sink, 2)
        return call()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


@functools.cache
def vulkan_devices() -> tuple[VulkanDevice, ...]:
    """The Vulkan devices ncnn finds (none without the ncnn package, a Vulkan loader or a driver)."""
    if not available():
        return ()
    ncnn = _ncnn()
    try:
        count = _quietly(ncnn.get_gpu_count)  # it prints each device's features to the process's stderr
    except Exception:  # noqa: BLE001 - no loader or no driver: no devices
        return ()
    devices = []
    for index in range(count):
        info = ncnn.get_gpu_info(index)
        try:
            heap = int(ncnn.get_gpu_device(index).get_heap_budget())
        except Exception:  # noqa: BLE001 - an older binding without it
            heap = 0
        devices.append(VulkanDevice(index, info.device_name(), _KINDS.get(info.type(), str(info.type())), heap))
    return tuple(devices)


def parse_vulkan(spec: str) -> int | None:
    """The device index of ``--device vulkan[:N]`` (0 for plain ``vulkan``), or None for any other device."""
    spec = spec.strip().lower()
    if spec == "vulkan":
        return 0
    if spec.startswith("vulkan:"):
        index = spec.partition(":")[2]
        if not index.isdigit():
            raise DeviceUnavailable(f"--device '{spec}' is not a device (use vulkan or vulkan:N)")
        return int(index)
    return None


def vulkan_device(index: int) -> VulkanDevice:
    """Vulkan device ``index``, or ``DeviceMissing`` saying what was found."""
    devices = vulkan_devices()
    if index < len(devices):
        return devices[index]
    if not available():
        raise DeviceMissing(f"--device vulkan:{index}: the ncnn package is not installed ({INSTALL})")
    found = ", ".join(f"{d.label} {d.name}" for d in devices) or "none (no Vulkan driver found)"
    raise DeviceMissing(f"--device vulkan:{index}: no such Vulkan device; found: {found}")


class NcnnBackend:
    """One ncnn network, loaded once, run one window at a time (ncnn takes one image per call; its threads share
    each convolution). Windows come and go as float32 CPU tensors, the tiler's host arrays."""

    def __init__(self, graph: NcnnGraph, *, precision: str = "fp32", gpu: int | None = None,
                 threads: int | None = None):
        ncnn = _ncnn()
        self.graph, self.precision, self.gpu = graph, precision, gpu
        self.device = vulkan_device(gpu) if gpu is not None else None
        allowed = self.precisions_for(self.device)
        if precision not in allowed:
            where = self.device.label if self.device is not None else "the CPU"
            raise DeviceUnavailable(f"the ncnn back-end runs {', '.join(allowed)} on {where}, not {precision}")
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = threads or torch.get_num_threads()
        opt.use_winograd_convolution = True
        half = precision == "fp16"
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = half
        opt.use_bf16_storage = precision == "bf16"
        if gpu is not None:
            opt.use_vulkan_compute = True
            net.set_vulkan_device(gpu)
        else:
            opt.use_vulkan_compute = False
        if net.load_param(str(graph.param)) != 0 or net.load_model(str(graph.bin)) != 0:
            raise DeviceUnavailable(f"{graph.param}: ncnn could not load this model")
        self.net = net
        self._mat = ncnn.Mat

    @staticmethod
    def precisions_for(device: VulkanDevice | None) -> tuple[str, ...]:
        """What ncnn runs on ``device`` (None: the CPU), the first being what ``--precision auto`` picks: fp32
        on the CPU (bf16 storage on request); fp16 storage and arithmetic on a GPU (ncnn itself keeps fp32
        where a device lacks them)."""
        return ("fp32", "bf16") if device is None else ("fp16", "fp32")

    @property
    def capabilities(self) -> Capabilities:
        where = self.device.label if self.device is not None else "cpu"
        memory = self.device.heap_mb * 1024**2 if self.device is not None and self.device.heap_mb else None
        return Capabilities("ncnn", where, self.precisions_for(self.device), max_batch=1, memory=memory)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = []
        for window in batch:
            data = np.ascontiguousarray(window.to(torch.float32).numpy())  # C x h x w, as ncnn's Mat holds it
            extractor = self.net.create_extractor()
            extractor.input(self.graph.input_blob, self._mat(data))
            status, result = extractor.extract(self.graph.output_blob)
            if status != 0:
                raise RuntimeError(f"ncnn failed on a {data.shape[2]}x{data.shape[1]} window (status {status})")
            outputs.append(torch.from_numpy(np.asarray(result)))  # the Mat's own memory, not a copy of it
        batch_out = outputs[0].unsqueeze(0) if len(outputs) == 1 else torch.stack(outputs)
        return batch_out.clamp_(0, 1)  # as spandrel's torch models clamp their output
