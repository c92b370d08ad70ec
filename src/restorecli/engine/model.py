"""What the engine runs: a loaded network and its contract (scale, channels, precisions, size rules), which the
engine asks instead of a model's name. ``models/`` loads files into these; the engine never opens a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .backends.base import Backend


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a loaded image-to-image model, asked instead of its name."""

    name: str
    path: Path
    architecture: str
    scale: int  # the network's own scale
    default_outscale: float  # the scale of the published model (differs when its graph resizes the result)
    input_channels: int
    output_channels: int
    supports_half: bool
    supports_bfloat16: bool
    multiple_of: int
    minimum_size: int
    square: bool
    tileable: bool
    max_features: int  # widest layer, used to estimate activation memory per pixel
    # spandrel discourages tiling it (SCUNet, SwinIR: features that reach far): whole where memory allows, in tiles
    # only where the whole image would not fit (never cut down to the CPU's fastest window)
    tiles_only_to_fit: bool = False


@dataclass
class LoadedModel:
    """A loaded network and its contract. Holds no per-call state."""

    spec: ModelSpec
    descriptor: object  # spandrel.ImageModelDescriptor
    backend: Backend | None = None  # what runs the tiles; None: torch, running ``descriptor``

    @property
    def runner(self) -> Backend:
        """The back-end that runs this model's tiles: ``backend``, or the torch back-end over ``descriptor``."""
        if self.backend is not None:
            return self.backend
        from .backends.torch import TorchBackend

        return TorchBackend(self.descriptor)

    @property
    def module(self) -> torch.nn.Module:
        return self.descriptor.model  # type: ignore[attr-defined]
