"""What a back-end is: it runs the network on a batch of tile windows, and says what it can run on.

The tiler (``engine.tiling``) cuts the image, builds each batch of windows on its host device, blends the results
seam-free and plans memory, once for every back-end; a back-end only turns windows into upscaled windows. Like
ONNX Runtime's execution providers: one interface, each provider stating its devices, precisions and limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import torch

BackendName = Literal["torch", "ncnn", "openvino"]
BACKENDS: tuple[BackendName, ...] = ("torch", "ncnn", "openvino")


@dataclass(frozen=True)
class Capabilities:
    """What a back-end states about itself, for the tiler and for choosing one."""

    backend: BackendName
    device: str  # where the network runs: "cpu", "cuda:0", "mps", "vulkan:0", "openvino:GPU.0"
    precisions: tuple[str, ...]  # what --precision may ask of it on that device
    max_batch: int | None = None  # windows per call at most (None: as many as memory allows)
    memory: int | None = None  # bytes for a window's activations on its device (None: the host device's budget)


class Backend(Protocol):
    """Runs the network on a batch of windows: N x C x h x w float values in [0, 1], on the tiler's host device,
    in (the batch's dtype), N x C' x h*scale x w*scale out, values near [0, 1], on the same device (float of any
    width: the tiler quantises them)."""

    @property
    def capabilities(self) -> Capabilities: ...

    def run(self, batch: torch.Tensor) -> torch.Tensor: ...
