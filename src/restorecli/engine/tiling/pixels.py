"""Pixels between numpy arrays and tensors: tensor views of uint8/uint16 arrays (16-bit through int16 bits on a
torch without uint16), the network's input batch from pixel windows, and quantising its float output back."""

from __future__ import annotations

import numpy as np
import torch

_UINT16 = getattr(torch, "uint16", None)  # torch 2.3 and later; before it, 16-bit pixels go through int32
_QUANTISE_ELEMENTS = 1 << 18  # values quantised per pass: their float32 chunk (1 MiB) stays in cache across passes


def quantise(values: torch.Tensor, out: torch.Tensor, maxval: float | None) -> None:
    """Write C x h x w network output ``values`` (float of any width, in [0, 1]) into ``out`` (h x w x C, on the
    same device, or on the host for a device whose output is not staged): ``round(clamp(v, 0, 1) * maxval)``
    for an integer ``out`` (round half to even, as ``torch.round``), the values as they are for a float ``out``
    (``maxval`` None).

    One chunk of rows at a time, in float32, in place: float32 ``values`` themselves (they are overwritten:
    callers pass what they own, a network output or a band), others in a float32 copy of the chunk; scaled,
    rounded and clamped (clamping after rounding gives the same integers, since rounding is monotonic and keeps
    0 and ``maxval``), then cast into ``out``. The chunk (1 MiB) stays in cache across those passes, and the
    values are read in their own layout (the network's channels_last is the rows' h x w x C)."""
    source = values.permute(1, 2, 0)
    if maxval is None:
        out.copy_(source)
        return
    height, width, channels = source.shape
    if height == 0 or width == 0:
        return
    if values.device.type == out.device.type == "cpu" and values.dtype == torch.float32 and out.dtype == torch.uint8:
        _quantise_bytes(values.detach().numpy(), out.numpy(), maxval)
        return
    step = max(1, _QUANTISE_ELEMENTS // (width * channels))
    for top in range(0, height, step):
        chunk = source[top : top + step].float()  # float32 values: the values themselves; others: a copy
        chunk.mul_(maxval).round_().clamp_(0, maxval)
        if out.dtype == torch.int16:  # 16-bit pixels on a torch without uint16: int32, then the same bits
            chunk = chunk.to(torch.int32)
        out[top : top + step].copy_(chunk)


def _quantise_bytes(values: np.ndarray, out: np.ndarray, maxval: float) -> None:
    """``quantise`` of float32 host values into 8-bit host pixels, in one pass of OpenCV's own loop a chunk of rows
    (``convertScaleAbs``: scale, round half to even, saturate) after clamping in place, on the calling thread: the
    same bytes as torch's four passes, at a twentieth of their CPU time on a 3416x1920 frame, without waking torch's
    thread pool (whose workers spin against a video encoder's on a machine the network keeps busy). The values are
    clamped first so that OpenCV's absolute value and its saturation of infinities never come into it."""
    import cv2

    channels, height, width = values.shape
    source = values.transpose(1, 2, 0)
    step = max(1, _QUANTISE_ELEMENTS // (width * channels))
    for top in range(0, height, step):
        block = source[top : top + step]
        np.clip(block, 0.0, 1.0, out=block)
        if block.flags.c_contiguous:  # channels_last memory: the rows' own layout
            pixels = cv2.convertScaleAbs(block, alpha=maxval)
        else:  # planes (ncnn's C x h x w), or a window of either: a plane at a time, interleaved by merge
            pixels = cv2.merge([cv2.convertScaleAbs(values[c, top : top + step], alpha=maxval)
                                for c in range(channels)])
        out[top : top + step] = pixels.reshape(block.shape)


def tensor_of(array: np.ndarray) -> torch.Tensor:
    """A tensor viewing ``array``'s memory; uint16 as int16 bits on a torch without uint16."""
    if array.dtype == np.uint16 and _UINT16 is None:
        return torch.from_numpy(array.view(np.int16))
    return torch.from_numpy(array)


def array_of(tensor: torch.Tensor) -> np.ndarray:
    """The pixels of a host ``tensor`` as an array viewing its memory; int16 bits as uint16 on a torch without
    uint16 (the reverse of ``tensor_of``)."""
    array = tensor.numpy()
    return array.view(np.uint16) if _UINT16 is None and array.dtype == np.int16 else array


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    if np.dtype(dtype) == np.uint16:
        return _UINT16 if _UINT16 is not None else torch.int16
    return torch.from_numpy(np.empty(0, dtype)).dtype


def host_dtype(dtype: np.dtype) -> np.dtype:
    """The type input windows are gathered in on the host: 16-bit pixels are widened to int32 only on a torch
    without uint16, which cannot convert them."""
    return np.dtype(np.int32) if np.dtype(dtype) == np.uint16 and _UINT16 is None else np.dtype(dtype)


def to_batch(raw: torch.Tensor, maxval: float, dtype: torch.dtype) -> torch.Tensor:
    """N x h x w x C pixels (on the device) to the network's N x C x h x w input in ``dtype``, channels_last
    (the pixels' own layout, so no copy is needed for it): ``float32(pixel) / maxval``, then ``dtype``."""
    batch = raw.to(torch.float32, copy=True).div_(maxval).to(dtype)
    return batch.permute(0, 3, 1, 2)
