"""Face parsing for paste-back masks: ParseNet (as released with facexlib, ``parsing_parsenet.pth``).

The network labels each pixel of an aligned 512 x 512 face with one of 19 classes. Skin, brows, eyes, ears,
nose, mouth and lips count as face; background, neck, clothes, hair and hat do not. The mask is softened in
template space and multiplied by the feathered square, so it still has no edge and costs nothing per image.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from ...errors import UnsupportedModel
from ..device import run_in_batches
from .paste import template_mask

# Class indices of the 19-class face-parsing label set that belong to the face.
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


class _Conv(nn.Module):
    """Reflection padding, convolution, optional batch norm and activation; ``scale`` up/down by 2."""

    def __init__(self, cin: int, cout: int, scale: str = "none", norm: bool = False, act: bool = False,
                 bias: bool = True):
        super().__init__()
        self.scale = scale
        self.pad = nn.ReflectionPad2d(1)
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=bias and not norm)
        self.norm = nn.Module()
        if norm:
            self.norm.norm = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "up":
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(self.pad(x))
        if hasattr(self.norm, "norm"):
            x = self.norm.norm(x)
        return nn.functional.leaky_relu(x, 0.2) if self.act else x


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, scale: str = "none"):
        super().__init__()
        self.shortcut_func = _Conv(cin, cout, scale) if scale != "none" or cin != cout else nn.Identity()
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.conv1 = _Conv(cin, cout, first, norm=True, act=True)
        self.conv2 = _Conv(cout, cout, second, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_func(x) + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """Encoder (4 downsamplings), 10 residual blocks, decoder (4 upsamplings); 512 in, 512 out."""

    def __init__(self, classes: int = 19, depth: int = 10):
        super().__init__()
        clip = lambda c: max(32, min(c, 256))  # noqa: E731
        encoder: list[nn.Module] = [_Conv(3, 64)]
        head = 64
        for _ in range(4):
            encoder.append(_Residual(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*[_Residual(clip(head), clip(head)) for _ in range(depth)])
        decoder = []
        for _ in range(4):
            decoder.append(_Residual(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = _Conv(clip(head), 3)
        self.out_mask_conv = _Conv(clip(head), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(x)
        return self.out_mask_conv(self.decoder(feat + self.body(feat)))


# What parsing one 512 x 512 face takes (fp32): measured 580 MiB above the weights on the CPU
_PARSE_BYTES = 640 << 20


class FaceParser:
    """Soft face masks for aligned faces."""

    def __init__(self, net: ParseNet, device: torch.device):
        self.net = net.to(device).eval()
        self.device = device

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device: torch.device, source: str = "parser"):
        state = {k.removeprefix("module."): v for k, v in state.items()}
        net = ParseNet()
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise UnsupportedModel(f"{source}: not a ParseNet checkpoint ({str(exc).splitlines()[0]})") from None
        return cls(net, device)

    def masks(self, faces: np.ndarray) -> np.ndarray:
        """N x 512 x 512 x 3 faces in [0, 1] -> N x 512 x 512 soft masks in [0, 1], in as few network calls as
        memory allows (``run_in_batches``)."""
        labels = run_in_batches(self._labels, faces, _PARSE_BYTES, self.device)
        size = faces.shape[1]
        border = template_mask(size)
        out = []
        for label in labels:
            hard = np.isin(label, FACE_CLASSES).astype(np.float32)
            soft = cv2.GaussianBlur(hard, (0, 0), sigmaX=size / 48)  # about 11 px at 512
            out.append(np.clip(soft, 0.0, 1.0) * border)
        return np.stack(out)

    @torch.inference_mode()
    def _labels(self, faces: np.ndarray) -> np.ndarray:
        """One network call: each pixel's class."""
        x = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2))).to(self.device) * 2 - 1
        return self.net(x).argmax(1).cpu().numpy()
