"""The network's input: the windows of a batch of tiles, gathered from the image and sent to the device, through
pinned buffers on a side stream where the device is staged (``Uploads``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...images import full_scale
from .pixels import host_dtype, to_batch, torch_dtype
from .plan import Tile
from .staging import Staging


def window_batch(image: np.ndarray, tiles: Sequence[Tile], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The windows of ``tiles`` as the network's input batch, as the executor builds it where nothing is staged."""
    windows = [image[t.window[0] : t.window[1], t.window[2] : t.window[3]] for t in tiles]
    host = np.stack(windows).astype(host_dtype(image.dtype), copy=False)
    return to_batch(torch.from_numpy(host).to(device), full_scale(image.dtype), dtype)


class Uploads:
    """Input batches through a ``Staging``: windows gathered into one of two pinned buffers in turn, copied up on
    its side stream (the model's stream waits for that copy's event, not the host), converted on the device.
    A pinned buffer is refilled only after the copy out of it two batches ago has finished."""

    def __init__(self, staging: Staging):
        self.staging = staging
        self.pinned: list[torch.Tensor | None] = [None, None]
        self.sent: list[object | None] = [None, None]
        self.turn = 0

    def __call__(self, image: np.ndarray, tiles: Sequence[Tile], dtype: torch.dtype) -> torch.Tensor:
        y0, y1, x0, x1 = tiles[0].window
        shape = (len(tiles), y1 - y0, x1 - x0, image.shape[2])
        slot, self.turn = self.turn, 1 - self.turn
        if self.sent[slot] is not None:
            self.staging.synchronize(self.sent[slot])
        host = self.pinned[slot]
        if host is None or tuple(host.shape) != shape:
            host = self.pinned[slot] = self.staging.pinned(shape, torch_dtype(host_dtype(image.dtype)))
        view = host.numpy()
        for i, t in enumerate(tiles):
            np.copyto(view[i], image[t.window[0] : t.window[1], t.window[2] : t.window[3]], casting="unsafe")
        raw, self.sent[slot] = self.staging.upload(host)
        return to_batch(raw, full_scale(image.dtype), dtype)

    def close(self) -> None:
        self.staging.synchronize()
