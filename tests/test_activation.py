"""The measured activation table: every registry family has its figure, lookups follow width and scale, and what
was not measured gets the fallback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_compact_state, tiny_rrdb_state
from restorecli.engine import activation
from restorecli.engine.activation import (
    MARGIN,
    MEASURED,
    Measured,
    bytes_per_pixel,
    fallback_bytes_per_pixel,
    measured_bytes_per_pixel,
    variant_of,
)
from restorecli.engine.model import LoadedModel, ModelSpec
from restorecli.models.loading import load_model
from restorecli.models.registry import REGISTRY

# restorecli's registry names architectures as the original projects do; spandrel's ids are these
SPANDREL_ID = {"RRDBNet": "ESRGAN", "SRVGGNetCompact": "Compact"}


def _load(tmp_path, state, name):
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    return load_model(str(path), tmp_path)


def _x2plus_state():
    """A tiny RealESRGAN x2plus: the 4x RRDBNet behind a pixel-unshuffle (12 input channels)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def _point(architecture, variant, scale):
    found = [p for p in MEASURED if (p.architecture, p.variant, p.scale) == (architecture, variant, scale)]
    assert found, f"no measured point for {architecture} {variant!r} x{scale}"
    return min(found, key=lambda p: p.width)


def _width_scaled(point, value, spec, item):
    io = item * (spec.input_channels + spec.output_channels * point.scale**2)
    return io + (value - io) * spec.max_features / point.width


def test_every_registry_upscaler_has_a_measured_point_in_both_precisions():
    for entry in REGISTRY.values():
        if entry.kind != "sr":
            continue
        variant = {"realesrgan-x2plus": "shuffle_factor=2"}.get(entry.name, "")
        variant = "window_size=8" if entry.architecture == "SCUNet" else variant
        point = _point(SPANDREL_ID.get(entry.architecture, entry.architecture), variant, entry.scale)
        assert point.fp32 > 0 and point.bf16 is not None and point.bf16 > 0, entry.name
    assert activation.MEASURED_WITH.count(";") >= 3  # machine; torch and spandrel; date; device


@pytest.mark.parametrize("family,scale", [("compact", 2), ("compact", 3), ("compact", 4), ("rrdb", 4), ("rrdb", 2),
                                          ("x2plus", 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_loaded_tiny_model_of_each_registry_family_gets_its_measured_figure(tmp_path, family, scale, dtype):
    state = {"compact": lambda: tiny_compact_state(scale), "rrdb": lambda: tiny_rrdb_state(scale),
             "x2plus": _x2plus_state}[family]()
    model = _load(tmp_path, state, f"{family}{scale}")
    assert model.spec.scale == scale
    architecture = "Compact" if family == "compact" else "ESRGAN"
    point = _point(architecture, "shuffle_factor=2" if family == "x2plus" else "", scale)
    assert variant_of(model.module) == point.variant
    item = 4 if dtype == torch.float32 else 2
    expected = _width_scaled(point, point.fp32 if dtype == torch.float32 else point.bf16, model.spec, item)
    assert measured_bytes_per_pixel(model, dtype) == pytest.approx(expected)
    assert bytes_per_pixel(model, dtype) == int(expected * MARGIN) + 1


def test_depth_does_not_change_the_figure_and_width_does(tmp_path):
    shallow = _load(tmp_path, tiny_compact_state(4, num_conv=2), "shallow")
    deep = _load(tmp_path, tiny_compact_state(4, num_conv=6), "deep")
    assert bytes_per_pixel(shallow, torch.float32) == bytes_per_pixel(deep, torch.float32)
    wide = LoadedModel(replace(shallow.spec, max_features=128), shallow.descriptor)
    assert bytes_per_pixel(wide, torch.float32) > bytes_per_pixel(shallow, torch.float32)


def _fake(architecture="Compact", scale=4, width=64, variant_attributes=None, **spec_fields):
    spec = ModelSpec(name="m", path=Path("m"), architecture=architecture, scale=scale, default_outscale=float(scale),
                     input_channels=3, output_channels=3, supports_half=True, supports_bfloat16=True, multiple_of=1,
                     minimum_size=0, square=False, tileable=True, max_features=width)
    spec = replace(spec, **spec_fields)
    module = SimpleNamespace(**(variant_attributes or {}))
    return LoadedModel(spec, SimpleNamespace(architecture=SimpleNamespace(id=architecture), model=module))


def test_an_architecture_or_variant_not_measured_gets_the_fallback():
    unknown = _fake(architecture="NoSuchNet")
    for dtype in (torch.float32, torch.bfloat16):
        assert measured_bytes_per_pixel(unknown, dtype) is None
        assert bytes_per_pixel(unknown, dtype) == fallback_bytes_per_pixel(unknown.spec, dtype)
    odd = _fake(architecture="ESRGAN", variant_attributes={"shuffle_factor": 4})  # an x1 RealESRGAN, not measured
    assert bytes_per_pixel(odd, torch.float32) == fallback_bytes_per_pixel(odd.spec, torch.float32)


def test_the_fallback_is_the_formula_used_before_measuring():
    spec = _fake(architecture="NoSuchNet", width=64).spec
    assert fallback_bytes_per_pixel(spec, torch.bfloat16) == 2 * 64 * (6 + 32) + 16 * 16 == 5120


def test_scales_between_and_beyond_those_measured(monkeypatch):
    points = (Measured("Net", "", 2, 64, 1000, 600, "x2"), Measured("Net", "", 4, 64, 3400, 1800, "x4"))
    monkeypatch.setattr(activation, "MEASURED", points)
    at = {s: measured_bytes_per_pixel(_fake("Net", scale=s), torch.float32) for s in (1, 2, 3, 4, 8)}
    assert at[2] == pytest.approx(1000) and at[4] == pytest.approx(3400)
    # between: body + up * scale**2 through the neighbours
    assert at[3] == pytest.approx(1000 + (3400 - 1000) / (16 - 4) * (9 - 4))
    assert at[8] == pytest.approx(3400 * 64 / 16)  # beyond: grown with the output's area, an upper bound
    assert at[1] == pytest.approx(1000)  # below: the smallest scale measured, an upper bound


def test_half_precision_reads_the_bf16_column_or_else_the_fp32_one(monkeypatch):
    monkeypatch.setattr(activation, "MEASURED", (Measured("Net", "", 4, 64, 3000, 1500, "x4"),))
    model = _fake("Net")
    assert measured_bytes_per_pixel(model, torch.float16) == measured_bytes_per_pixel(model, torch.bfloat16) == 1500
    monkeypatch.setattr(activation, "MEASURED", (Measured("Net", "", 4, 64, 3000, None, "x4"),))  # bf16 failed
    assert measured_bytes_per_pixel(model, torch.bfloat16) == 3000


def test_variants_are_read_off_the_network():
    assert variant_of(SimpleNamespace()) == ""
    assert variant_of(SimpleNamespace(upsampler="nearest+conv", window_size=8)) == \
        "upsampler=nearest+conv window_size=8"
    assert variant_of(SimpleNamespace(upsampler=torch.nn.PixelShuffle(2), shuffle_factor=None)) == ""
    assert variant_of(SimpleNamespace(window_size=(8, 8), shuffle_factor=2)) == "window_size=8x8 shuffle_factor=2"
