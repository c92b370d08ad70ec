"""Back-ends (issue 31): the ncnn back-end runs ncnn models natively (CPU, and Vulkan where a device is found) under
the same tiler as torch, matching torch on the same weights; ``--backend auto`` picks by a speed probe recorded once
per machine (tested with injected timings: no assertion here depends on wall-clock time); ``restorecli devices``."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import TEST_INPUTS, read_rgb
from helpers.cli import invoke, step_events, worked_once
from helpers.probes import FixedProbe
from restorecli.engine.backends import choice, ncnn as ncnn_backend
from restorecli.engine.backends.choice import Candidate, Measurement, candidates, choose_backend, pick
from restorecli.engine.backends.ncnn import NcnnBackend, VulkanDevice
from restorecli.engine.device import place_model
from restorecli.engine.enhance import EngineOptions, enhance
from restorecli.engine.model import LoadedModel
from restorecli.engine.tiling import upscale
from restorecli.errors import DeviceMissing, DeviceUnavailable, UsageError
from restorecli.models.loading import load_model, native_graph_for
from restorecli.models.ncnn import native_graph

pytest.importorskip("ncnn", reason="the ncnn back-end needs the ncnn package (in the test extra)")

CPU = torch.device("cpu")
PHOTO = read_rgb(TEST_INPUTS / "rocket.jpg")


def _crop(height: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(PHOTO[20 : 20 + height, 30 : 30 + width, :3])


@pytest.fixture(scope="module")
def x4plus(real_weights) -> LoadedModel:
    return place_model(load_model("realesrgan-x4plus", real_weights), CPU, torch.float32)


@pytest.fixture
def anime_x2(embedded_dir, tmp_path):
    """The embedded 2x anime-video model, ncnn files copied into a folder of the test's own: a small network."""
    for suffix in (".param", ".bin"):
        shutil.copy(embedded_dir / f"realesr-animevideov3-x2{suffix}", tmp_path / f"anime-x2{suffix}")
    return tmp_path / "anime-x2.param"


@pytest.fixture
def photo_file(tmp_path):
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), cv2.cvtColor(_crop(20, 28), cv2.COLOR_RGB2BGR))
    return path


# --- the ncnn back-end against torch ------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_ncnn_runs_the_default_model_natively_as_torch_does_whole_and_tiled(x4plus):
    """The default model's own ncnn files (what its weights are converted from) on ncnn's CPU path, fp32: within
    1e-4 of torch on the same weights, whole and cut into tiles by the same tiler."""
    graph = native_graph_for(x4plus.spec.name, x4plus.spec.path)
    assert graph is not None and graph.param.suffix == ".param"
    on_ncnn = LoadedModel(x4plus.spec, x4plus.descriptor, NcnnBackend(graph))
    assert on_ncnn.runner.capabilities.backend == "ncnn" and x4plus.runner.capabilities.backend == "torch"
    crop = _crop(16, 20).astype(np.float32) / 255
    for tile, pad in ((0, 0), (8, 4)):
        reference = upscale(x4plus, crop, device=CPU, tile=tile, pad=pad)
        result = upscale(on_ncnn, crop, device=CPU, tile=tile, pad=pad)
        assert result.tiles == reference.tiles == (1 if tile == 0 else 6)
        assert result.image.shape == (64, 80, 3)
        assert float(np.abs(result.image - reference.image).max()) <= 1e-4


def test_ncnn_reads_the_network_before_a_published_graph_s_final_resize(anime_x2, tmp_path):
    """The 2x anime-video graph is the 4x network and a resize: ncnn reads the network's output, and restorecli's
    final resize makes it 2x, as it does for torch (same pixels within one level)."""
    graph = native_graph(anime_x2)
    assert graph.input_blob == "data" and graph.output_blob != "output"
    model = place_model(load_model(str(anime_x2), tmp_path), CPU, torch.float32)
    assert model.spec.scale == 4 and model.spec.default_outscale == 2
    on_ncnn = LoadedModel(model.spec, model.descriptor, NcnnBackend(graph))
    options = EngineOptions(device=CPU, tile=0)
    ours = enhance(on_ncnn, _crop(20, 28), None, options).color
    theirs = enhance(model, _crop(20, 28), None, options).color
    assert ours.shape == theirs.shape == (40, 56, 3)
    assert int(np.abs(ours.astype(int) - theirs).max()) <= 1


def test_a_model_with_no_ncnn_form_has_no_graph(make_model):
    path = make_model(scale=2)
    assert native_graph_for(path.stem, path) is None


def test_ncnn_refuses_a_precision_it_does_not_run_on_the_cpu(anime_x2):
    with pytest.raises(DeviceUnavailable, match="runs fp32, bf16 on the CPU, not fp16"):
        NcnnBackend(native_graph(anime_x2), precision="fp16")


# --- which back-ends may run a model ------------------------------------------------------------------------------

GRAPH = object()  # stands for a model's ncnn form: ``candidates`` only asks whether there is one


@pytest.fixture
def gpus(monkeypatch):
    """Vulkan devices as a test says they are (none by default)."""
    found: list[VulkanDevice] = []
    monkeypatch.setattr(ncnn_backend, "vulkan_devices", lambda: tuple(found))
    monkeypatch.setattr(choice, "vulkan_devices", lambda: tuple(found))
    return found


def test_candidates_follow_backend_device_and_precision(gpus):
    torch_cpu, ncnn_cpu = Candidate("torch", "cpu", "bf16"), Candidate("ncnn", "cpu", "fp32")
    # measuring anyway, auto weighs torch's fp32 beside the reduced precision it picked: never slower than fp32
    assert candidates("auto", "cpu", "auto", CPU, "bf16", GRAPH) == [torch_cpu, Candidate("torch", "cpu", "fp32"),
                                                                     ncnn_cpu]
    assert candidates("auto", "cpu", "bf16", CPU, "bf16", GRAPH) == [torch_cpu, Candidate("ncnn", "cpu", "bf16")]
    assert candidates("auto", "cpu", "auto", CPU, "bf16", None) == [torch_cpu]  # no ncnn form: torch alone
    assert candidates("auto", "cuda", "auto", torch.device("cuda"), "fp16", GRAPH) == [
        Candidate("torch", "cuda", "fp16")]
    assert candidates("auto", "cpu", "fp16", CPU, "fp16", GRAPH) == [Candidate("torch", "cpu", "fp16")]
    assert candidates("torch", "cpu", "auto", CPU, "fp32", GRAPH) == [Candidate("torch", "cpu", "fp32")]
    assert candidates("ncnn", "auto", "bf16", CPU, "bf16", GRAPH) == [Candidate("ncnn", "cpu", "bf16")]
    gpus.extend([VulkanDevice(0, "llvmpipe", "cpu", 1024), VulkanDevice(1, "Radeon", "discrete", 8192)])
    # auto weighs real GPUs, not a software renderer; an explicit vulkan device is used as asked
    assert candidates("auto", "auto", "auto", CPU, "fp32", GRAPH) == [
        Candidate("torch", "cpu", "fp32"), ncnn_cpu, Candidate("ncnn", "vulkan:1", "fp16")]
    assert candidates("auto", "vulkan", "auto", CPU, "fp32", GRAPH) == [Candidate("ncnn", "vulkan:0", "fp16")]
    assert candidates("ncnn", "auto", "fp32", CPU, "fp32", GRAPH) == [Candidate("ncnn", "vulkan:1", "fp32")]


def test_the_tiler_works_on_the_host_for_ncnn():
    assert [choice.host_device(device, backend) for device, backend in [
        ("vulkan:1", "auto"), ("auto", "ncnn"), ("auto", "auto"), ("cuda", "ncnn"), ("cpu", "torch")]] == [
        "cpu", "cpu", "auto", "cuda", "cpu"]  # cuda with ncnn: refused by ``candidates``, saying why


def test_candidates_refuse_what_cannot_run(gpus):
    with pytest.raises(UsageError, match="only the ncnn back-end runs on"):
        candidates("torch", "vulkan:0", "auto", CPU, "fp32", GRAPH)
    with pytest.raises(DeviceUnavailable, match="runs ncnn models"):
        candidates("ncnn", "cpu", "auto", CPU, "fp32", None)
    with pytest.raises(UsageError, match="not on cuda"):
        candidates("ncnn", "cuda", "auto", torch.device("cuda"), "fp16", GRAPH)
    with pytest.raises(DeviceMissing, match="no such Vulkan device; found: none"):
        candidates("ncnn", "vulkan:2", "auto", CPU, "fp32", GRAPH)
    with pytest.raises(DeviceUnavailable, match="not --precision fp16"):
        candidates("ncnn", "cpu", "fp16", CPU, "fp16", GRAPH)
    with pytest.raises(UsageError, match="auto, torch, ncnn"):
        candidates("onnx", "cpu", "auto", CPU, "fp32", GRAPH)


# --- the choice by measurement ------------------------------------------------------------------------------------

TORCH, NCNN = Candidate("torch", "cpu", "fp32"), Candidate("ncnn", "cpu", "fp32")


def test_pick_takes_the_fastest_usable_candidate():
    best, why = pick({TORCH: Measurement(1.0), NCNN: Measurement(0.7, psnr=80.0)})
    assert best == NCNN and "ncnn on cpu in fp32 0.700 s, torch on cpu in fp32 1.000 s" in why
    assert pick({TORCH: Measurement(1.0), NCNN: Measurement(1.0, psnr=80.0)})[0] == TORCH  # a tie keeps torch
    far, why = pick({TORCH: Measurement(1.0), NCNN: Measurement(0.5, psnr=12.0)})
    assert far == TORCH and "12.0 dB from torch" in why  # faster but not the same picture: not used
    failed, why = pick({TORCH: Measurement(1.0), NCNN: Measurement(float("inf"), error="RuntimeError: boom")})
    assert failed == TORCH and "boom" in why


class _Timings(FixedProbe):
    """A measure that answers given seconds and counts what it was asked."""

    def __init__(self, seconds: dict[Candidate, float]):
        super().__init__()
        self.seconds = seconds

    def one(self, candidate: Candidate) -> Measurement:
        return Measurement(self.seconds[candidate], None if candidate.backend == "torch" else 70.0)


def _choose(measure, graph=GRAPH, backend="auto", load=lambda: 0.4):
    return choose_backend(backend, "cpu", "auto", None, CPU, torch.float32, graph, lambda: "hash-of-the-file", measure,
                          load=load)


def test_auto_measures_once_per_machine_and_reads_the_record_after(gpus, monkeypatch):
    from restorecli.engine import precision

    first = _Timings({TORCH: 2.0, NCNN: 1.5})
    chosen = _choose(first)
    assert chosen.candidate == NCNN and chosen.reason.startswith("measured") and first.asked == [TORCH, NCNN]
    again = _Timings({TORCH: 0.1, NCNN: 9.0})  # another process, another load: it reads the record instead
    assert _choose(again).candidate == NCNN and again.asked == []
    record = json.loads(precision._record().read_text())  # beside the precision verdicts, in one record
    keys = [key for key in record if key.startswith("speed | hash-of-the-file | cpu: ")]
    assert len(keys) == 2 and all(f"{torch.get_num_threads()} threads" in key for key in keys)
    assert any("| ncnn 1.0" in key and key.endswith("ncnn fp32") for key in keys)
    assert record[next(k for k in keys if k.endswith("torch fp32"))]["seconds"] == 2.0
    monkeypatch.setattr(choice, "cpu_model", lambda: "Another CPU")  # a different machine measures again
    other = _Timings({TORCH: 0.5, NCNN: 1.5})
    assert _choose(other).candidate == TORCH and other.asked == [TORCH, NCNN]


def test_one_candidate_is_not_measured(gpus):
    never = _Timings({})
    assert _choose(never, graph=None) == choice.BackendChoice(TORCH, "the only back-end for this model and device")
    assert _choose(never, backend="torch").reason == "asked for" and never.asked == []


def test_an_unreadable_record_is_measured_again(gpus):
    from restorecli.engine import precision

    _choose(_Timings({TORCH: 2.0, NCNN: 1.5}))
    precision._record().write_text("{not json")
    again = _Timings({TORCH: 1.0, NCNN: 1.5})
    assert _choose(again).candidate == TORCH and len(again.asked) == 2


class _Clock:
    """Seconds as a test says they pass: its runs move ``now`` on."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rounds_run_every_candidate_in_turn_and_each_counts_its_fastest_round():
    clock, order = _Clock(), []
    durations = {"torch": [0.30, 0.10, 0.20], "ncnn": [0.05, 0.40, 0.25], "openvino": [0.50, 0.45, 0.15]}

    def run(name):
        def once():
            order.append(name)
            clock.now += durations[name][order.count(name) - 1]
        return once

    best = choice.time_in_rounds({name: run(name) for name in durations}, rounds=(3, 3), budget=0.0, clock=clock)
    assert order == ["torch", "ncnn", "openvino"] * 3  # round robin: a load that comes and goes falls on all
    assert best == pytest.approx({"torch": 0.10, "ncnn": 0.05, "openvino": 0.15})  # each its fastest round


def test_rounds_go_on_to_the_most_while_within_their_time_and_stop_after_it():
    clock, ran = _Clock(), []

    def once():
        ran.append(clock.now)
        clock.now += 0.25

    choice.time_in_rounds({"a": once, "b": once}, rounds=(2, 5), budget=1.0, clock=clock)
    assert len(ran) == 2 * 2  # two rounds took 1.0 s, the budget: no third
    ran.clear()
    choice.time_in_rounds({"a": once, "b": once}, rounds=(2, 5), budget=100.0, clock=clock)
    assert len(ran) == 2 * 5  # a fast model: the most rounds
    ran.clear()
    choice.time_in_rounds({"a": once}, rounds=(3, 5), budget=0.0, clock=clock)
    assert len(ran) == 3  # never fewer than the least, however slow


def test_the_load_is_the_load_average_per_cpu_this_process_may_use(monkeypatch):
    from restorecli.engine import device

    monkeypatch.setattr(device.os, "getloadavg", lambda: (6.0, 4.0, 2.0))
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert device.load_per_core() == 1.5  # the last minute's, over the 4 CPUs it may run on

    def none():
        raise OSError("no load average")

    monkeypatch.setattr(device.os, "getloadavg", none)
    assert device.load_per_core() is None


def _loads(*values):
    """A load average per CPU that reads ``values`` in turn, then the last for ever."""
    left = list(values)
    return lambda: left.pop(0) if len(left) > 1 else left[0]


def test_a_choice_measured_under_load_is_measured_again_once_the_machine_is_quieter(gpus):
    busy = _Timings({TORCH: 1.0, NCNN: 2.0})  # ncnn's OpenMP threads slowed most by the others' work
    assert _choose(busy, load=_loads(3.2, 4.1)).candidate == TORCH and busy.asked == [TORCH, NCNN]
    from restorecli.engine import precision

    record = json.loads(precision._record().read_text())
    assert sorted(entry["load"] for key, entry in record.items() if key.startswith("speed")) == [4.1, 4.1]
    still_busy = _Timings({TORCH: 1.0, NCNN: 0.5})
    assert _choose(still_busy, load=lambda: 2.0).candidate == TORCH and still_busy.asked == []  # nothing gained
    quiet = _Timings({TORCH: 1.0, NCNN: 0.5})
    chosen = _choose(quiet, load=lambda: 0.3)
    assert chosen.candidate == NCNN and quiet.asked == [TORCH, NCNN]  # every candidate again, together
    assert chosen.reason.startswith("measured fastest on a 64x64 probe (load 0.3 per CPU; measured again: the "
                                    "times recorded were taken under load 4.1 per CPU, 0.3 now): ncnn on cpu")
    after = _Timings({TORCH: 0.1, NCNN: 9.0})
    assert _choose(after, load=lambda: 0.1).candidate == NCNN and after.asked == []  # the quiet record stands


def test_a_choice_measured_on_a_quiet_machine_stands_whatever_the_load_later(gpus):
    first = _Timings({TORCH: 2.0, NCNN: 1.5})
    assert _choose(first, load=lambda: 1.2).candidate == NCNN  # the probe's own threads: under LOADED
    for later in (0.0, 1.0, 6.0):
        again = _Timings({TORCH: 0.1, NCNN: 9.0})
        chosen = _choose(again, load=lambda: later)
        assert chosen.candidate == NCNN and again.asked == [] and "measured again" not in chosen.reason
        assert "(load 1.2 per CPU)" in chosen.reason


def test_records_from_earlier_versions_are_measured_again_on_a_picture_sized_to_the_model(gpus):
    """Earlier versions timed every model on 64x64 pixels and recorded no side (the first without a load either):
    their records are measured again by the next run, busy or not (a busy one's record is measured again once the
    machine is quiet, as any), and the new records, which have a side, stand."""
    from restorecli.engine import precision

    for load, now in ((None, 2.0), (0.4, 0.3)):  # the two earlier versions' records, read on a busy and a quiet run
        for candidate, seconds in ((TORCH, 2.0), (NCNN, 1.5)):
            record = {"seconds": seconds, "psnr": None if candidate == TORCH else 70.0, "error": None}
            precision.remember(choice.speed_key(candidate, "hash-of-the-file"),
                               record if load is None else {**record, "load": load})
        timings = _Timings({TORCH: 0.1, NCNN: 9.0})
        chosen = _choose(timings, load=lambda: now)
        assert chosen.candidate == TORCH and timings.asked == [TORCH, NCNN]
        assert f"measured again: the times recorded were taken by an earlier version on a 64x64 picture whatever " \
               f"the model, where a compact model ranks otherwise than on the windows it runs on): torch on cpu" \
               in chosen.reason
        assert chosen.reason.startswith(f"measured fastest on a 64x64 probe (load {now:.1f} per CPU;")  # _Timings'
    later = _Timings({TORCH: 5.0, NCNN: 0.1})
    assert _choose(later, load=lambda: 0.2).candidate == TORCH and later.asked == []  # recorded with a side now
    stored = json.loads(precision._record().read_text())
    assert {entry.get("side") for key, entry in stored.items() if key.startswith("speed")} == {64}
    assert choice.measure_again([choice.Measurement(1.0, load=None)], 2.0) is not None  # no side: an earlier one
    assert choice.measure_again([choice.Measurement(1.0, load=None, side=64), None], 0.1) is None  # no load here
    assert choice.measure_again([choice.Measurement(1.0, load=3.0, side=256)], None) is None  # nor now: it stands
    assert choice.measure_again([choice.Measurement(1.0, load=3.0, side=256)], 0.1) is not None
    assert choice.measure_again([None, None], 0.1) is None


def test_the_probe_picture_is_sized_so_the_fastest_run_takes_about_the_target_time():
    assert choice.probe_side(1.5) == choice.probe_side(choice.PROBE_TARGET) == 64  # long enough already
    assert choice.probe_side(0.38) == 96  # x4plus on 2 cores: 64 * sqrt(3.2) = 113.7, to a multiple of 32
    assert choice.probe_side(0.014) == 576  # realesr-animevideov3 on 2 cores: 14 ms at 64x64, 592.5, capped
    assert choice.probe_side(0.075) == 256  # 64 * sqrt(16) = 256
    assert choice.probe_side(0.0) == choice.probe_side(float("inf")) == 64


# --- through the command line -------------------------------------------------------------------------------------


def _summary(result) -> dict:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()][-1]


def test_restore_backend_ncnn_and_torch_give_the_same_picture(anime_x2, photo_file, tmp_path):
    results = {}
    for backend in ("ncnn", "torch"):
        done = invoke("restore", photo_file, "-o", tmp_path / backend, "--model", anime_x2, "--backend", backend,
                      "--device", "cpu", "--precision", "fp32", "--json")
        assert done.exit_code == 0, done.stderr
        summary = _summary(done)
        assert summary["backend"] == backend and summary["device"] == "cpu" and summary["precision"] == "fp32"
        assert ("anime-x2 on cpu, fp32, ncnn" in done.stderr) == (backend == "ncnn")  # the summary says what ran
        results[backend] = read_rgb(tmp_path / backend / "photo.png").astype(int)
    assert results["ncnn"].shape == (40, 56, 3) and np.abs(results["ncnn"] - results["torch"]).max() <= 1


class _FakeProbe(FixedProbe):
    """Stands for ``SpeedProbe`` in a whole restore: ncnn measures ``ncnn`` seconds, torch 1 s."""

    ncnn = 0.5
    calls = 0

    def one(self, candidate: Candidate) -> Measurement:
        type(self).calls += 1
        return Measurement(self.ncnn if candidate.backend == "ncnn" else 1.0, 60.0 if candidate.backend == "ncnn"
                           else None)


def test_restore_auto_runs_what_measured_fastest_and_says_why(anime_x2, photo_file, tmp_path, monkeypatch, gpus):
    monkeypatch.setattr(choice, "SpeedProbe", _FakeProbe)
    monkeypatch.setattr(_FakeProbe, "calls", 0)
    first = invoke("restore", photo_file, "-o", tmp_path / "a", "--model", anime_x2, "--device", "cpu", "--json")
    assert first.exit_code == 0, first.stderr
    assert _summary(first)["backend"] == "ncnn" and "ncnn on cpu in fp32 0.500 s" in _summary(first)["backend_reason"]
    measured = _FakeProbe.calls
    assert measured in (2, 3)  # torch at the precision auto picked (and fp32 where that was bf16), ncnn
    second = invoke("restore", photo_file, "-o", tmp_path / "b", "--model", anime_x2, "--device", "cpu", "--json")
    assert _summary(second)["backend"] == "ncnn" and _FakeProbe.calls == measured  # recorded: not measured again


def test_restore_auto_measures_again_a_choice_made_under_load_once_the_machine_is_quieter(anime_x2, photo_file,
                                                                                          tmp_path, monkeypatch, gpus):
    """A first restore on a busy machine (ncnn slowed most) runs torch; the next, on a quiet one, measures again,
    runs ncnn and says why; the one after reads that record."""
    monkeypatch.setattr(choice, "SpeedProbe", _FakeProbe)
    monkeypatch.setattr(_FakeProbe, "calls", 0)
    monkeypatch.setattr(_FakeProbe, "ncnn", 2.0)
    monkeypatch.setattr(choice, "load_per_core", lambda: 3.5)
    common = ("--model", anime_x2, "--device", "cpu", "--precision", "fp32", "--json")
    busy = invoke("restore", photo_file, "-o", tmp_path / "a", *common)
    assert busy.exit_code == 0, busy.stderr
    assert _summary(busy)["backend"] == "torch" and "(load 3.5 per CPU)" in _summary(busy)["backend_reason"]
    assert _FakeProbe.calls == 2
    monkeypatch.setattr(_FakeProbe, "ncnn", 0.5)
    monkeypatch.setattr(choice, "load_per_core", lambda: 0.4)
    quiet = invoke("restore", photo_file, "-o", tmp_path / "b", *common)
    assert quiet.exit_code == 0, quiet.stderr
    why = "the times recorded were taken under load 3.5 per CPU, 0.4 now"
    assert _summary(quiet)["backend"] == "ncnn" and f"measured again: {why}" in _summary(quiet)["backend_reason"]
    started = [event["step"] for event in step_events(quiet.stderr) if event["state"] == "start"]
    assert any(step.startswith("timing") and step.endswith(f"(again: {why})") for step in started), started
    assert _FakeProbe.calls == 4
    after = invoke("restore", photo_file, "-o", tmp_path / "c", *common)
    assert _summary(after)["backend"] == "ncnn" and _FakeProbe.calls == 4 and "timing" not in after.stderr


def test_restore_auto_keeps_torch_fp32_where_it_measured_faster_than_bf16(anime_x2, photo_file, tmp_path,
                                                                          monkeypatch, gpus):
    class Probe(_FakeProbe):
        def one(self, candidate: Candidate) -> Measurement:
            seconds = {"ncnn": 3.0, "bf16": 2.0, "fp32": 1.0}
            return Measurement(seconds["ncnn" if candidate.backend == "ncnn" else candidate.precision], 60.0)

    monkeypatch.setattr("restorecli.engine.device.cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(choice, "SpeedProbe", Probe)
    done = invoke("restore", photo_file, "-o", tmp_path / "a", "--model", anime_x2, "--device", "cpu", "--json")
    assert done.exit_code == 0, done.stderr
    assert (_summary(done)["backend"], _summary(done)["precision"]) == ("torch", "fp32")


def test_restore_refuses_backends_that_cannot_run_the_model(make_model, anime_x2, photo_file, tmp_path, gpus,
                                                            monkeypatch):
    tiny = make_model(scale=2)  # a torch model, with no converter to bring it to ncnn (tests/test_pnnx.py converts)
    monkeypatch.setattr("restorecli.models.pnnx.available", lambda: False)
    refused = invoke("restore", photo_file, "-o", tmp_path / "o", "--model", tiny, "--backend", "ncnn")
    assert refused.exit_code == 3 and "needs pnnx" in refused.stderr and "--backend torch" in refused.stderr
    wrong = invoke("restore", photo_file, "-o", tmp_path / "o", "--backend", "onnx")
    assert wrong.exit_code == 2 and "auto, torch, ncnn" in wrong.stderr
    vulkan_torch = invoke("restore", photo_file, "-o", tmp_path / "o", "--model", anime_x2, "--backend", "torch",
                          "--device", "vulkan")
    assert vulkan_torch.exit_code == 2 and "only the ncnn back-end" in vulkan_torch.stderr
    missing = invoke("restore", photo_file, "-o", tmp_path / "o", "--model", anime_x2, "--device", "vulkan:3")
    assert missing.exit_code == 3 and "no such Vulkan device" in missing.stderr


def test_a_queued_job_runs_on_the_back_end_it_was_submitted_with(anime_x2, photo_file, tmp_path, gpus):
    queue = tmp_path / "queue"
    submitted = invoke("submit", photo_file, "--queue", queue, "--model", anime_x2, "--backend", "ncnn",
                       "--device", "cpu", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    status = worked_once(queue, json.loads(submitted.stdout)["job_id"])
    assert status["status"] == "completed" and status["setup"]["backend"] == "ncnn"


def test_devices_lists_cpu_and_vulkan_devices(gpus, monkeypatch):
    from restorecli.engine.backends import devices

    monkeypatch.setattr(devices, "vulkan_devices", lambda: (VulkanDevice(0, "Radeon RX", "discrete", 8192),))
    listed = invoke("devices", "--json")
    assert listed.exit_code == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert found["ncnn"] and [d["device"] for d in found["devices"]][0] == "cpu"
    assert found["devices"][-1] == {"device": "vulkan:0", "backends": ["ncnn"], "name": "Radeon RX",
                                    "kind": "discrete", "memory_mb": 8192}
    text = invoke("devices")
    assert text.exit_code == 0 and "vulkan:0\tncnn\tRadeon RX" in text.stdout and "Radeon RX" in text.stderr


# --- Vulkan (nox -s vulkan: Mesa's lavapipe where there is no GPU) ------------------------------------------------


@pytest.fixture
def vulkan():
    found = ncnn_backend.vulkan_devices()
    if not found:
        pytest.skip("no Vulkan device found: install a GPU's Vulkan driver, or Mesa's lavapipe (Debian: "
                    "mesa-vulkan-drivers and libvulkan1)")
    return found[0]


@pytest.mark.vulkan
@pytest.mark.real_weights
def test_x4plus_on_vulkan_matches_the_cpu_path(vulkan, x4plus):
    """fp16 storage on the GPU: within 0.03 of ncnn's fp32 CPU result, and more than 45 dB from it."""
    graph = native_graph_for(x4plus.spec.name, x4plus.spec.path)
    gpu = NcnnBackend(graph, precision="fp16", gpu=vulkan.index)
    assert gpu.capabilities.device == "vulkan:0" and gpu.capabilities.max_batch == 1
    crop = _crop(12, 16).astype(np.float32) / 255
    on_cpu = upscale(LoadedModel(x4plus.spec, x4plus.descriptor, NcnnBackend(graph)), crop, device=CPU, tile=0)
    on_gpu = upscale(LoadedModel(x4plus.spec, x4plus.descriptor, gpu), crop, device=CPU, tile=0)
    difference = np.abs(on_gpu.image - on_cpu.image)
    psnr = 10 * np.log10(1 / float(np.mean(difference**2)))
    assert float(difference.max()) <= 0.03 and psnr > 45, (difference.max(), psnr)


@pytest.mark.vulkan
def test_restore_on_a_vulkan_device_and_devices_lists_it(vulkan, anime_x2, photo_file, tmp_path):
    listed = json.loads(invoke("devices", "--json").stdout)
    assert {"device": "vulkan:0", "backends": ["ncnn"], "name": vulkan.name} == {
        key: value for entry in listed["devices"] if entry["device"] == "vulkan:0" for key, value in entry.items()
        if key in ("device", "backends", "name")}
    done = invoke("restore", photo_file, "-o", tmp_path / "gpu", "--model", anime_x2, "--device", "vulkan", "--json")
    assert done.exit_code == 0, done.stderr
    summary = _summary(done)
    assert (summary["backend"], summary["device"], summary["precision"]) == ("ncnn", "vulkan:0", "fp16")
    cpu = invoke("restore", photo_file, "-o", tmp_path / "cpu", "--model", anime_x2, "--backend", "ncnn", "--json")
    assert cpu.exit_code == 0, cpu.stderr
    assert np.abs(read_rgb(tmp_path / "gpu" / "photo.png").astype(int)
                  - read_rgb(tmp_path / "cpu" / "photo.png")).max() <= 8


@pytest.mark.slow  # the real probe of every candidate on a real model: 40-65 s on a 2-core AVX2 CPU
def test_the_speed_probe_times_each_candidate_and_compares_it_with_torch(anime_x2, tmp_path, monkeypatch):
    """The real probe (no time asserted): every candidate is warmed, timed once on 64x64 pixels to size the
    picture, then timed in rounds (at least two there) that run each in turn on the picture sized (this tiny model
    runs in milliseconds there: a larger one), and those other than the reference are compared with torch's result at the precision auto
    picked."""
    model = place_model(load_model(str(anime_x2), tmp_path), CPU, torch.bfloat16)
    probe = choice.SpeedProbe(model, native_graph(anime_x2), CPU, torch.bfloat16)
    asked = [Candidate("ncnn", "cpu", "fp32"), Candidate("torch", "cpu", "bf16"), Candidate("torch", "cpu", "fp32")]
    timed, in_rounds, sides, results = [], choice.time_in_rounds, [], []

    def recording(runs, **limits):  # the runs timed, in the order they ran, the picture's side and the times
        sides.append(probe.side)
        results.append(in_rounds({c: (lambda c=c, run=run: timed.append(c) or run()) for c, run in runs.items()},
                                 **limits))
        return results[-1]

    monkeypatch.setattr(choice, "time_in_rounds", recording)
    parts = []
    found = probe(asked, lambda: parts.append(len(timed)))
    rounds = len(timed) // len(asked) - 1
    assert list(found) == asked and timed == asked * (1 + rounds) and 2 <= rounds <= 5  # each round runs each in turn
    sized = choice.probe_side(min(results[0].values()))  # from the round on 64x64: hundreds here, by its time
    assert sides == [64, sized] and {m.side for m in found.values()} == {sized} and sized > 64
    assert probe.picture.shape == (sized, sized, 3)
    assert parts == [0, 0, 0, len(timed)]  # a part as each is warmed, then the rounds
    assert all(m.usable and m.seconds > 0 for m in found.values()), found
    assert found[Candidate("torch", "cpu", "bf16")].psnr is None
    assert found[Candidate("ncnn", "cpu", "fp32")].psnr > 30 and found[Candidate("torch", "cpu", "fp32")].psnr > 30
    assert next(model.module.parameters()).dtype == torch.bfloat16  # the model itself is left as it was


def test_where_the_picture_stays_small_the_round_that_sized_it_counts_among_its_rounds(anime_x2, tmp_path,
                                                                                         monkeypatch):
    """A heavy model (x4plus: tenths of a second on 64x64) keeps the small picture: the round run to size it is the
    first of its three to five rounds, not one more."""
    model = place_model(load_model(str(anime_x2), tmp_path), CPU, torch.float32)
    probe = choice.SpeedProbe(model, native_graph(anime_x2), CPU, torch.float32)
    asked = [Candidate("torch", "cpu", "fp32"), Candidate("ncnn", "cpu", "fp32")]
    monkeypatch.setattr(choice, "probe_side", lambda seconds: choice.PROBE_SIDE)  # as a heavy model's sizing says
    timed, in_rounds, limits = [], choice.time_in_rounds, []

    def recording(runs, **given):
        limits.append(given.get("rounds"))
        return in_rounds({c: (lambda c=c, run=run: timed.append(c) or run()) for c, run in runs.items()}, **given)

    monkeypatch.setattr(choice, "time_in_rounds", recording)
    found = probe(asked, lambda: None)
    rounds = len(timed) // len(asked)
    assert timed == asked * rounds and choice.ROUNDS[0] <= rounds <= choice.ROUNDS[1], timed
    assert limits == [(1, 1), (choice.ROUNDS[0] - 1, choice.ROUNDS[1] - 1)]
    assert {m.side for m in found.values()} == {choice.PROBE_SIDE} and probe.picture.shape == (64, 64, 3)
