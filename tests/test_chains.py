"""Model chains, presets and the processing record (issue 32): models run in order, each stage tiled seam-free,
the stages recorded in the output's XMP and in the JSON result, a queued job keeping its chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_INPUTS, psnr
from helpers.cli import invoke, json_lines
from restorecli.cli.app import app
from typer.testing import CliRunner


@pytest.fixture
def denoiser(tmp_path) -> Path:
    """A tiny random DnCNN (a 1x restoration model: spandrel's purpose "Restoration") in KAIR's key layout."""
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(1)
    path = tmp_path / "models" / "tiny-dncnn.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save(DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R").state_dict(), path)
    return path


def scunet_state() -> dict[str, torch.Tensor]:
    """A small random SCUNet in the official checkpoint's layout (its key names, as scunet_color_real_psnr.pth)."""
    from spandrel.architectures.SCUNet import SCUNet

    torch.manual_seed(2)
    return SCUNet(in_nc=3, config=[1, 1, 1, 1, 1, 1, 1], dim=64).state_dict()


def restored(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_chain_runs_its_models_in_order_and_their_scales_multiply(tmp_path, denoiser, model2):
    """``--model A --model B``: the 1x model, then the 2x one, as running them one after the other would; the JSON
    result and the output's metadata name both, in order."""
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "out", "--model", denoiser, "--model",
                    model2, "--format", "png", "--device", "cpu", "--precision", "fp32", "--tile", "0", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json_lines(result)[-1]
    assert summary["chain"] == ["tiny-dncnn", model2.stem] and summary["model"] == f"tiny-dncnn,{model2.stem}"
    output = tmp_path / "out" / "rocket.png"
    assert Image.open(output).size == (192, 128)  # 1x then 2x
    assert recorded_stages(decode_image(output.read_bytes(), output.name).xmp) == ["model:tiny-dncnn",
                                                                                   f"model:{model2.stem}"]
    one_by_one = np.asarray(Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB"))
    for model in (denoiser, model2):
        one_by_one = Restorer.from_options(RestoreOptions(model=str(model), device="cpu", precision="fp32",
                                                          tile=0)).restore_array(one_by_one)
    assert np.array_equal(restored(output), one_by_one)


def test_chain_outscale_is_the_final_scale_of_the_input(tmp_path, denoiser, model2):
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, "--chain", f"{denoiser}, {model2}",
                    "--outscale", "3", "--format", "png")
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "rocket.png").size == (288, 192)


def test_each_stage_of_a_chain_is_seam_free_under_tiling(denoiser, model2):
    """Tiled (32-pixel tiles: six on the photo) and whole, each model of the chain gives the same planes (45 dB)."""
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    chain = f"{denoiser},{model2}"
    tiled, whole = (Restorer.from_options(RestoreOptions(model=chain, device="cpu", precision="fp32", backend="torch",
                                                         tile=tile))
                    for tile in (32, 0))
    assert len(tiled.before.stages) == 1 and tiled.before.stages[0].engine.tile == 32 and tiled.engine.tile == 32
    image = np.asarray(Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB"))
    for tiled_stage, whole_stage in zip((*tiled.before.stages, tiled), (*whole.before.stages, whole)):
        tiled_planes = tiled_stage.run_stage(image, None, "rocket.jpg", None)[0]
        whole_planes = whole_stage.run_stage(image, None, "rocket.jpg", None)[0]
        assert psnr(tiled_planes, whole_planes) >= 45
    assert psnr(tiled.restore_array(image), whole.restore_array(image)) >= 45


def test_a_queued_job_keeps_its_chain(tmp_path, denoiser, model2):
    queue = tmp_path / "queue"
    submitted = invoke("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue, "--model", denoiser, "--model",
                       model2, "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    status = json.loads(invoke("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "completed" and status["setup"]["chain"] == ["tiny-dncnn", model2.stem]
    assert Image.open(queue / status["results"][0]["output"]).size == (192, 128)


def test_a_chain_re_run_resumes_with_what_is_missing(tmp_path, denoiser, model2):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (inputs / name).write_bytes((TEST_INPUTS / "rocket.jpg").read_bytes())
    args = ("restore", inputs, "-o", tmp_path / "out", "--model", denoiser, "--model", model2, "--json")
    assert invoke(*args).exit_code == 0
    (tmp_path / "out" / "b.jpg").unlink()
    again = invoke(*args)
    assert again.exit_code == 0, again.stderr
    assert {line["input"].rsplit("/", 1)[-1]: line["status"] for line in json_lines(again)
            if line["type"] == "item"} == {"a.jpg": "skipped", "b.jpg": "ok"}
    assert Image.open(tmp_path / "out" / "b.jpg").size == (192, 128)


@pytest.mark.parametrize("bad, code, named", [("nosuchmodel", 2, "nosuchmodel"),
                                              ("missing/model.pth", 3, "missing/model.pth")])
def test_a_bad_model_in_a_chain_is_named_before_any_model_loads(tmp_path, model2, bad, code, named):
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, "--model", model2, "--model", bad)
    assert result.exit_code == code
    assert named in result.stderr and "2 of the chain" in result.stderr
    assert not list(tmp_path.glob("rocket*"))


def test_an_empty_name_in_a_chain_is_a_usage_error(tmp_path, model2):
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, "--chain", f"{model2},,")
    assert result.exit_code == 2 and "one empty here" in result.stderr


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_every_output_format_records_what_was_done(tmp_path, model2, fmt):
    """The processing record (restorecli:Stages in the XMP packet) reads back from every format written."""
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, "--model", model2, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    output = next(tmp_path.glob("rocket.*"))
    assert recorded_stages(decode_image(output.read_bytes(), output.name).xmp) == [f"model:{model2.stem}"]


def test_a_restored_output_restored_again_keeps_its_earlier_stages(tmp_path, model2):
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    first = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "one", "--model", model2,
                   "--outscale", "1")
    second = invoke("restore", tmp_path / "one" / "rocket.jpg", "-o", tmp_path / "two", "--model", model2,
                    "--outscale", "1", "--format", "png")
    assert first.exit_code == second.exit_code == 0, second.stderr
    xmp = decode_image((tmp_path / "two" / "rocket.png").read_bytes(), "rocket.png").xmp
    assert recorded_stages(xmp) == [f"model:{model2.stem}"] * 2
    assert xmp.count(b"restorecli:Stages>") == 2  # one property (its start and end tags), not one per run


def test_the_record_joins_an_input_s_own_packet_and_keeps_it_byte_for_byte():
    from restorecli.images.metadata import record_processing, recorded_stages

    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-'
              b'ns#"><rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Wedding, '
              b'1962</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>')
    recorded = record_processing(packet, ["model:a", "faces:<b & c>"])
    assert recorded_stages(recorded) == ["model:a", "faces:<b & c>"]
    assert recorded.startswith(packet[: packet.index(b"</rdf:RDF>")]) and recorded.endswith(b"</rdf:RDF></x:xmpmeta>")
    assert record_processing(packet, []) is packet and record_processing(None, []) is None
    assert recorded_stages(record_processing(None, ["model:a"])) == ["model:a"]
    assert record_processing(b"<not xml", ["model:a"]) == b"<not xml"  # no place for it: left as it is


def test_a_repeated_model_is_a_chain_that_drops_no_value(tmp_path):
    """``restore --model A --model B`` once ran B alone and exited 0: now both run, in order, whichever way each is
    spelt; here the first is no model, which the run names as the chain's first."""
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, "--model", "nosuch", "--model=b")
    assert result.exit_code == 2, result.stderr
    assert "unknown model 'nosuch'" in result.stderr and "model 1 of the chain's 2" in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_chain_written_to_stdout_equals_its_streamed_file(tmp_path, denoiser, model2):
    """The whole-image path (``-o -``) and the streamed one (a PNG written a strip at a time) agree."""
    args = ("--model", denoiser, "--model", model2, "--format", "png")
    streamed = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, *args)
    whole = CliRunner().invoke(app, ["restore", "-", "-o", "-", *map(str, args)],
                               input=(TEST_INPUTS / "rocket.jpg").read_bytes())
    assert streamed.exit_code == whole.exit_code == 0, whole.stderr
    assert whole.stdout_bytes == (tmp_path / "rocket.png").read_bytes()


# ----------------------------------------------------------------------------- presets


@pytest.fixture
def official_scunet(tmp_path, monkeypatch) -> Path:
    """A weights folder holding a small random SCUNet under scunet-color-real-psnr's release file name, its registry
    hash the file's own (the published one rightly refuses a random file)."""
    import dataclasses

    from restorecli.models.integrity import sha256_of
    from restorecli.models.registry import REGISTRY

    weights = tmp_path / "weights"
    weights.mkdir()
    path = weights / REGISTRY["scunet-color-real-psnr"].filename
    torch.save(scunet_state(), path)
    monkeypatch.setitem(REGISTRY, "scunet-color-real-psnr",
                        dataclasses.replace(REGISTRY["scunet-color-real-psnr"], sha256=sha256_of(path), size=None))
    return weights


def test_models_lists_the_presets_with_what_they_lack(tmp_path):
    listed = invoke("models", "--presets", "--json", "--weights-dir", tmp_path)
    assert listed.exit_code == 0, listed.stderr
    presets = {row["name"]: row for row in json.loads(listed.stdout)["presets"]}
    assert presets["old-photo"]["models"] == ["scunet-color-real-psnr", "realesrgan-x4plus"]
    assert presets["old-photo"]["face_enhance"] and "scunet-color-real-psnr" in presets["old-photo"]["missing"]
    table = invoke("models", "--presets", "--weights-dir", tmp_path, env={"COLUMNS": "250"})
    assert table.exit_code == 0
    assert "old-photo" in table.stderr and "scunet-color-real-psnr -> realesrgan-x4plus" in table.stderr
    assert "download-weights scunet-color-real-psnr" in table.stderr


def test_a_preset_runs_its_models_and_records_them(tmp_path, official_scunet):
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "out", "--preset", "denoise",
                    "--weights-dir", official_scunet, "--format", "png", "--json", "--backend", "torch",
                    "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    assert json_lines(result)[-1]["model"] == "scunet-color-real-psnr"
    output = tmp_path / "out" / "rocket.png"
    assert Image.open(output).size == (96, 64)  # 1x
    assert recorded_stages(decode_image(output.read_bytes(), output.name).xmp) == ["model:scunet-color-real-psnr"]


def test_a_preset_whose_weights_are_missing_says_what_to_fetch(tmp_path):
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "out", "--preset", "jpeg-photo",
                    "--weights-dir", tmp_path / "empty")
    assert result.exit_code == 3
    assert "fbcnn-color" in result.stderr and "download-weights fbcnn-color" in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, said", [(("--preset", "old-photo", "--model", "realesrgan-x2plus"), "give one of"),
                                        (("--preset", "no-such"), "old-photo")])
def test_a_preset_given_with_other_models_or_unknown_is_a_usage_error(tmp_path, args, said):
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, *args)
    assert result.exit_code == 2 and said in result.stderr


def test_a_queued_preset_keeps_its_chain(tmp_path):
    queue = tmp_path / "queue"
    submitted = invoke("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue, "--preset", "old-photo", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    from restorecli.jobs.store import JobStore

    store = JobStore(queue)
    try:
        job = store.get(json.loads(submitted.stdout)["job_id"])
    finally:
        store.close()
    assert job.options["model"] == "scunet-color-real-psnr,realesrgan-x4plus" and job.options["face_enhance"]
    assert job.options["preset"] == "old-photo"


def test_an_animation_through_a_chain_has_the_chain_s_size(tmp_path, denoiser, model2):
    """An animated GIF's frames go through every model of the chain, its output sized for the chain."""
    frames = [Image.fromarray(np.full((24, 32, 3), value, np.uint8)) for value in (40, 200)]
    source = tmp_path / "blink.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = invoke("restore", source, "-o", tmp_path / "out", "--model", model2, "--model", denoiser)
    assert result.exit_code == 0, result.stderr
    written = Image.open(tmp_path / "out" / "blink.gif")
    assert written.size == (64, 48) and written.n_frames == 2  # 2x, then 1x


def test_each_model_of_a_chain_keeps_its_own_precision_and_fallback(tmp_path, monkeypatch, model2):
    """Under ``--precision auto`` on a CPU where bf16 is fast, the chain's SwinIR (which fails in bf16) falls back
    to fp32 alone, named in the summary's ``precision_fallback``, while the Compact after it keeps bf16."""
    from safetensors.torch import save_file

    from restorecli.engine import device as engine_device
    from test_precision import ARCHITECTURES

    monkeypatch.setattr(engine_device, "cpu_bf16_speedup", lambda: 2.0)
    torch.manual_seed(0)
    swinir = tmp_path / "tiny-swinir.safetensors"
    save_file({k: v.contiguous().clone() for k, v in ARCHITECTURES["SwinIR"]().state_dict().items()}, str(swinir))
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "out", "--model", swinir, "--model",
                    model2, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json_lines(result)[-1]
    assert summary["chain"] == ["tiny-swinir", model2.stem] and summary["precision"] == "bf16"
    assert summary["precision_fallback"].startswith("tiny-swinir: ") and "bf16" in summary["precision_fallback"]


def test_a_model_spandrel_discourages_tiling_runs_whole_unless_it_would_not_fit(tmp_path, monkeypatch):
    """SCUNet (the presets' denoiser): with --tile auto, one tile whatever the CPU's fastest window, where memory
    holds the whole image; tiles only where it would not (a large scan on the CPU, instead of running out)."""
    from restorecli.engine.tiling import memory
    from restorecli.models.loading import load_model

    path = tmp_path / "scunet.pth"
    torch.save(scunet_state(), path)
    model = load_model(str(path), tmp_path)
    assert model.spec.tileable and model.spec.tiles_only_to_fit
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "available_memory", lambda device: 1 << 40)
    assert len(memory.auto_plan(model, 512, 512, device=cpu, dtype=torch.float32, pad=24, window=128).tiles) == 1
    monkeypatch.setattr(memory, "available_memory", lambda device: 64 << 20)
    assert len(memory.auto_plan(model, 512, 512, device=cpu, dtype=torch.float32, pad=24, window=128).tiles) > 1


@pytest.mark.parametrize("name, channels, dtype", [("chelsea_16bit.png", 3, np.uint16),
                                                   ("cameraman_gray.png", 1, np.uint8),
                                                   ("coffee_alpha.png", 4, np.uint8)])
def test_a_chain_keeps_an_image_s_depth_grey_and_alpha(tmp_path, denoiser, model2, name, channels, dtype):
    """16 bits stay 16 bits from model to model, grey stays grey, alpha goes through each model with the colour."""
    import cv2

    result = invoke("restore", TEST_INPUTS / name, "-o", tmp_path, "--model", denoiser, "--model", model2,
                    "--backend", "torch", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    written = cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
    source = cv2.imread(str(TEST_INPUTS / name), cv2.IMREAD_UNCHANGED)
    assert written.dtype == dtype and (written.shape[2] if written.ndim == 3 else 1) == channels
    assert written.shape[:2] == (source.shape[0] * 2, source.shape[1] * 2)


def test_fbcnn_in_the_released_layout_runs_by_name_first_in_a_chain(tmp_path, monkeypatch, model2):
    """jpeg-photo's first model: a small random FBCNN saved under fbcnn-color's release file name (its registry hash
    the file's own), loaded by name through the resolver a download goes through, then a 2x model: 1x x 2x."""
    import dataclasses

    from spandrel.architectures.FBCNN import FBCNN

    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages
    from restorecli.models.integrity import sha256_of
    from restorecli.models.registry import REGISTRY

    weights = tmp_path / "weights"
    weights.mkdir()
    path = weights / REGISTRY["fbcnn-color"].filename
    torch.manual_seed(3)
    # the narrowest FBCNN that runs: its quality-factor layers are 512 wide whatever nc says, so nc[3] is 512;
    # nb=1 would fold the released file's key names
    torch.save(FBCNN(nc=[8, 16, 32, 512], nb=2).state_dict(), path)
    monkeypatch.setitem(REGISTRY, "fbcnn-color",
                        dataclasses.replace(REGISTRY["fbcnn-color"], sha256=sha256_of(path), size=None))
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "out", "--chain",
                    f"fbcnn-color,{model2}", "--weights-dir", weights, "--format", "png", "--json",
                    "--backend", "torch", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    assert json_lines(result)[-1]["chain"] == ["fbcnn-color", model2.stem]
    output = tmp_path / "out" / "rocket.png"
    assert Image.open(output).size == (192, 128)  # 96x64, 1x then 2x
    stages = recorded_stages(decode_image(output.read_bytes(), output.name).xmp)
    assert stages[0] == "model:fbcnn-color" and stages[1].startswith(f"model:{model2.stem}")
