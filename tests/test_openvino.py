"""The OpenVINO back-end (issue 31): a spandrel model converted once, cached in the user cache and checked against
torch; run through the same tiler; chosen by ``--backend openvino`` or by ``auto``'s measurement; a model it cannot
run stays on torch and says why. Tiny random models: a conversion takes a second or two."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from safetensors.torch import save_file

from conftest import TEST_INPUTS, read_rgb, tiny_rrdb_state
from helpers.cli import invoke, json_lines
from helpers.probes import FixedProbe
from restorecli.engine.backends import choice
from restorecli.engine.backends import openvino as ov_backend
from restorecli.engine.backends.choice import Candidate, Measurement, candidates, choose_backend
from restorecli.engine.device import place_model
from restorecli.engine.model import LoadedModel
from restorecli.engine.precision import MIN_PSNR, _psnr
from restorecli.engine.tiling import upscale
from restorecli.errors import DeviceMissing, UsageError
from restorecli.models.integrity import sha256_of
from restorecli.models.loading import load_model

if not ov_backend.available():
    pytest.skip("the OpenVINO back-end needs the openvino package (the extra restorecli[openvino], in the test extra)",
                allow_module_level=True)
openvino = ov_backend._openvino()  # as restorecli imports it: without its usage statistics

CPU = torch.device("cpu")
PHOTO = read_rgb(TEST_INPUTS / "rocket.jpg")


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts with no compiled model kept, as a new process would."""
    monkeypatch.setattr(ov_backend, "_COMPILED", {})


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The tiny model the tests run (an ESRGAN, x4plus's architecture), written once with its OpenVINO form (by the
    back-end's own ``convert``): name -> (weights, converted .xml). A conversion takes seconds; tests that are not
    about it start from this one."""
    folder = tmp_path_factory.mktemp("openvino-models")
    found = {}
    for name, state in (("rrdb-x4", tiny_rrdb_state(4)),):
        weights = folder / f"tiny-{name}.safetensors"
        save_file(state, str(weights))
        module = load_model(str(weights), folder).module
        ov_backend.convert(module, 3, folder / f"{name}.xml")
        found[name] = (weights, folder / f"{name}.xml")
    return found


@pytest.fixture
def tiny(converted, tmp_path):
    """``tiny(name)``: the weights of tiny model ``name`` copied into the test's folder, its conversion into the
    test's own user cache, where an earlier run would have left it."""

    def place(name: str) -> Path:
        weights, xml = converted[name]
        copy = tmp_path / "models" / weights.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(weights, copy)
        target = ov_backend.converted_path(sha256_of(copy))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(xml, target)
        shutil.copy(xml.with_suffix(".bin"), target.with_suffix(".bin"))
        return copy

    return place


@pytest.fixture
def rrdb(tiny) -> LoadedModel:
    path = tiny("rrdb-x4")
    return place_model(load_model(str(path), path.parent), CPU, torch.float32)


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Every conversion OpenVINO is asked for, counted (each still runs)."""
    made: list = []
    real = ov_backend.convert

    def counted(*args, **kwargs):
        made.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(ov_backend, "convert", counted)
    return made


@pytest.fixture
def photo_file(tmp_path):
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(PHOTO[20:50, 30:71, :3]), cv2.COLOR_RGB2BGR))
    return path


def _openvino(model: LoadedModel, precision: str = "fp32") -> LoadedModel:
    backend = ov_backend.OpenVinoBackend(model, sha256_of(model.spec.path), precision=precision)
    return LoadedModel(model.spec, model.descriptor, backend)


# --- the back-end against torch -----------------------------------------------------------------------------------


def test_openvino_matches_torch_on_a_tiled_image_without_seams(rrdb):
    """OpenVINO in fp32, cut into tiles (batches of several windows) by the same tiler: within 1e-4 of torch on the
    whole picture, so no seam shows where its tiles meet."""
    on_openvino = _openvino(rrdb)
    assert on_openvino.runner.capabilities.backend == "openvino" and on_openvino.runner.capabilities.device == "cpu"
    crop = np.ascontiguousarray(PHOTO[10:47, 5:58, :3]).astype(np.float32) / 255
    whole = upscale(rrdb, crop, device=CPU, tile=0)
    tiled = upscale(on_openvino, crop, device=CPU, tile=16, pad=8, batch=3)
    assert tiled.tiles > 4 and tiled.image.shape == whole.image.shape == (148, 212, 3)
    assert float(np.abs(tiled.image - whole.image).max()) <= 1e-4


def test_openvino_bf16_stays_within_the_precision_probe_s_bound(rrdb):
    if "bf16" not in ov_backend.precisions_for("CPU"):
        pytest.skip("OpenVINO lists no BF16 among this CPU's OPTIMIZATION_CAPABILITIES (no AVX-512 BF16 or AMX)")
    crop = np.ascontiguousarray(PHOTO[10:42, 5:37, :3]).astype(np.float32) / 255
    reference = upscale(rrdb, crop, device=CPU, tile=0).image
    reduced = upscale(_openvino(rrdb, "bf16"), crop, device=CPU, tile=0).image
    assert _psnr(reference, reduced) >= MIN_PSNR


def test_the_conversion_is_cached_and_a_second_load_converts_nothing(make_model, conversions):
    path = make_model(scale=2)
    model = place_model(load_model(str(path), path.parent), CPU, torch.float32)
    digest = sha256_of(path)
    _openvino(model)
    assert len(conversions) == 1
    saved = ov_backend.converted_path(digest)
    assert saved.is_file() and saved.with_suffix(".bin").is_file()
    assert saved.name == f"{digest}-fp32-openvino-{ov_backend.version()}.xml"  # the weights' hash, OpenVINO's version
    ov_backend._COMPILED.clear()  # another process: it reads the converted model and the recorded check
    again = _openvino(model)
    assert len(conversions) == 1 and not list(saved.parent.glob(".converting-*"))
    crop = np.ascontiguousarray(PHOTO[:20, :24, :3]).astype(np.float32) / 255
    assert float(np.abs(upscale(again, crop, device=CPU, tile=0).image
                        - upscale(model, crop, device=CPU, tile=0).image).max()) <= 1e-4


def test_a_model_openvino_cannot_convert_stays_on_torch_and_says_why(make_model, photo_file, tmp_path, monkeypatch,
                                                                      conversions):
    def refuses(*args, **kwargs):  # as OpenVINO's PyTorch front end does on an operation it has no conversion for
        raise openvino.frontend.OpConversionFailure("Model wasn't fully converted: aten::frobnicate is not supported")

    monkeypatch.setattr(openvino, "convert_model", refuses)
    tiny = make_model(scale=2)
    for run in ("first", "second"):
        done = invoke("restore", photo_file, "-o", tmp_path / run, "--model", tiny, "--backend", "openvino",
                      "--json")
        assert done.exit_code == 0, done.stderr
        summary = json_lines(done)[-1]
        assert summary["backend"] == "torch" and summary["precision"] == "fp32"
        assert "OpenVINO cannot run" in summary["backend_reason"] and "frobnicate" in summary["backend_reason"]
        assert summary["backend_reason"].endswith("torch runs it")
    assert len(conversions) == 1  # the failure was recorded: the second run did not try again


def test_a_result_too_far_from_torch_stays_on_torch(rrdb, monkeypatch):
    monkeypatch.setattr(ov_backend, "F32_TOLERANCE", 0.0)  # the check, held to exactness that fp32 never meets
    with pytest.raises(ov_backend.OpenVinoUnfit, match="max abs from torch in fp32"):
        _openvino(rrdb)
    chosen = choice.BackendChoice(Candidate("openvino", "cpu", "fp32"), "asked for")
    settled, backend = choice.realise(chosen, rrdb, None, CPU, lambda: sha256_of(rrdb.spec.path))
    assert backend is None and settled.candidate == Candidate("torch", "cpu", "fp32") and settled.fell_back


# --- through the command line -------------------------------------------------------------------------------------


def test_restore_backend_openvino_runs_on_openvino_and_says_so(tiny, photo_file, tmp_path, conversions):
    model = tiny("rrdb-x4")
    pictures = {}
    for backend in ("openvino", "torch"):
        done = invoke("restore", photo_file, "-o", tmp_path / backend, "--model", model, "--backend", backend,
                      "--device", "cpu", "--precision", "fp32", "--tile", "16", "--json")
        assert done.exit_code == 0, done.stderr
        summary = json_lines(done)[-1]
        assert (summary["backend"], summary["device"], summary["precision"]) == (backend, "cpu", "fp32")
        pictures[backend] = read_rgb(tmp_path / backend / "photo.png").astype(int)
    assert pictures["openvino"].shape == (120, 164, 3)
    assert np.abs(pictures["openvino"] - pictures["torch"]).max() <= 1
    assert conversions == []  # the conversion an earlier run left in the user cache


CONVERT_COUNTING_FORKS = """
import os, runpy, sys
forks = []
real_fork = os.fork
os.fork = lambda: forks.append(1) or real_fork()
sys.argv = ["restorecli", *sys.argv[1:]]
try:
    runpy.run_module("restorecli", run_name="__main__")
except SystemExit as done:
    code = done.code
print("forks", len(forks), "exit", code)
"""


def test_a_conversion_sends_no_usage_statistics_and_forks_nothing(make_model, photo_file, tmp_path):
    """OpenVINO's converter reports each conversion to Google Analytics, from a process it forks off a worker
    thread, unless the user declined with OpenVINO's own script; a restore that converts a model sends nothing and
    forks nothing (a fork beside a video's decoding threads could hang for good), in a fresh process with no
    answer recorded and no CI variable (which would silence it anyway)."""
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    done = subprocess.run([sys.executable, "-c", CONVERT_COUNTING_FORKS, "restore", str(photo_file), "-o",
                           str(tmp_path / "out"), "--model", str(make_model(kind="rrdb")), "--backend", "openvino",
                           "--device", "cpu", "--precision", "fp32", "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines()[-1] == "forks 0 exit 0", done.stderr
    assert json.loads(done.stdout.splitlines()[-2])["backend"] == "openvino", done.stdout
    assert list(home.glob("**/*.xml")), "no conversion was made: the test converts nothing"
    assert not (home / "intel").exists(), sorted(home.rglob("*"))  # the client id OpenVINO's telemetry writes


def test_backend_openvino_without_the_package_is_a_usage_error_naming_the_extra(make_model, photo_file, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(ov_backend, "available", lambda: False)
    done = invoke("restore", photo_file, "-o", tmp_path / "o", "--model", make_model(scale=2), "--backend",
                  "openvino")
    assert done.exit_code == 2 and "restorecli[openvino]" in done.stderr and "openvino package" in done.stderr
    assert not (tmp_path / "o").exists()


def test_openvino_devices_are_refused_where_they_cannot_run(make_model, photo_file, tmp_path):
    tiny = make_model(scale=2)
    missing = invoke("restore", photo_file, "-o", tmp_path / "o", "--model", tiny, "--device", "openvino:NPU7")
    assert missing.exit_code == 3 and "no such device" in missing.stderr and "CPU" in missing.stderr
    on_torch = invoke("restore", photo_file, "-o", tmp_path / "o", "--model", tiny, "--backend", "torch",
                      "--device", "openvino:GPU")
    assert on_torch.exit_code == 2 and "only the OpenVINO back-end" in on_torch.stderr


# --- the choice -----------------------------------------------------------------------------------------------------


@pytest.mark.openvino_auto
def test_auto_converts_from_the_fp32_weights_before_it_places_the_model_in_bf16(make_model, conversions, monkeypatch):
    """An earlier version converted the model inside auto's probe, after torch's copy was placed in bf16: the
    "fp32" conversion held bf16-rounded weights (x4plus: 57 dB from torch fp32 instead of 92), passed its check
    against the same rounded weights, and was cached for good. The conversion and its fp32 check are now made
    before the model is placed, earlier versions' files are not read, and a conversion from reduced weights is
    refused."""
    path = make_model(kind="rrdb")
    model, digest = load_model(str(path), path.parent), sha256_of(path)
    window = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = model.module(window).clamp(0, 1)
    earlier = ov_backend.converted_path(digest).with_name(f"{digest}-openvino-{ov_backend.version()}.xml")
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text("<net/>")  # an earlier version's conversion, maybe from rounded weights
    for backend, dtype in (("torch", torch.bfloat16), ("auto", torch.float32)):  # nothing to convert ahead for
        choice.prepare_openvino(backend, "cpu", CPU, dtype, model, lambda: digest)
    assert conversions == [] and earlier.exists()
    choice.prepare_openvino("auto", "cpu", CPU, torch.bfloat16, model, lambda: digest)
    assert conversions == [ov_backend.converted_path(digest)] and not earlier.exists()
    place_model(model, CPU, torch.bfloat16)
    fp32 = ov_backend.OpenVinoBackend(model, digest, precision="fp32")  # the converted file, checked already
    assert float((fp32.run(window) - exact).abs().max()) <= ov_backend.F32_TOLERANCE
    if "bf16" in ov_backend.precisions_for("CPU"):  # its check (in dB) needs no fp32 weights
        assert float((ov_backend.OpenVinoBackend(model, digest, precision="bf16").run(window) - exact).abs().max()) < 0.1
    ov_backend.converted_path(digest).unlink()
    monkeypatch.setattr(ov_backend, "_COMPILED", {})
    with pytest.raises(ov_backend.OpenVinoUnfit, match="weights are torch.bfloat16 here: OpenVINO converts"):
        ov_backend.OpenVinoBackend(model, digest, precision="fp32")


def test_the_copies_compiled_for_the_candidates_not_chosen_are_let_go(rrdb):
    """auto's probe and prepare compile OpenVINO copies of the model for candidates it may not choose; each held
    the model's weights and buffers for the process's life (a server's, a worker's). Once the choice is made only
    the one chosen is kept, and another model's copies are left alone."""
    digest = sha256_of(rrdb.spec.path)
    for precision in ov_backend.precisions_for("CPU"):
        ov_backend.compiled_model(rrdb, digest, "CPU", precision)
    ov_backend._COMPILED[("another model", "CPU", "fp32")] = object()
    kept = set(ov_backend._COMPILED)

    chosen = choice.BackendChoice(Candidate("openvino", "cpu", "fp32"), "measured fastest")
    ran, backend = choice.realise(chosen, rrdb, None, CPU, lambda: digest)
    assert ran == chosen and isinstance(backend, ov_backend.OpenVinoBackend)
    assert set(ov_backend._COMPILED) == {(digest, "CPU", "fp32"), ("another model", "CPU", "fp32")} <= kept
    window = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert backend.run(window).shape == (1, 3, 64, 64)

    ran, on_torch = choice.realise(choice.BackendChoice(Candidate("torch", "cpu", "fp32"), "measured fastest"),
                                   rrdb, None, CPU, lambda: digest)
    assert on_torch is None and set(ov_backend._COMPILED) == {("another model", "CPU", "fp32")}
    assert torch.equal(backend.run(window), backend.run(window))  # a back-end built before keeps its copy


def test_a_choice_where_nothing_was_compiled_does_not_hash_the_weights(rrdb):
    def unasked() -> str:
        raise AssertionError("the weights were hashed")

    ran, backend = choice.realise(choice.BackendChoice(Candidate("torch", "cpu", "fp32"), "asked for"),
                                  rrdb, None, CPU, unasked)
    assert backend is None and ran.candidate == Candidate("torch", "cpu", "fp32")


@pytest.mark.openvino_auto
def test_auto_weighs_openvino_on_the_cpu_in_each_precision_it_runs():
    cpu_precisions = ov_backend.precisions_for("CPU")
    found = candidates("auto", "cpu", "auto", CPU, "fp32", None)
    assert found == [Candidate("torch", "cpu", "fp32")] + [Candidate("openvino", "cpu", p) for p in cpu_precisions]
    assert candidates("auto", "cpu", "fp32", CPU, "fp32", None)[1:] == [Candidate("openvino", "cpu", "fp32")]
    assert candidates("openvino", "auto", "auto", CPU, "fp32", None) == [Candidate("openvino", "cpu", "fp32")]
    assert choice.host_device("openvino:GPU") == choice.host_device("auto", "openvino") == "cpu"
    assert not choice.runs_torch("openvino", "cpu") and not choice.runs_torch("auto", "openvino:GPU")
    with pytest.raises(DeviceMissing, match="openvino:NPU7: OpenVINO finds no such device"):
        candidates("openvino", "openvino:npu7", "auto", CPU, "fp32", None)
    with pytest.raises(UsageError, match="not on cuda"):
        candidates("openvino", "cuda", "auto", torch.device("cuda"), "fp16", None)


class _Timings(FixedProbe):
    def __init__(self, seconds: dict[str, float]):
        super().__init__()
        self.seconds = seconds

    def one(self, candidate: Candidate) -> Measurement:
        return Measurement(self.seconds.get(f"{candidate.backend} {candidate.precision}", 5.0),
                           None if candidate.backend == "torch" else 60.0)


@pytest.mark.openvino_auto
def test_auto_records_openvino_s_time_and_reads_it_after(tmp_path):
    from restorecli.engine import precision

    first = _Timings({"torch fp32": 2.0, "openvino fp32": 1.0})
    chosen = choose_backend("auto", "cpu", "fp32", None, CPU, torch.float32, None, lambda: "hash", first)
    assert chosen.candidate == Candidate("openvino", "cpu", "fp32")
    assert "openvino on cpu in fp32 1.000 s" in chosen.reason
    again = _Timings({"torch fp32": 0.1})
    assert choose_backend("auto", "cpu", "fp32", None, CPU, torch.float32, None, lambda: "hash",
                          again).candidate.backend == "openvino" and again.asked == []
    record = json.loads(precision._record().read_text())
    assert any(key.startswith("speed | hash | cpu: ") and f"| openvino {ov_backend.version()} |" in key
               and key.endswith("openvino fp32") for key in record)


@pytest.mark.openvino_auto
def test_restore_auto_measures_openvino_for_real_and_runs_what_was_fastest(tiny, photo_file, tmp_path):
    """The real speed probe (no time asserted): every candidate is timed, OpenVINO's result compared with torch's,
    and the JSON says what ran and why; the second run measures nothing (the record is read)."""
    model = tiny("rrdb-x4")
    done = invoke("restore", photo_file, "-o", tmp_path / "a", "--model", model, "--device", "cpu", "--precision",
                  "fp32", "--json")
    assert done.exit_code == 0, done.stderr
    summary = json_lines(done)[-1]
    assert summary["backend_reason"].startswith("measured fastest")
    assert "openvino on cpu in fp32" in summary["backend_reason"] and "torch on cpu" in summary["backend_reason"]
    again = invoke("restore", photo_file, "-o", tmp_path / "b", "--model", model, "--device", "cpu", "--precision",
                   "fp32", "--json")
    assert json_lines(again)[-1]["backend_reason"] == summary["backend_reason"]
    assert (json_lines(again)[-1]["backend"], json_lines(again)[-1]["precision"]) == (summary["backend"],
                                                                                      summary["precision"])


def test_devices_lists_the_devices_openvino_finds(monkeypatch):
    monkeypatch.setattr(ov_backend, "openvino_devices", lambda: ("CPU", "GPU.0", "NPU"))
    names = {"GPU.0": "Intel(R) Arc(TM) A770 Graphics (dGPU)", "NPU": "Intel(R) AI Boost"}
    monkeypatch.setattr(ov_backend, "device_name", lambda device: names[device])
    listed = invoke("devices", "--json")
    assert listed.exit_code == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert found["openvino"] == ov_backend.version() and "openvino" in found["devices"][0]["backends"]
    assert found["devices"][-2:] == [
        {"device": "openvino:GPU.0", "backends": ["openvino"], "name": names["GPU.0"], "kind": "gpu", "memory_mb": None},
        {"device": "openvino:NPU", "backends": ["openvino"], "name": names["NPU"], "kind": "npu", "memory_mb": None}]
    text = invoke("devices")
    assert text.exit_code == 0 and "openvino:NPU\topenvino\tIntel(R) AI Boost" in text.stdout


@pytest.mark.openvino_auto
def test_sixteen_bit_images_run_in_fp32_where_auto_chose_openvino_bf16(tiny, tmp_path, monkeypatch):
    """``auto`` never gives a 16-bit image a reduced precision: where it chose OpenVINO in bf16, a 16-bit PNG runs
    on torch in fp32 instead, to the same pixels as ``--backend torch --precision fp32``."""
    if "bf16" not in ov_backend.precisions_for("CPU"):
        pytest.skip("OpenVINO lists no BF16 among this CPU's OPTIMIZATION_CAPABILITIES: auto cannot choose it")

    class Probe(FixedProbe):  # stands for the speed probe: OpenVINO bf16 measures fastest
        def one(self, candidate: Candidate) -> Measurement:
            fast = candidate.backend == "openvino" and candidate.precision == "bf16"
            return Measurement(0.1 if fast else 1.0, None if candidate.backend == "torch" else 60.0)

    monkeypatch.setattr(choice, "SpeedProbe", Probe)
    model = tiny("rrdb-x4")
    picture = tmp_path / "in" / "deep.png"
    picture.parent.mkdir()
    deep = cv2.imread(str(TEST_INPUTS / "chelsea_16bit.png"), cv2.IMREAD_UNCHANGED)[:24, :30]
    assert deep.dtype == np.uint16
    cv2.imwrite(str(picture), deep)
    done = invoke("restore", picture, "-o", tmp_path / "auto", "--model", model, "--device", "cpu", "--json")
    assert done.exit_code == 0, done.stderr
    summary = json_lines(done)[-1]
    assert (summary["backend"], summary["precision"], summary["precision_16bit"]) == ("openvino", "bf16", "fp32")
    torch_fp32 = invoke("restore", picture, "-o", tmp_path / "torch", "--model", model, "--backend", "torch",
                        "--device", "cpu", "--precision", "fp32", "--json")
    assert torch_fp32.exit_code == 0, torch_fp32.stderr
    ours = cv2.imread(str(tmp_path / "auto" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert ours.dtype == np.uint16 and np.array_equal(ours, cv2.imread(str(tmp_path / "torch" / "deep.png"),
                                                                      cv2.IMREAD_UNCHANGED))


def test_models_verbose_says_how_each_model_stands_with_openvino(tiny, make_model, photo_file, tmp_path,
                                                                 monkeypatch):
    """``models --verbose`` says per model whether OpenVINO runs it: converted and checked (in which precisions),
    not converted yet, why it stays on torch, whether ``auto`` weighs it, and the package's absence."""
    from restorecli.models.registry import REGISTRY, ModelEntry

    weights = tiny("rrdb-x4").parent
    make_model(scale=2).rename(weights / "tiny-refused.safetensors")
    for name, architecture, scale in (("tiny-ov", "ESRGAN", 4), ("tiny-refused", "SRVGGNetCompact", 2)):
        file = "tiny-rrdb-x4.safetensors" if name == "tiny-ov" else "tiny-refused.safetensors"
        monkeypatch.setitem(REGISTRY, name, ModelEntry(name, "sr", architecture, scale, file, (), "MIT", "a test"))

    def statuses() -> dict[str, str]:
        listed = invoke("models", "--weights-dir", weights, "--verbose", "--json")
        assert listed.exit_code == 0, listed.stderr
        return {row["name"]: row.get("openvino") for row in json.loads(listed.stdout)["models"]}

    before = statuses()
    converted = ov_backend.converted_path(sha256_of(weights / "tiny-rrdb-x4.safetensors"))
    assert before["tiny-ov"].startswith(f"converted ({converted}), not checked against torch yet")
    assert "--backend auto leaves OpenVINO out" in before["tiny-ov"]  # the suite runs with RESTORECLI_AUTO_CONVERT=0
    assert before["tiny-refused"].startswith("not converted yet")
    assert before["realesrgan-x4plus"] == "not installed" and before["gfpgan-1.4"].startswith("torch only")

    def refuses(*args, **kwargs):
        raise openvino.frontend.OpConversionFailure("Model wasn't fully converted: aten::frobnicate is not supported")

    monkeypatch.setattr(openvino, "convert_model", refuses)
    for name in ("tiny-ov", "tiny-refused"):
        done = invoke("restore", photo_file, "-o", tmp_path / name, "--model", name, "--weights-dir", weights,
                      "--backend", "openvino", "--precision", "fp32", "--json")
        assert done.exit_code == 0, done.stderr
    after = statuses()
    assert after["tiny-ov"].startswith("converted (") and "runs in fp32 (checked against torch)" in after["tiny-ov"]
    assert after["tiny-refused"].startswith("stays on torch in fp32: ") and "frobnicate" in after["tiny-refused"]
    text = invoke("models", "--weights-dir", weights, "--verbose")
    assert "openvino: tiny-refused: stays on torch in fp32:" in text.stderr
    assert "ncnn: tiny-ov:" in text.stderr  # beside ncnn's line, as before

    monkeypatch.setattr(ov_backend, "available", lambda: False)
    assert statuses()["tiny-ov"] == f"not used: it needs the openvino package ({ov_backend.INSTALL})"
