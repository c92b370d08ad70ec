"""Whether a model really runs in the reduced precision ``--precision auto`` picked for it (bf16 on a CPU that runs
it fast, fp16 on CUDA), checked once per model file, device and torch version.

spandrel says ``supports_bfloat16`` for architectures that cannot run in it: SwinIR, Swin2SR and DRCT rebuild
their attention mask in fp32 at run time and raise on any input whose padded size differs from the model's
``img_size``, ATD raises on every 8-bit input, and RealPLKSR with DySample runs without an error but 15.5 dB away
from its fp32 result. So under ``auto`` the model is run once in each precision on a small awkward picture
(odd-sized, a multiple of no window size, real photo content), and the reduced precision is kept only if it ran
and came within ``MIN_PSNR`` of fp32's result. The verdict is recorded in the user cache
(``precision-verdicts.json``), so the probe costs once.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..files import read_record, update_record, user_cache
from ..progress import Step
from .device import cpu_model, place_model, precision_name
from .enhance import EngineOptions, enhance
from .model import LoadedModel

# Healthy models measured 50-64 dB between bf16 and fp32 here (the lowest, 39.6 dB, still looked the same); the
# broken RealPLKSR+DySample measured 15.5 dB. 30 dB sits well clear of both: a difference a viewer does not see,
# against one that ruins the picture.
MIN_PSNR = 30.0
_PROBE_SIDE = 47  # odd and prime: a multiple of no window size or patch

# What first-run work (a probe, a conversion) says it is doing, for a person waiting: a line of text, which the CLI
# prints on stderr and a worker leaves unsaid
Notice = Callable[[str], None]


@dataclass(frozen=True)
class Verdict:
    """Whether the reduced precision may run the model: it ran, and how close its result came (PSNR, dB)."""

    ok: bool
    psnr: float | None = None
    error: str | None = None

    def reason(self, dtype: torch.dtype) -> str:
        name = precision_name(dtype)
        if self.error:
            return f"it fails in {name} ({self.error})"
        return f"its {name} result is {self.psnr:.1f} dB from fp32's (at least {MIN_PSNR:.0f} dB is needed)"


def is_precision_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a network failing for its dtype: mixed dtypes in one operation, or an operation with
    no kernel for bf16/fp16 on this device."""
    text = str(exc)
    return isinstance(exc, (RuntimeError, TypeError, NotImplementedError)) and re.search(
        r"dtype|BFloat16|Half|bfloat16|float16|scalar type|not implemented for|should be the same", text) is not None


@functools.cache
def _probe_picture() -> np.ndarray:
    """A crop of a real photograph (scikit-image's astronaut: face, fabric, flag), 8-bit RGB."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[120:320, 150:350])


def _picture_for(model: LoadedModel) -> np.ndarray:
    spec = model.spec
    side = max(_PROBE_SIDE, spec.minimum_size + 5 + (spec.minimum_size % 2 == 0))
    height, width = side, side if spec.square else side + 6  # 47 x 53 unless the model wants squares
    import cv2

    picture = cv2.resize(_probe_picture(), (width, height), interpolation=cv2.INTER_AREA)
    if spec.input_channels == 1:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)[..., None]
    return picture


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    peak = 65535.0 if a.dtype == np.uint16 else 255.0 if a.dtype == np.uint8 else 1.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(peak * peak / mse))  # 99: the same pixels


def probe(model: LoadedModel, device: torch.device, dtype: torch.dtype) -> Verdict:
    """Run ``model`` on the probe picture in fp32 and in ``dtype``, on a copy: the model itself is left as it was
    (weights rounded to bf16 and back are not fp32's weights)."""
    picture = _picture_for(model)
    trial = LoadedModel(model.spec, copy.deepcopy(model.descriptor))
    place_model(trial, device, torch.float32)
    reference = enhance(trial, picture, None, EngineOptions(device=device, dtype=torch.float32, tile=0)).color
    place_model(trial, device, dtype)
    try:
        reduced = enhance(trial, picture, None, EngineOptions(device=device, dtype=dtype, tile=0)).color
    except Exception as exc:  # noqa: BLE001 - any failure of the reduced precision is the verdict
        return Verdict(False, error=_short(exc))
    psnr = round(_psnr(reference, reduced), 1)
    return Verdict(bool(np.isfinite(reduced.astype(np.float64)).all() and psnr >= MIN_PSNR), psnr)


def _short(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def parameter_millions(model: LoadedModel) -> float:
    """The model's size in millions of parameters: what a conversion's or a probe's time is estimated from."""
    return sum(parameter.numel() for parameter in model.module.parameters()) / 1e6


def device_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {cpu_model()}"
    return device.type


def _record() -> Path:
    return user_cache("precision-verdicts.json")


def recall(key: str) -> object:
    """What a probe recorded under ``key`` in the user cache's record of model probes (None: nothing yet)."""
    return read_record(_record()).get(key)


def remember(key: str, value: object) -> None:
    """Record a probe's finding ``value`` (JSON) under ``key``, beside the others, so no later process probes
    again; a read-only cache records nothing (every process then probes)."""
    update_record(_record(), key, value)


def checked(model: LoadedModel, device: torch.device, dtype: torch.dtype, model_hash: str,
            notice: Notice | None = None) -> Verdict:
    """The verdict for ``model`` (whose file hashes to ``model_hash``) in ``dtype`` on ``device``: recorded, or
    probed now (said to ``notice``) and recorded. The model is left as it was."""
    key = f"{model_hash} | {device_kind(device)} | {precision_name(dtype)} | torch {torch.__version__}"
    entry = recall(key)
    if isinstance(entry, dict) and isinstance(entry.get("ok"), bool):
        return Verdict(entry["ok"], entry.get("psnr"), entry.get("error"))
    name = precision_name(dtype)
    with Step(f"checking that {model.spec.name} runs in {name} on {device_kind(device)} (once per model and machine)",
              kind="precision probe", size=parameter_millions(model), notice=notice) as step:
        verdict = probe(model, device, dtype)
        step.found = (f"{model.spec.name} runs in {name}" if verdict.ok else
                      f"{model.spec.name} stays in fp32: {verdict.reason(dtype)}")
    remember(key, asdict(verdict))
    return verdict
