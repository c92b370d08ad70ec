"""`restorecli evaluate`: metrics against independent computations, degradations, pairing, outputs, the report
in a real headless browser, and the real model against bicubic."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.metrics import structural_similarity

from conftest import TEST_INPUTS
from helpers.cli import invoke
from restorecli.evaluate.degrade import crop_to_multiple, degrade
from restorecli.evaluate.metrics import bt601_y, measure

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cli(*args):
    return invoke("evaluate", *args)


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# ----------------------------------------------------------------------------- metrics


def test_metrics_equal_an_independent_computation_with_border_and_y():
    rng = np.random.default_rng(3)
    ref = rng.random((40, 52, 3)).astype(np.float32)
    img = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    img[:4] = 0  # damage inside the border only: cropping 4 px must hide it
    m = measure(ref, img, border=4)
    r, i = ref[4:-4, 4:-4].astype(np.float64), img[4:-4, 4:-4].astype(np.float64)
    assert m.psnr_rgb == pytest.approx(10 * np.log10(1 / np.mean((r - i) ** 2)), rel=1e-9)
    y_r = (16 + 65.481 * r[..., 0] + 128.553 * r[..., 1] + 24.966 * r[..., 2]) / 255
    y_i = (16 + 65.481 * i[..., 0] + 128.553 * i[..., 1] + 24.966 * i[..., 2]) / 255
    assert m.psnr_y == pytest.approx(10 * np.log10(1 / np.mean((y_r - y_i) ** 2)), rel=1e-9)
    gauss = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert m.ssim_y == pytest.approx(structural_similarity(y_r, y_i, **gauss), rel=1e-9)
    per_channel = [structural_similarity(r[..., c], i[..., c], **gauss) for c in range(3)]
    assert m.ssim_rgb == pytest.approx(np.mean(per_channel), rel=1e-9)
    assert bt601_y(np.ones((1, 1, 3)))[0, 0] == pytest.approx(235 / 255)


def test_identity_gives_inf_and_one():
    ref = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    m = measure(ref, ref.copy(), border=4)
    assert m.psnr_rgb == m.psnr_y == float("inf") and m.ssim_rgb == m.ssim_y == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["bicubic", "blur-noise-jpeg"])
def test_degradations_are_deterministic_and_sized(mode):
    ref = crop_to_multiple(skimage.data.coffee()[:101, :143].astype(np.float32) / 255, 4)
    assert ref.shape == (100, 140, 3)
    a, b = degrade(ref, 4, mode, seed=7), degrade(ref, 4, mode, seed=7)
    assert a.shape == (25, 35, 3) and np.array_equal(a, b)
    if mode == "blur-noise-jpeg":
        assert not np.array_equal(a, degrade(ref, 4, mode, seed=8))
        assert np.abs(a - degrade(ref, 4, "bicubic", seed=7)).mean() > 0.005


# ----------------------------------------------------------------------------- the command


def test_synthetic_run_with_csv_and_json(make_model, tmp_path):
    first, second = make_model(4), make_model(4, "rrdb")
    out_csv = tmp_path / "r.csv"
    result = cli(TEST_INPUTS / "rocket.jpg", TEST_INPUTS / "cameraman_gray.png", "--models", f"{first},{second},{first}",
                 "--csv", out_csv, "--json", "--degrade", "blur-noise-jpeg", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    rows = lines(result)
    data = [r for r in rows if r["type"] == "row"]
    assert {r["method"] for r in data} == {"bicubic", "lanczos", first.stem, second.stem}  # a repeat counts once
    assert len(data) == 2 * 4
    summary = rows[-1]
    assert summary["type"] == "summary" and summary["images"] == 2 and summary["failed"] == 0
    assert summary["means"]["bicubic"]["psnr_y"] == pytest.approx(
        np.mean([r["psnr_y"] for r in data if r["method"] == "bicubic"]), abs=1e-5)
    with open(out_csv) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 8 and set(table[0]) >= {"image", "method", "psnr_rgb", "ssim_y", "seconds"}
    assert "SSIM Y" in result.stderr and "2 image(s), 0 failed" in result.stderr


def test_identical_pairs_report_inf_without_crashing(make_model, tmp_path):
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir(), hr.mkdir()
    photo = cv2.imread(str(TEST_INPUTS / "rocket.jpg"))
    cv2.imwrite(str(lr / "same.png"), photo)  # a 1x pair: the baselines return the input unchanged
    cv2.imwrite(str(hr / "same.png"), photo)
    result = cli("--lr", lr, "--hr", hr, "--models", make_model(1), "--scale", "1", "--json")
    assert result.exit_code == 0, result.stderr
    bicubic = next(r for r in lines(result) if r.get("method") == "bicubic")
    assert bicubic["psnr_rgb"] == "inf" and bicubic["ssim_y"] == pytest.approx(1.0)


def test_paired_mode_matches_stems_and_names_missing_partners(make_model, tmp_path):
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir(), hr.mkdir()
    photo = cv2.imread(str(TEST_INPUTS / "rocket.jpg"))
    cv2.imwrite(str(hr / "a.png"), photo)
    cv2.imwrite(str(lr / "a.jpg"), cv2.resize(photo, (24, 16), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(lr / "only-low.png"), photo[:16, :24])
    cv2.imwrite(str(hr / "only-high.png"), photo)
    result = cli("--lr", lr, "--hr", hr, "--models", make_model(4), "--json")
    assert result.exit_code == 1
    rows = lines(result)
    assert {r["method"] for r in rows if r["type"] == "row"} >= {"bicubic", "lanczos"}
    errors = {Path(r["image"]).name: r["error"] for r in rows if r["type"] == "error"}
    assert "no reference named only-low.* in" in errors["only-low.png"]
    assert "no low-resolution input named only-high.* in" in errors["only-high.png"]
    assert rows[-1]["images"] == 1 and rows[-1]["failed"] == 2
    assert "only-low" in result.stderr
    assert cli("--lr", lr, "--models", make_model(4)).exit_code == 2  # --lr without --hr


def test_failing_image_is_skipped_and_counted(make_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = cli(TEST_INPUTS / "rocket.jpg", bad, "--models", make_model(4), "--json")
    assert result.exit_code == 1
    assert lines(result)[-1]["images"] == 1 and lines(result)[-1]["failed"] == 1
    assert "bad.png: not an image" in result.stderr


def test_default_input_is_test_inputs_and_missing_weights_exit_3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(TEST_INPUTS, tmp_path / "test_inputs")
    result = cli("--models", "realesr-general-x4v3")
    assert result.exit_code == 3 and "download-weights realesr-general-x4v3" in result.stderr


def _chromium(*args, timeout=90):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return subprocess.run([CHROMIUM, *flags, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_a_real_browser(make_model, tmp_path):
    report = tmp_path / "report"
    result = cli(TEST_INPUTS / "rocket.jpg", TEST_INPUTS / "astronaut_face.jpg", "--models", make_model(4),
                 "--report", report)
    assert result.exit_code == 0, result.stderr
    page = report / "index.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained, works offline
    captions = re.findall(r"<figcaption><b>bicubic</b>(.*?)</figcaption>", text)
    assert len(captions) == 2 and all(re.fullmatch(r"PSNR RGB [\d.]+<br>SSIM RGB [\d.]+<br>PSNR Y [\d.]+<br>"
                                                   r"SSIM Y [\d.]+", c) for c in captions)  # one metric a line
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile1'}", "--virtual-time-budget=3000", "--dump-dom",
                    page.as_uri()).stdout
    assert 'data-images-ok="true"' in dom  # every <img> decoded with a real size
    assert dom.count('type="range"') == 2 and dom.count("<figure>") == 2 * 5
    shot = tmp_path / "shot.png"
    _chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1300,1000", f"--screenshot={shot}",
              page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the first row of crops holds the rocket photo: a broken image would be a flat placeholder
    crops = pixels[120:500, 20:1280]
    assert crops.std() > 25 and len(np.unique(crops.reshape(-1, 3), axis=0)) > 2000


@pytest.mark.real_weights
def test_real_model_beats_bicubic_on_y_ssim(real_weights, tmp_path):
    """Checked before asserting: on this 256 px crop of scikit-image's coffee() the converted realesrgan-x4plus
    scores Y-SSIM 0.883 against bicubic's 0.860 (bicubic degradation); on chelsea() it does not (0.658 vs 0.710)."""
    photo = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()[50:306, 150:406]).save(photo)
    result = cli(photo, "--models", "realesrgan-x4plus", "--weights-dir", real_weights, "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["method"]: r for r in lines(result) if r["type"] == "row"}
    assert rows["realesrgan-x4plus"]["ssim_y"] > rows["bicubic"]["ssim_y"] + 0.01


def test_face_enhance_is_passed_to_the_models(make_model, tmp_path):
    result = cli(TEST_INPUTS / "rocket.jpg", "--models", make_model(4), "--face-enhance", "--weights-dir",
                 tmp_path / "empty")
    assert result.exit_code == 3 and "download-weights gfpgan-1.4 retinaface-resnet50" in result.stderr


def test_a_pipe_given_as_an_image_is_reported_not_read(make_model, named_pipe):
    result = cli(TEST_INPUTS / "rocket.jpg", named_pipe, "--models", make_model(4), "--json")
    assert result.exit_code == 1
    assert lines(result)[-1]["images"] == 1 and lines(result)[-1]["failed"] == 1
    assert "pipe.png: is a named pipe, not an image file" in result.stderr


def test_report_and_csv_places_are_checked_before_the_evaluation(make_model, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    model = make_model(4)
    result = cli(TEST_INPUTS / "rocket.jpg", "--models", model, "--report", taken)
    assert result.exit_code == 2 and f"--report {taken}: is a file, not a folder" in result.stderr
    assert "evaluating" not in result.stderr and "PSNR" not in result.stderr  # nothing ran
    result = cli(TEST_INPUTS / "rocket.jpg", "--models", model, "--csv", taken / "metrics.csv")
    assert result.exit_code == 2 and f"--csv {taken}: is a file, not a folder" in result.stderr
    result = cli(TEST_INPUTS / "rocket.jpg", "--models", model, "--csv", tmp_path)
    assert result.exit_code == 2 and "is a folder; name the CSV file to write" in result.stderr
    assert taken.read_text() == "keep me"


def test_a_report_that_cannot_be_written_is_an_error_not_a_traceback(make_model, tmp_path, disk_fills):
    disk_fills(1)
    result = cli(TEST_INPUTS / "rocket.jpg", "--models", make_model(4), "--csv", tmp_path / "m.csv")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # an exit, not an exception
    assert "cannot write" in result.stderr and "No space left on device" in result.stderr
    assert not list(tmp_path.glob("*m.csv*"))  # no partial file under any name


def test_a_report_keeps_small_pictures_of_each_image_not_every_result(make_model, tmp_path):
    """An evaluation of many large images holds, per image, the crops and slider pictures the page shows, taken
    when the image is measured, instead of every full-size result until the page is written."""
    from restorecli.evaluate.pictures import CROP, SLIDER_WIDTH
    from restorecli.evaluate.run import EvalOptions, evaluate

    photo = tmp_path / "large.png"
    cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(TEST_INPUTS / "rocket.jpg")), (1600, 1200)))
    model = make_model(4)
    evaluation = evaluate([str(photo)], EvalOptions(models=(str(model),), keep_pictures=True))
    pictures = evaluation.images[0].pictures
    assert set(pictures.crops) == {"reference", "input", "bicubic", "lanczos", Path(model).stem}
    assert all(crop.dtype == np.uint8 and crop.shape[0] <= CROP for crop in pictures.crops.values())
    assert set(pictures.slider) == {"bicubic", pictures.best} and pictures.best == Path(model).stem
    assert all(image.shape == (480, SLIDER_WIDTH, 3) and image.dtype == np.uint8 for image in pictures.slider.values())
    held = sum(a.nbytes for a in [*pictures.crops.values(), *pictures.slider.values()])
    assert held < 2 << 20  # against 5 full-size float pictures, 1600 x 1200 x 3 x 4 bytes each: 115 MB
