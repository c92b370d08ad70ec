"""RetinaFace: face boxes, scores and five landmarks (left eye, right eye, nose, left and right mouth corners).

The network follows the published RetinaFace design as released with facexlib (MobileNet-0.25 or ResNet-50
backbone, FPN, SSH context modules, 2 anchors per cell), laid out so that its checkpoints load unchanged.
Anchors are configuration, not code: a detector trained with other anchor sizes says so in a sidecar file
``<checkpoint>.anchors.json`` (``{"min_sizes": [[10, 20], [32, 64], [128, 256]], "steps": [8, 16, 32]}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedModel
from ...images import full_scale

# Input convention of the released detectors: BGR, mean subtracted, no scaling.
BGR_MEAN = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class AnchorConfig:
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)

    @classmethod
    def from_mapping(cls, data: dict | None, source: str = "anchors") -> "AnchorConfig":
        """From a checkpoint's ``NAME.anchors.json`` (read by models/); None gives the published settings."""
        if data is None:
            return cls()
        try:
            return cls(
                min_sizes=tuple(tuple(int(v) for v in level) for level in data["min_sizes"]),
                steps=tuple(int(v) for v in data.get("steps", cls.steps)),
                variance=tuple(float(v) for v in data.get("variance", cls.variance)),  # type: ignore[arg-type]
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnsupportedModel(f"{source}: unreadable anchor configuration ({exc})") from None


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # 5 x 2 (x, y): left eye, right eye, nose, left mouth corner, right mouth corner
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


# ----------------------------------------------------------------------------- building blocks


def _conv_bn(cin: int, cout: int, stride: int = 1, leaky: float | None = 0.0, kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNet with width 0.25: three stages whose outputs (64, 128, 256 channels) feed the FPN."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2), _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class ResNet50Body(nn.Module):
    """torchvision's ResNet-50, returning layer2-4 (512, 1024, 2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Context module: parallel 3x3, 5x5 and 7x7 receptive fields (as stacked 3x3 convolutions)."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, out // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(cin, out // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, leaky=None)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))], 1))


class _Head(nn.Module):
    def __init__(self, cin: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    def __init__(self, backbone: str) -> None:
        super().__init__()
        if backbone == "mobilenet0.25":
            self.body: nn.Module = MobileNetV1()
            stage_channels, out = [64, 128, 256], 64
        elif backbone == "resnet50":
            self.body = ResNet50Body()
            stage_channels, out = [512, 1024, 2048], 256
        else:
            raise ValueError(backbone)
        self.fpn = FPN(stage_channels, out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        self.ClassHead = nn.ModuleList([_Head(out, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        scores = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1).softmax(-1)[..., 1]
        landmarks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return boxes, scores, landmarks


# ----------------------------------------------------------------------------- anchors and decoding


def prior_boxes(height: int, width: int, config: AnchorConfig) -> torch.Tensor:
    """Anchors (cx, cy, w, h), normalised to the image size, in the order the heads emit them."""
    priors = []
    for step, sizes in zip(config.steps, config.min_sizes):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
        cx = ((xs.reshape(-1, 1) + 0.5) * step / width).expand(-1, len(sizes))
        cy = ((ys.reshape(-1, 1) + 0.5) * step / height).expand(-1, len(sizes))
        w = torch.tensor([s / width for s in sizes]).expand_as(cx)
        h = torch.tensor([s / height for s in sizes]).expand_as(cx)
        priors.append(torch.stack([cx, cy, w, h], -1).reshape(-1, 4))
    return torch.cat(priors).float()


def decode(loc: torch.Tensor, landm: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float],
           width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Regressions -> boxes (x1, y1, x2, y2) and 5 landmarks, in pixels."""
    centre = priors[:, :2] + loc[:, :2] * variance[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * variance[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1) * torch.tensor([width, height, width, height])
    points = priors[:, None, :2] + landm.reshape(-1, 5, 2) * variance[0] * priors[:, None, 2:]
    return boxes, points * torch.tensor([width, height])


# ----------------------------------------------------------------------------- the detector


class FaceDetector:
    """A loaded RetinaFace and its anchor configuration."""

    def __init__(self, net: RetinaFace, anchors: AnchorConfig, device: torch.device, max_side: int = 1280):
        self.net = net.to(device).eval()
        self.anchors = anchors
        self.device = device
        self.max_side = max_side

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], anchors: AnchorConfig, device: torch.device,
                        source: str = "detector") -> "FaceDetector":
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if any(k.startswith("body.stage1.") for k in state):
            backbone = "mobilenet0.25"
        elif any(k.startswith("body.layer1.") for k in state):
            backbone = "resnet50"
        else:
            raise UnsupportedModel(f"{source}: not a RetinaFace checkpoint (no MobileNet or ResNet-50 body)")
        net = RetinaFace(backbone)
        missing, unexpected = net.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(("body.fc.", "body.avg"))]
        if missing or unexpected:
            raise UnsupportedModel(f"{source}: RetinaFace weights do not fit ({len(missing)} missing, "
                                   f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[:3]})")
        return cls(net, anchors, device)

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray, threshold: float = 0.9, nms: float = 0.4) -> list[Face]:
        """Faces in an H x W x 3 RGB image (uint8, uint16 or float in [0, 1]), best first. Large images are searched on a
        downscaled copy; boxes and landmarks come back in the image's own pixels."""
        import cv2
        from torchvision.ops import nms as box_nms

        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        image = rgb.astype(np.float32) * (255.0 / full_scale(rgb.dtype))  # the detector works on 0..255
        if scale < 1.0:
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
        bgr = image[:, :, ::-1] - np.array(BGR_MEAN, dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None].to(self.device)
        loc, conf, landm = (t[0].float().cpu() for t in self.net(x))
        boxes, points = decode(loc, landm, prior_boxes(h, w, self.anchors), self.anchors.variance, w, h)
        keep = conf >= threshold
        boxes, points, conf = boxes[keep], points[keep], conf[keep]
        order = box_nms(boxes, conf, nms)
        return [Face(box=(boxes[i] / scale).numpy(), score=float(conf[i]), landmarks=(points[i] / scale).numpy())
                for i in order.tolist()]
