"""The torch back-end: a spandrel network on CUDA, MPS or the CPU, in fp32, bf16 or fp16 (restorecli's own path)."""

from __future__ import annotations

import torch

from .base import Capabilities


class TorchBackend:
    """Runs a spandrel descriptor (already placed on its device and dtype by ``device.place_model``) on batches
    of windows, channels_last: the layout the windows are built in, and the one oneDNN and cuDNN run fastest."""

    def __init__(self, descriptor: object):
        self.descriptor = descriptor

    @property
    def capabilities(self) -> Capabilities:
        weight = next(iter(self.descriptor.model.parameters()), None)  # type: ignore[attr-defined]
        device = str(weight.device) if weight is not None else "cpu"
        return Capabilities("torch", device, ("fp32", "fp16", "bf16"))

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.descriptor(batch.contiguous(memory_format=torch.channels_last))  # type: ignore[operator]
