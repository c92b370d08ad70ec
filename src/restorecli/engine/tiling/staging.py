"""Copies between the host and an accelerator that overlap the model: the device abstraction the tiler's input
windows (``windows.Uploads``) and output rows (``rows.OutputRows``) are staged through.

A ``Staging`` has one side stream of copies beside the stream the model computes on. The tiler decides *when*
to copy and *which* buffer to reuse (double buffering, in ``windows`` and ``rows``); a ``Staging`` only says
*how*: ``CudaStaging`` with pinned host memory, CUDA streams and events. Tests drive the same logic on the CPU
with a ``Staging`` whose copies run late (``tests/test_tiling.py``), so an ordering mistake shows as wrong pixels
without a GPU. On the CPU and MPS nothing is staged: the host's arrays are used as they are, or copied plainly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Staging(Protocol):
    """Host <-> device copies on a side stream; events mark where each copy ends."""

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A buffer on the device that the model's stream writes and this side stream's copies read."""

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host buffer the side stream copies to or from (page-locked on CUDA)."""

    def download(self, host: torch.Tensor, source: torch.Tensor) -> object:
        """Copy device ``source`` into ``host`` once the model's work queued so far is done, without the host
        waiting; returns the event of the copy's end."""

    def upload(self, host: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Copy ``host`` into a new device tensor, which the model's stream reads only after the copy; returns
        the tensor and the event of the copy's end."""

    def wait(self, event: object) -> None:
        """The model's stream waits for ``event`` (the host does not)."""

    def synchronize(self, event: object | None = None) -> None:
        """The host waits for ``event``, or for every copy queued (None)."""


StagingFactory = Callable[[torch.device], Staging]
"""Makes a ``Staging`` (each with a side stream of its own) for a device."""


class CudaStaging:
    """``Staging`` on a CUDA device: pinned host buffers, a side stream of copies, CUDA events."""

    def __init__(self, device: torch.device):
        self.device = device
        self.compute = torch.cuda.current_stream(device)
        self.copies = torch.cuda.Stream(device)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype, device=self.device)
        buffer.record_stream(self.copies)  # read by the side stream's copies too: not freed before them
        return buffer

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def download(self, host: torch.Tensor, source: torch.Tensor) -> torch.cuda.Event:
        ready = torch.cuda.Event()
        ready.record(self.compute)
        self.copies.wait_event(ready)
        with torch.cuda.stream(self.copies):
            host.copy_(source, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copies)
        return done

    def upload(self, host: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(self.copies):
            raw = torch.empty(tuple(host.shape), dtype=host.dtype, device=self.device)
            raw.copy_(host, non_blocking=True)
            sent = torch.cuda.Event()
            sent.record(self.copies)
        self.compute.wait_event(sent)
        raw.record_stream(self.compute)  # allocated on the side stream, used (and freed) on the compute stream
        return raw, sent

    def wait(self, event: object) -> None:
        self.compute.wait_event(event)  # type: ignore[arg-type]

    def synchronize(self, event: object | None = None) -> None:
        (event if event is not None else self.copies).synchronize()  # type: ignore[attr-defined]


def staged(device: torch.device) -> bool:
    """Whether copies between host and ``device`` go through pinned buffers on a side stream, overlapping the
    model: on CUDA. Elsewhere the host's arrays are used as they are (the CPU) or copied plainly (MPS)."""
    return device.type == "cuda"


def staging_for(device: torch.device) -> StagingFactory | None:
    """How the tiler stages copies for ``device`` by default: ``CudaStaging`` on CUDA, nothing elsewhere."""
    return CudaStaging if staged(device) else None
