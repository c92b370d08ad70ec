"""Colourisation with DDColor (issue 32, "Colour"): ``--colorize auto|always|never``. DDColor-T's network is randomly
initialised and saved in the layout of the released ``ddcolor_paper_tiny.pth`` (``helpers.ddcolor``), then loaded
through the registry entry ``ddcolor-tiny`` whose hash the tests set to the random file's, as a download would load.

DDColor runs here at 128 x 128 instead of its published 512 x 512 (``engine.colour.INPUT_SIZE``): the network is
convolutions and attention over its own features, so any multiple of 32 runs it the same way, and 128 keeps each
image's pass well under a second on a CPU."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from conftest import psnr
from helpers.cli import invoke, items_of, json_lines, worked_once
from helpers.ddcolor import TONE, write_tiny_ddcolor
from restorecli.engine import colour
from restorecli.models.integrity import sha256_of
from restorecli.models.registry import REGISTRY

pytest.importorskip("spandrel_extra_arches", reason="spandrel-extra-arches (restorecli[colorize], also in [test]) "
                    "is not installed: DDColor's architecture comes from it")

TEST_SIZE = 128


@pytest.fixture(scope="module")
def patched():
    """For the module: DDColor at ``TEST_SIZE``, and ``ddcolor-tiny``'s hash set to the random checkpoint's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(colour, "INPUT_SIZE", TEST_SIZE)
        yield patch


@pytest.fixture(scope="module")
def weights(tmp_path_factory, patched):
    """A weights folder holding the random DDColor-T under the release's file name, and a tiny 2x upscaler."""
    from safetensors.torch import save_file

    from conftest import tiny_compact_state

    folder = tmp_path_factory.mktemp("weights")
    checkpoint = write_tiny_ddcolor(folder / REGISTRY["ddcolor-tiny"].filename)
    patched.setitem(REGISTRY, "ddcolor-tiny", dataclasses.replace(REGISTRY["ddcolor-tiny"],
                                                                  sha256=sha256_of(checkpoint)))
    save_file(tiny_compact_state(2), str(folder / "up2.safetensors"))
    return folder


def _gray(height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """A gray picture: a ramp from dark to light under some texture (uint8, H x W)."""
    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(30, 220, width, dtype=np.float32), (height, 1))
    return np.clip(ramp + rng.normal(0, 12, ramp.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A gray PNG, a gray scan saved as an RGB JPEG, a colour photo, a 16-bit gray PNG and a gray RGBA PNG."""
    folder = tmp_path_factory.mktemp("inputs")
    gray = _gray()
    cv2.imwrite(str(folder / "gray.png"), gray)
    cv2.imwrite(str(folder / "scan.jpg"), cv2.merge([_gray(seed=1)] * 3), [cv2.IMWRITE_JPEG_QUALITY, 92])
    photo = cv2.merge([gray, np.flipud(gray), np.fliplr(gray)])
    cv2.imwrite(str(folder / "photo.png"), photo)
    cv2.imwrite(str(folder / "deep.png"), _gray(seed=2).astype(np.uint16) * 257 + 100)
    alpha = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))
    cv2.imwrite(str(folder / "veiled.png"), cv2.merge([_gray(seed=3)] * 3 + [alpha]))
    return folder


def _restore(source, out, weights, *extra):
    return invoke("restore", source, "-o", out, "--model", weights / "up2.safetensors", "--weights-dir", weights,
                  "--colorize-model", "ddcolor-tiny", "--device", "cpu", "--precision", "fp32", "--backend", "torch",
                  "--json", *extra)


@pytest.fixture(scope="module")
def runs(inputs, weights, tmp_path_factory):
    """The folder restored with ``--colorize never`` and with ``--colorize auto``: (result, output folder) each."""
    done = {}
    for mode in ("never", "auto"):
        out = tmp_path_factory.mktemp(f"out-{mode}")
        done[mode] = (_restore(inputs, out, weights, "--colorize", mode), out)
    return done


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _lightness(bgr: np.ndarray) -> np.ndarray:
    """CIE L* (0 to 100) of 8- or 16-bit pixels, one plane or BGR(A), through OpenCV's own conversion."""
    planes = bgr if bgr.ndim == 3 else bgr[:, :, None]
    planes = planes[:, :, :3] if planes.shape[2] >= 3 else np.repeat(planes, 3, axis=2)
    scale = 65535.0 if bgr.dtype == np.uint16 else 255.0
    return cv2.cvtColor((planes / scale).astype(np.float32), cv2.COLOR_BGR2Lab)[:, :, 0]


def _by_name(result) -> dict[str, dict]:
    return {line["input"].rsplit("/", 1)[-1]: line for line in items_of(result)}


# ----------------------------------------------------------------------------- through the command line


def test_auto_colourises_a_gray_png_and_keeps_its_lightness(runs):
    (never, plain), (auto, coloured) = runs["never"], runs["auto"]
    assert never.exit_code == 0 and auto.exit_code == 0, auto.stderr
    assert _by_name(auto)["gray.png"]["colorized"] is True
    assert "colorized" not in _by_name(never)["gray.png"]  # without --colorize no line speaks of colour
    summary = json_lines(auto)[-1]
    assert summary["colorize_model"] == "ddcolor-tiny"
    before, after = _read(plain / "gray.png"), _read(coloured / "gray.png")
    assert before.ndim == 2 and after.shape == (*before.shape, 3) and after.dtype == np.uint8
    blue, red = after[:, :, 0].astype(int), after[:, :, 2].astype(int)
    assert (red - blue).mean() > 8  # the checkpoint's warm tone: b > 0 makes red above blue
    assert psnr(_lightness(after), _lightness(before), peak=100.0) >= 40


def test_auto_takes_a_gray_scan_saved_as_rgb_and_leaves_a_colour_photo_alone(runs):
    (_, plain), (auto, coloured) = runs["never"], runs["auto"]
    lines = _by_name(auto)
    assert lines["scan.jpg"]["colorized"] is True
    assert lines["photo.png"]["colorized"] is False
    assert np.array_equal(_read(coloured / "photo.png"), _read(plain / "photo.png"))
    scan = _read(coloured / "scan.jpg")
    assert (scan[:, :, 2].astype(int) - scan[:, :, 0]).mean() > 8


def test_always_colourises_a_colour_photo_but_not_an_animations_frames(inputs, weights, tmp_path, runs):
    """Frames are not colourised (each would take its own guess, and the colours would flicker): the item says so."""
    from test_animated import make_animation

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "photo.png").write_bytes((inputs / "photo.png").read_bytes())
    make_animation(folder / "clip.png")
    result = _restore(folder, tmp_path / "out", weights, "--colorize", "always")
    assert result.exit_code == 0, result.stderr
    lines = _by_name(result)
    assert lines["photo.png"]["colorized"] is True
    clip = lines["clip.png"]
    assert clip["status"] == "ok" and clip["video"] and clip["colorized"] is False
    plain, coloured = _read(runs["never"][1] / "photo.png"), _read(tmp_path / "out" / "photo.png")
    assert not np.array_equal(plain, coloured)
    assert psnr(_lightness(coloured), _lightness(plain), peak=100.0) >= 40


def test_sixteen_bit_stays_sixteen_bit_and_alpha_is_untouched(runs):
    (_, plain), (auto, coloured) = runs["never"], runs["auto"]
    lines = _by_name(auto)
    assert lines["deep.png"]["colorized"] is True and lines["veiled.png"]["colorized"] is True
    deep, deep_plain = _read(coloured / "deep.png"), _read(plain / "deep.png")
    assert deep.dtype == np.uint16 and deep.shape == (*deep_plain.shape, 3)
    assert len(np.unique(deep[:, :, 1] % 257)) > 1  # 16-bit levels, not 8-bit ones widened
    assert psnr(_lightness(deep), _lightness(deep_plain), peak=100.0) >= 40
    veiled, veiled_plain = _read(coloured / "veiled.png"), _read(plain / "veiled.png")
    assert veiled.shape[2] == 4 and np.array_equal(veiled[:, :, 3], veiled_plain[:, :, 3])
    assert (veiled[:, :, 2].astype(int) - veiled[:, :, 0]).mean() > 8


def test_a_streamed_file_and_the_whole_image_on_stdout_are_the_same_pixels(inputs, weights, runs):
    """The file of the ``auto`` run went a strip at a time to its PNG; ``-o -`` colours the whole image in memory."""
    result = invoke("restore", inputs / "veiled.png", "-o", "-", "--model", weights / "up2.safetensors",
                    "--weights-dir", weights, "--colorize", "auto", "--colorize-model", "ddcolor-tiny", "--device",
                    "cpu", "--precision", "fp32", "--backend", "torch", "--format", "png")
    assert result.exit_code == 0, result.stderr
    whole = cv2.imdecode(np.frombuffer(result.stdout_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(whole, _read(runs["auto"][1] / "veiled.png"))


def test_the_output_records_its_colourisation(runs):
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    coloured, plain = runs["auto"][1] / "gray.png", runs["never"][1] / "gray.png"
    assert recorded_stages(decode_image(coloured.read_bytes(), coloured.name).xmp) == ["model:up2",
                                                                                      "colorize:ddcolor-tiny"]
    assert recorded_stages(decode_image(plain.read_bytes(), plain.name).xmp) == ["model:up2"]


def test_models_lists_the_colourisers_with_licence_and_purpose():
    # the table a person reads (on stderr), wide enough that no cell wraps
    text = " ".join(invoke("models", env={"COLUMNS": "250"}).stderr.split())
    for name in ("ddcolor", "ddcolor-tiny"):
        assert name in text
    assert "colorizer" in text and "Colourises grayscale photos" in text
    rows = {row["name"]: row for row in json.loads(invoke("models", "--json").stdout)["models"]}
    assert rows["ddcolor"]["licence"] == "Apache-2.0" and rows["ddcolor"]["kind"] == "colorizer"
    assert REGISTRY["ddcolor"].urls == ("https://huggingface.co/piddnad/DDColor-models/resolve/main/"
                                        "ddcolor_modelscope.pth",)


def test_missing_weights_name_the_file_and_the_download(inputs, tmp_path, weights):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "up2.safetensors").write_bytes((weights / "up2.safetensors").read_bytes())
    result = invoke("restore", inputs / "gray.png", "-o", tmp_path / "out", "--model", empty / "up2.safetensors",
                    "--weights-dir", empty, "--colorize", "auto", "--device", "cpu", "--backend", "torch")
    assert result.exit_code == 3  # a setup error
    message = " ".join(result.stderr.split())
    assert "ddcolor_modelscope.pth" in message and "restorecli download-weights ddcolor" in message


def test_a_missing_extra_is_named(inputs, tmp_path, weights, monkeypatch):
    from restorecli.models import loading

    monkeypatch.setattr(loading, "extra_arches_installed", lambda: False)
    result = _restore(inputs / "gray.png", tmp_path, weights, "--colorize", "auto")
    assert result.exit_code == 3
    assert "pip install 'restorecli[colorize]'" in " ".join(result.stderr.split())


def test_a_checkpoint_that_is_not_ddcolor_is_refused(inputs, tmp_path, weights):
    result = invoke("restore", inputs / "gray.png", "-o", tmp_path, "--model", weights / "up2.safetensors",
                    "--colorize", "always", "--colorize-model", weights / "up2.safetensors", "--device", "cpu",
                    "--backend", "torch")
    assert result.exit_code == 3
    assert "up2.safetensors: is a" in result.stderr and "not a DDColor colouriser" in " ".join(result.stderr.split())


def test_download_weights_from_a_file_takes_ddcolor_and_refuses_another_network(weights, tmp_path):
    """``ddcolor`` has no published hash: a local DDColor file is checked to be DDColor, then pinned."""
    folder = tmp_path / "weights"
    other = invoke("download-weights", "--from", weights / "up2.safetensors", "--name", "ddcolor", "--weights-dir",
                   folder)
    assert other.exit_code == 3 and "not a DDColor colouriser" in " ".join(other.stderr.split())
    assert not (folder / "ddcolor_modelscope.pth").exists()
    imported = invoke("download-weights", "--from", weights / "ddcolor_paper_tiny.pth", "--name", "ddcolor",
                      "--weights-dir", folder)
    assert imported.exit_code == 0, imported.stderr
    listed = json.loads(invoke("models", "--weights-dir", folder, "--json").stdout)["models"]
    assert {row["name"]: row["status"] for row in listed}["ddcolor"] == "installed"


def test_a_wrong_mode_is_a_usage_error(inputs, tmp_path):
    result = invoke("restore", inputs / "gray.png", "-o", tmp_path, "--colorize", "sometimes")
    assert result.exit_code == 2
    assert "--colorize 'sometimes' is not one of never, auto, always" in " ".join(result.stderr.split())


# ----------------------------------------------------------------------------- the library


@pytest.fixture(scope="module")
def restorer(weights):
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    return Restorer.from_options(RestoreOptions(model=str(weights / "up2.safetensors"), weights_dir=str(weights),
                                                colorize="auto", colorize_model="ddcolor-tiny", device="cpu",
                                                precision="fp32", backend="torch", tile=32))  # strips: many


class _Rows:
    def __init__(self):
        self.parts: list[np.ndarray] = []

    def write(self, rows):
        self.parts.append(rows.copy())

    def restart(self):
        self.parts.clear()


@pytest.mark.parametrize("name", ["deep.png", "veiled.png"])
def test_streamed_and_whole_outputs_are_identical(restorer, inputs, name):
    """A strip at a time (tiled, so strips are many) and whole in memory give the same pixels, alpha included."""
    data, options = (inputs / name).read_bytes(), restorer.options
    prepared = restorer.prepare(data, name, options, "png")
    assert prepared.streams and prepared.colorized and prepared.planes == (3 if name == "deep.png" else 4)
    whole = restorer.enhance(prepared, name, options, "png").result
    rows = _Rows()
    restorer.enhance_rows(prepared, name, options, "png", rows)
    assert len(rows.parts) > 1
    streamed = np.concatenate(rows.parts)
    expected = whole.color if whole.alpha is None else np.concatenate((whole.color, whole.alpha[:, :, None]), axis=2)
    assert streamed.dtype == expected.dtype and np.array_equal(streamed, expected)


def test_colour_comes_from_the_input_before_the_upscaler(restorer, inputs):
    """The plan is made from the input alone (DDColor sees it squeezed to its square) and only sized to the output."""
    from restorecli.images import decode_image

    decoded = decode_image((inputs / "gray.png").read_bytes(), "gray.png")
    plan = restorer.colouriser.plan(decoded.color, (192, 128))
    assert plan.ab.shape == (2, TEST_SIZE, TEST_SIZE) and plan.size == (192, 128)
    assert np.allclose(plan.ab.mean(axis=(1, 2)), TONE, atol=2.0)  # the layer's bias dominates random weights


def test_auto_decides_by_the_pixels():
    gray = _gray()
    assert colour.is_grayscale(gray[:, :, None])
    scan = np.stack([gray, gray, gray], axis=2).astype(np.int16)
    scan[::7, ::5, 1] += 1  # a level's disagreement, as a JPEG's chroma rounding leaves
    assert colour.is_grayscale(np.clip(scan, 0, 255).astype(np.uint8))
    tinted = np.stack([gray, gray, np.clip(gray.astype(int) + 12, 0, 255).astype(np.uint8)], axis=2)
    assert not colour.is_grayscale(tinted)
    assert colour.wants_colour("always", tinted) and not colour.wants_colour("auto", tinted)
    assert not colour.wants_colour("never", gray[:, :, None])


def test_no_chroma_keeps_a_gray_image_as_it_was():
    """With a and b of zero, colourising gives each pixel back as it was, in three equal planes, at either depth."""
    for rows in (_gray()[:, :, None], _gray().astype(np.uint16)[:, :, None] * 257):
        plan = colour.ColourPlan(np.zeros((2, 8, 8), np.float32), (rows.shape[1], rows.shape[0]))
        out = colour.colourise(rows, plan, 0)
        assert out.dtype == rows.dtype and np.abs(out.astype(int) - rows.astype(int)).max() <= 1
        assert np.array_equal(out[:, :, 0], out[:, :, 2])


def test_chroma_is_upsampled_as_torch_does_bilinearly():
    import torch

    ab = np.random.default_rng(0).normal(0, 20, (2, 16, 16)).astype(np.float32)
    plan = colour.ColourPlan(ab, (50, 37))
    expected = torch.nn.functional.interpolate(torch.from_numpy(ab)[None], size=(37, 50), mode="bilinear",
                                               align_corners=False)[0].numpy().transpose(1, 2, 0)
    assert np.allclose(plan.rows(0, 37), expected, atol=1e-4)
    assert np.allclose(plan.rows(11, 20), expected[11:20], atol=1e-4)


def test_a_queued_job_colourises_and_its_results_say_so(inputs, weights, tmp_path):
    queue = tmp_path / "queue"
    submitted = invoke("submit", inputs / "gray.png", inputs / "photo.png", "--queue", queue, "--model",
                       weights / "up2.safetensors", "--weights-dir", weights, "--colorize", "auto",
                       "--colorize-model", "ddcolor-tiny", "--device", "cpu", "--precision", "fp32", "--backend",
                       "torch", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    status = worked_once(queue, json.loads(submitted.stdout)["job_id"])
    assert status["status"] == "completed" and status["setup"]["colorize_model"] == "ddcolor-tiny"
    recorded = json.loads((queue / "jobs" / status["job_id"] / "result.json").read_text())["results"]
    assert [result["colorized"] for result in recorded] == [True, False]
    coloured = _read(queue / status["results"][0]["output"])
    assert coloured.ndim == 3 and (coloured[:, :, 2].astype(int) - coloured[:, :, 0]).mean() > 8


def test_the_ray_actor_colourises_and_says_so(inputs, weights):
    """The Ray pool's actor, called in this process (tests/test_pool.py runs it so): its outcome, which the driver
    turns into the image's result, says whether the image was colourised."""
    from restorecli.distributed.actor import ImageTask, RestoreActor
    from restorecli.options import RestoreOptions

    options = RestoreOptions(model=str(weights / "up2.safetensors"), weights_dir=str(weights), colorize="auto",
                             colorize_model="ddcolor-tiny", device="cpu", precision="fp32", backend="torch")
    actor = RestoreActor()
    try:
        gray, photo = (actor.restore(ImageTask(name, (inputs / name).read_bytes(), options, "png", name[:-4]))
                       for name in ("gray.png", "photo.png"))
    finally:
        actor.close()  # its loop's threads end with the test, as they would with an actor's process
    assert gray.error is None and gray.colorized is True and photo.colorized is False
    coloured = cv2.imdecode(np.frombuffer(gray.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert coloured.ndim == 3 and (coloured[:, :, 2].astype(int) - coloured[:, :, 0]).mean() > 8


def test_the_colour_is_ddcolors_own_pipeline_at_the_models_size(restorer, monkeypatch):
    """On a gray image already DDColor's size (so no resize differs), colourising gives what piddnad/DDColor's own
    inference pipeline (``ColorizationPipeline.process``: OpenCV's float Lab conversions, written out here) gives
    with the same network, within a level of rounding. (spandrel's own DDColor wrapper approximates sRGB's curve by
    a 2.2 power, and differs from both by up to 10 levels in the shadows.)"""
    import torch

    side = 96
    monkeypatch.setattr(colour, "INPUT_SIZE", side)
    gray = _gray(side, side)
    ours = colour.colourise(gray[:, :, None], restorer.colouriser.plan(gray[:, :, None], (side, side)), 0)

    bgr = cv2.merge([gray] * 3).astype(np.float32) / 255  # as the pipeline reads a file: BGR, then / 255
    lightness = cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)[:, :, :1]
    zeros = np.zeros_like(lightness)
    model_input = cv2.cvtColor(np.concatenate((lightness, zeros, zeros), axis=2), cv2.COLOR_LAB2RGB)
    with torch.inference_mode():
        ab = restorer.colouriser.descriptor.model(torch.from_numpy(model_input.transpose(2, 0, 1))[None])
    lab = np.concatenate((lightness, ab[0].numpy().transpose(1, 2, 0)), axis=2)
    theirs = (cv2.cvtColor(lab, cv2.COLOR_LAB2BGR) * 255.0).round()[:, :, ::-1]  # its BGR output, as RGB
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_a_tall_image_is_coloured_a_band_at_a_time_as_it_would_be_whole(monkeypatch):
    """``colourise`` works a band of rows at a time (no full-size float temporaries): the bands join seamlessly."""
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (70, 40, 1), dtype=np.uint8)
    plan = colour.ColourPlan(rng.normal(0, 15, (2, 8, 8)).astype(np.float32), (40, 70))
    whole = colour.colourise(rows, plan, 0)
    monkeypatch.setattr(colour, "_BAND_ROWS", 16)
    assert np.array_equal(colour.colourise(rows, plan, 0), whole)
    assert np.array_equal(colour.colourise(rows[30:], plan, 30), whole[30:])
