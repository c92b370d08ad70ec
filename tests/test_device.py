"""Device and precision choice, proven on the CPU with CUDA/MPS availability simulated."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from restorecli.engine.device import available_memory, choose_device, choose_dtype, is_out_of_memory
from restorecli.errors import DeviceUnavailable
from restorecli.engine.model import ModelSpec

SPEC = ModelSpec(name="m", path=Path("m"), architecture="ESRGAN", scale=4, default_outscale=4.0, input_channels=3,
                 output_channels=3, supports_half=True, supports_bfloat16=True, multiple_of=1, minimum_size=0,
                 square=False, tileable=True, max_features=64)


def _simulate(monkeypatch, cuda: int, mps: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda,mps,expected", [(2, True, "cuda"), (0, True, "mps"), (0, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _simulate(monkeypatch, cuda, mps)
    assert choose_device("auto").type == expected


def test_explicit_devices_must_exist(monkeypatch):
    _simulate(monkeypatch, 2, False)
    assert choose_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceUnavailable, match="only 2 CUDA device"):
        choose_device("cuda:2")
    with pytest.raises(DeviceUnavailable, match="MPS is not available"):
        choose_device("mps")
    with pytest.raises(DeviceUnavailable, match="not a device"):
        choose_device("gpu0")
    _simulate(monkeypatch, 0, False)
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        choose_device("cuda")


def test_auto_precision_is_fp16_on_cuda_only_where_supported(monkeypatch):
    assert choose_dtype("auto", torch.device("cuda"), SPEC) == torch.float16
    assert choose_dtype("auto", torch.device("cuda"), replace(SPEC, supports_half=False)) == torch.float32
    assert choose_dtype("auto", torch.device("mps"), SPEC) == torch.float32
    monkeypatch.setattr("restorecli.engine.device.cpu_has_fast_bf16", lambda: False)
    assert choose_dtype("auto", torch.device("cpu"), SPEC) == torch.float32


def test_fast_bf16_is_measured_not_read_off_cpu_flags(monkeypatch):
    from restorecli.engine import device

    seed = torch.random.get_rng_state()
    speedup = device.cpu_bf16_speedup()
    assert speedup > 0 and speedup == device.cpu_bf16_speedup()  # measured once, then remembered
    assert torch.equal(torch.random.get_rng_state(), seed)  # the probe leaves torch's random state alone
    assert device.cpu_has_fast_bf16() == (speedup >= device.BF16_MIN_SPEEDUP)
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: 0.7)  # Xeon with AVX512-BF16, no AMX
    assert not device.cpu_has_fast_bf16()
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: 2.0)  # AMD Zen 4
    assert device.cpu_has_fast_bf16()
    assert choose_dtype("auto", torch.device("cpu"), SPEC) == torch.bfloat16


def test_the_bf16_probe_runs_once_per_machine_and_is_recorded(monkeypatch):
    """Timed beside other work the probe can read either side of the threshold; recorded per machine, every
    later process makes the first one's choice. Another CPU, thread count or torch version measures again, as
    does a damaged record."""
    import json

    from restorecli.engine import device

    readings = iter([1.7, 1.1, 0.8, 2.5])
    calls = []
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: calls.append(1) or next(readings))
    device.cpu_bf16_speedup.cache_clear()
    try:
        assert device.cpu_bf16_speedup() == 1.7
        device.cpu_bf16_speedup.cache_clear()  # as a later process starts
        assert device.cpu_bf16_speedup() == 1.7 and len(calls) == 1
        (key,) = json.loads(device._probe_record().read_text())
        assert device.cpu_model() in key and torch.__version__ in key
        monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
        device.cpu_bf16_speedup.cache_clear()
        assert device.cpu_bf16_speedup() == 1.1 and len(json.loads(device._probe_record().read_text())) == 2
        device._probe_record().write_text("{not json")
        device.cpu_bf16_speedup.cache_clear()
        assert device.cpu_bf16_speedup() == 0.8 and len(calls) == 3
        ((rewritten, value),) = json.loads(device._probe_record().read_text()).items()
        assert "| 64 threads |" in rewritten and value == {"speedup": 0.8, "load": None}  # no load known here
    finally:
        device.cpu_bf16_speedup.cache_clear()


def test_a_bf16_check_made_under_load_is_made_again_once_the_machine_is_quieter(monkeypatch):
    """Its record keeps the load it was measured under: one above ``LOADED`` per CPU is measured again by a later
    process that finds the machine quieter, and says why; one measured quietly stands whatever the load later; an
    earlier version's bare number (no load known) stands while the machine is busy and is measured again, once,
    when it is quiet."""
    import json

    from restorecli import progress
    from restorecli.engine import device

    readings, loads = iter([0.9, 2.1, 1.3]), iter([3.2, 3.6, 0.4, 0.5, 3.0, 2.5, 0.2, 0.3, 0.1])
    steps = []
    calls = []
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: calls.append(1) or next(readings))
    monkeypatch.setattr(device, "load_per_core", lambda: next(loads))
    device.cpu_bf16_speedup.cache_clear()
    try:
        assert device.cpu_bf16_speedup() == 0.9  # measured on a busy machine (3.2, then 3.6 after it)
        ((key, value),) = json.loads(device._probe_record().read_text()).items()
        assert value == {"speedup": 0.9, "load": 3.6}
        device.cpu_bf16_speedup.cache_clear()
        with progress.reporting(lambda phase, step: steps.append(step.text)):
            assert device.cpu_bf16_speedup() == 2.1 and len(calls) == 2  # quiet now (0.4): measured again
        assert "(again: the last check was taken under load 3.6 per CPU, 0.4 now)" in steps[0]
        assert json.loads(device._probe_record().read_text())[key] == {"speedup": 2.1, "load": 0.5}
        device.cpu_bf16_speedup.cache_clear()
        assert device.cpu_bf16_speedup() == 2.1 and len(calls) == 2  # measured quietly: stands under load 3.0
        device._probe_record().write_text(json.dumps({key: 1.7}))  # an earlier version's record: no load
        device.cpu_bf16_speedup.cache_clear()
        assert device.cpu_bf16_speedup() == 1.7 and len(calls) == 2  # stands while the machine is busy (2.5)
        device.cpu_bf16_speedup.cache_clear()
        steps.clear()
        with progress.reporting(lambda phase, step: steps.append(step.text)):
            assert device.cpu_bf16_speedup() == 1.3 and len(calls) == 3  # quiet (0.2): measured again
        assert "(again: the last check was taken by an earlier version under a load not recorded, 0.2" in steps[0]
        assert json.loads(device._probe_record().read_text())[key] == {"speedup": 1.3, "load": 0.3}
        device.cpu_bf16_speedup.cache_clear()
        assert device.cpu_bf16_speedup() == 1.3 and len(calls) == 3  # and now stands (0.1)
    finally:
        device.cpu_bf16_speedup.cache_clear()


def test_no_bf16_probe_without_onednn(monkeypatch):
    from restorecli.engine import device

    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    device.cpu_bf16_speedup.cache_clear()
    try:
        assert device.cpu_bf16_speedup() == 0.0
        assert not device.cpu_has_fast_bf16()
    finally:
        device.cpu_bf16_speedup.cache_clear()


def test_auto_precision_on_a_cpu_with_fast_bf16(monkeypatch):
    monkeypatch.setattr("restorecli.engine.device.cpu_has_fast_bf16", lambda: True)
    assert choose_dtype("auto", torch.device("cpu"), SPEC) == torch.bfloat16
    assert choose_dtype("auto", torch.device("cpu"), replace(SPEC, supports_bfloat16=False)) == torch.float32
    assert choose_dtype("fp32", torch.device("cpu"), SPEC) == torch.float32
    assert choose_dtype("bf16", torch.device("cpu"), SPEC) == torch.bfloat16
    # 16-bit images keep fp32 under auto (bf16's 8-bit mantissa is coarser than their steps); asked for, bf16 runs
    assert choose_dtype("auto", torch.device("cpu"), SPEC, depth=16) == torch.float32
    assert choose_dtype("bf16", torch.device("cpu"), SPEC, depth=16) == torch.bfloat16
    assert choose_dtype("auto", torch.device("cuda"), SPEC, depth=16) == torch.float16
    with pytest.raises(DeviceUnavailable, match="does not support fp16"):
        choose_dtype("fp16", torch.device("cuda"), replace(SPEC, supports_half=False))


def test_bf16_on_a_gpu_without_it_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a T4 or V100
    with pytest.raises(DeviceUnavailable, match=r"--precision bf16: cuda:0 has no bfloat16 support .* use fp16"):
        choose_dtype("bf16", torch.device("cuda:0"), SPEC)
    assert choose_dtype("auto", torch.device("cuda:0"), SPEC) == torch.float16  # auto never asks for it there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert choose_dtype("bf16", torch.device("cuda:0"), SPEC) == torch.bfloat16


def test_cpu_memory_budget_is_bounded():
    budget = available_memory(torch.device("cpu"))
    assert 0 < budget <= 1024**3


def test_mps_memory_budget_with_and_without_metal_s_recommendation(monkeypatch):
    """torch 2.5 and later report Metal's recommended working set; before that the budget comes from the host's
    free memory, which Apple silicon shares with the GPU."""
    import restorecli.engine.device as device

    monkeypatch.setattr(device, "_host_available_memory", lambda: 10 * 1024**3)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 8 * 1024**3, raising=False)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 3 * 1024**3)
    assert available_memory(torch.device("mps")) == int(5 * 1024**3 * 0.6)
    monkeypatch.delattr(torch.mps, "recommended_max_memory")
    assert available_memory(torch.device("mps")) == int(10 * 1024**3 * 0.6)


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))  # the one torch before 2.5 raises
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_bf16_runs_on_the_cpu_close_to_fp32(make_model, tmp_path):
    import skimage.data

    from conftest import psnr
    from restorecli.engine.device import place_model
    from restorecli.engine.tiling import upscale
    from restorecli.models.loading import load_model

    path = make_model(2)
    crop = skimage.data.astronaut()[100:140, 100:150]
    fp32 = upscale(place_model(load_model(str(path), tmp_path), torch.device("cpu"), torch.float32), crop,
                   device=torch.device("cpu"), tile=0).image
    bf16_model = place_model(load_model(str(path), tmp_path), torch.device("cpu"), torch.bfloat16)
    bf16 = upscale(bf16_model, crop, device=torch.device("cpu"), dtype=torch.bfloat16, tile=16, pad=8).image
    assert psnr(bf16, fp32) > 30


def test_run_in_batches_fits_memory_and_halves_on_out_of_memory(monkeypatch):
    import restorecli.engine.device as device

    monkeypatch.setattr(device, "available_memory", lambda dev: 2500)
    items = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    calls = []

    def double(part):
        calls.append(len(part))
        return part * 2

    np.testing.assert_array_equal(device.run_in_batches(double, items, 1000, torch.device("cpu")), items * 2)
    assert calls == [2, 2, 1]  # two items' worth of memory a call, in order

    calls.clear()
    monkeypatch.setattr(device, "available_memory", lambda dev: 10**9)

    def small_memory(part):
        calls.append(len(part))
        if len(part) > 1:
            raise torch.OutOfMemoryError("out of memory")
        return part * 2

    np.testing.assert_array_equal(device.run_in_batches(small_memory, items, 1000, torch.device("cpu")), items * 2)
    assert calls == [5, 2, 1, 1, 1, 1, 1]  # all five fail, half of that fails, then one at a time

    def never_fits(part):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):  # even one item: the image fails, with the error
        device.run_in_batches(never_fits, items, 1000, torch.device("cpu"))
    with pytest.raises(ValueError, match="shape"):  # any other error is not retried
        device.run_in_batches(lambda part: (_ for _ in ()).throw(ValueError("shape")), items, 1000,
                              torch.device("cpu"))
