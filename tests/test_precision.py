"""``--precision auto`` never fails where fp32 works, nor quietly returns a broken picture (issue 20, point 1).

Small random models of architectures spandrel says support bf16: SwinIR and Swin2SR, which cannot run in it on
most sizes; HAT and Compact, which can. The probe's quality check is shown with a network that runs in bf16 into
wrong pixels.
"""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import TEST_INPUTS
from helpers.cli import invoke
from restorecli.engine import device as engine_device
from restorecli.engine import precision
from restorecli.engine.model import LoadedModel
from restorecli.models.loading import load_model



def _swinir():
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(upscale=2, img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1,
                  upsampler="pixelshuffledirect")


def _swin2sr():
    from spandrel.architectures.Swin2SR import Swin2SR

    return Swin2SR(upscale=2, img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1,
                   upsampler="pixelshuffledirect")


def _hat():
    from spandrel.architectures.HAT import HAT

    return HAT(upscale=2, img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1,
               upsampler="pixelshuffle", compress_ratio=3, squeeze_factor=4, overlap_ratio=0.5)


def _compact():
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=2)


ARCHITECTURES = {"SwinIR": _swinir, "Swin2SR": _swin2sr, "HAT": _hat, "Compact": _compact}


@pytest.fixture
def model_file(tmp_path):
    def make(architecture: str):
        torch.manual_seed(0)
        state = {k: v.contiguous().clone() for k, v in ARCHITECTURES[architecture]().state_dict().items()}
        path = tmp_path / f"tiny-{architecture.lower()}.safetensors"
        save_file(state, str(path))
        return path

    return make


@pytest.fixture
def fast_bf16(monkeypatch):
    """A CPU on which bf16 measures fast, so that ``auto`` picks it (as on the machines these ran on)."""
    monkeypatch.setattr(engine_device, "cpu_bf16_speedup", lambda: 2.0)


def restore(*args):
    return invoke("restore", *args, "--json")


def summary(result) -> dict:
    return [json.loads(line) for line in result.stdout.splitlines() if '"summary"' in line][-1]


# ----------------------------------------------------------------------------- the probe


@pytest.mark.parametrize(("architecture", "ok"), [("SwinIR", False), ("Swin2SR", False), ("HAT", True),
                                                  ("Compact", True)])
def test_the_probe_keeps_bf16_only_where_the_model_runs_in_it(model_file, tmp_path, architecture, ok):
    model = load_model(str(model_file(architecture)), tmp_path)
    assert model.spec.supports_bfloat16  # spandrel says so for all four
    verdict = precision.probe(model, torch.device("cpu"), torch.bfloat16)
    assert verdict.ok is ok
    if ok:
        assert verdict.psnr >= precision.MIN_PSNR and verdict.error is None
    else:
        assert "dtype" in verdict.error and "fails in bf16" in verdict.reason(torch.bfloat16)


class _WrongInBf16(torch.nn.Module):
    """A 2x upscaler whose bf16 run is off by a fifth of the range: no error, a ruined picture."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, x):
        out = torch.nn.functional.pixel_shuffle(self.conv(x), 2)
        return out + 0.2 if x.dtype == torch.bfloat16 else out


class _Descriptor:
    """What the engine uses of a spandrel descriptor: the network, and moving it."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def to(self, where):
        self.model.to(where)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def test_the_probe_refuses_a_precision_that_runs_into_wrong_pixels(model_file, tmp_path):
    real = load_model(str(model_file("Compact")), tmp_path)  # its contract (2x, RGB), another network
    verdict = precision.probe(LoadedModel(real.spec, _Descriptor(_WrongInBf16())), torch.device("cpu"), torch.bfloat16)
    assert verdict.ok is False and verdict.error is None and verdict.psnr < precision.MIN_PSNR
    assert f"{verdict.psnr:.1f} dB from fp32's" in verdict.reason(torch.bfloat16)


def test_the_probe_picture_is_a_real_photo_of_an_awkward_size(model_file, tmp_path):
    model = load_model(str(model_file("SwinIR")), tmp_path)
    picture = precision._picture_for(model)
    assert picture.shape == (47, 53, 3) and picture.dtype == np.uint8
    assert all(side % 2 and side % 8 for side in picture.shape[:2])  # odd, a multiple of no window
    assert picture.std() > 20 and len(np.unique(picture)) > 100  # photo content, not a flat or tiny palette


# ----------------------------------------------------------------------------- through restore


def test_auto_falls_back_to_fp32_says_so_once_and_records_it(model_file, tmp_path, fast_bf16, monkeypatch):
    model = model_file("SwinIR")
    photos = [TEST_INPUTS / "rocket.jpg", TEST_INPUTS / "astronaut_face.jpg"]
    auto = restore(*photos, "--model", model, "-o", tmp_path / "auto")
    assert auto.exit_code == 0, auto.stderr
    found = summary(auto)
    assert found["precision"] == "fp32" and "fails in bf16" in found["precision_fallback"]
    assert auto.stderr.count("warning:") == 1 and "runs in fp32" in auto.stderr
    fp32 = restore(*photos, "--model", model, "-o", tmp_path / "fp32", "--precision", "fp32")
    assert fp32.exit_code == 0, fp32.stderr
    for photo in photos:  # the very pixels fp32 gives
        name = photo.with_suffix(".jpg").name
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "fp32" / name).read_bytes()
    record = json.loads((precision._record()).read_text())
    assert [entry["ok"] for entry in record.values()] == [False]

    def no_probe(*args):
        raise AssertionError("the verdict is recorded: no second probe")

    monkeypatch.setattr(precision, "probe", no_probe)
    again = restore(*photos, "--model", model, "-o", tmp_path / "again")
    assert again.exit_code == 0 and summary(again)["precision"] == "fp32"


def test_auto_keeps_bf16_where_the_model_runs_in_it(model_file, tmp_path, fast_bf16):
    result = restore(TEST_INPUTS / "rocket.jpg", "--model", model_file("HAT"), "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert summary(result)["precision"] == "bf16" and "precision_fallback" not in summary(result)
    assert "warning" not in result.stderr


def test_an_image_that_still_fails_in_bf16_under_auto_is_retried_in_fp32(model_file, tmp_path, fast_bf16,
                                                                         monkeypatch):
    """The probe's picture passed (here: the probe is told so), but an image of another size fails."""
    monkeypatch.setattr(precision, "checked", lambda *args: precision.Verdict(True, 60.0))
    monkeypatch.setattr("restorecli.pipeline.runner.checked", lambda *args: precision.Verdict(True, 60.0))
    photo = TEST_INPUTS / "rocket.jpg"
    result = restore(photo, "--model", model_file("SwinIR"), "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    found = summary(result)
    assert found["ok"] == 1 and found["precision"] == "fp32"
    assert "failed in bf16 on" in found["precision_fallback"] and "rocket.jpg" in found["precision_fallback"]
    written = cv2.imread(str(tmp_path / "out" / "rocket.jpg"))
    source = cv2.imread(str(photo))
    assert written.shape[:2] == (2 * source.shape[0], 2 * source.shape[1])


def test_an_explicit_bf16_stays_strict_and_says_what_to_do(model_file, tmp_path):
    result = restore(TEST_INPUTS / "rocket.jpg", "--model", model_file("SwinIR"), "-o", tmp_path / "out",
                     "--precision", "bf16")
    assert result.exit_code == 1
    (item,) = [json.loads(line) for line in result.stdout.splitlines() if '"item"' in line]
    assert item["status"] == "error"
    assert "SwinIR cannot run in bf16" in item["error"] and "--precision fp32" in item["error"]
    assert "rocket.jpg" in item["error"] and not (tmp_path / "out" / "rocket.jpg").exists()


def test_explicit_fp32_never_probes(model_file, tmp_path, fast_bf16, monkeypatch):
    monkeypatch.setattr("restorecli.pipeline.runner.checked", lambda *args: (_ for _ in ()).throw(AssertionError("probed")))
    result = restore(TEST_INPUTS / "rocket.jpg", "--model", model_file("SwinIR"), "-o", tmp_path / "out",
                     "--precision", "fp32")
    assert result.exit_code == 0 and summary(result)["precision"] == "fp32"


def test_the_verdict_is_keyed_by_file_hash_device_and_torch(model_file, tmp_path, fast_bf16):
    model = load_model(str(model_file("HAT")), tmp_path)
    verdict = precision.checked(model, torch.device("cpu"), torch.bfloat16, "abc123")
    (key,) = json.loads(precision._record().read_text())
    assert key.startswith("abc123 | cpu: ") and "| bf16 |" in key and key.endswith(f"torch {torch.__version__}")
    assert verdict.ok and model.module.conv_first.weight.dtype == torch.float32  # the model is left as it was
    assert replace(verdict) == precision.checked(model, torch.device("cpu"), torch.bfloat16, "abc123")
