"""``restorecli devices``: where models can run here, and on which back-end (``--device``, ``--backend``)."""

from __future__ import annotations

from dataclasses import asdict

from rich.markup import escape
from rich.table import Table

from . import render
from .options import Json as JsonFlag


def devices(json_output: JsonFlag = False) -> None:
    """List the devices restorecli can run on: the CPU, CUDA and MPS (torch), Vulkan GPUs (ncnn), Intel GPUs and
    NPUs (OpenVINO)."""
    from ..engine.backends import openvino
    from ..engine.backends.devices import list_devices, ncnn_version  # asks torch, ncnn and OpenVINO what they see

    found = list_devices()
    version = ncnn_version()
    if json_output:
        render.out_json({"ncnn": version, "openvino": openvino.version(),
                         "devices": [asdict(entry) for entry in found]}, indent=2)
        return
    table = Table(title="devices", title_justify="left")
    for column in ("device", "back-ends", "what it is"):
        table.add_column(column)
    for entry in found:
        what = entry.name + (f" ({entry.kind}, a software renderer on the CPU)" if entry.device.startswith("vulkan")
                             and entry.kind == "cpu" else "")
        if entry.memory_mb:
            what += f", {entry.memory_mb} MiB"
        table.add_row(entry.device, ", ".join(entry.backends), escape(what))
    notes = []
    if version is None:
        notes.append("ncnn is not installed: no ncnn back-end and no Vulkan devices (pip install ncnn)")
    elif not any(entry.device.startswith("vulkan") for entry in found):
        notes.append("no Vulkan device found (a GPU driver with Vulkan, or Mesa's lavapipe, is needed for one)")
    render.table_then_rows(table, (f"{entry.device}\t{','.join(entry.backends)}\t{entry.name}" for entry in found),
                           notes)
