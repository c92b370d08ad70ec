"""benchmarks/gpu.py, the throughput benchmark, in its CPU form on tiny inputs: its JSON holds every figure, they
agree with one another, and its table names every case. Nothing here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"

# slow: the benchmark run the module shares took 13-18 s on 2 quiet cores, 206 s on busy ones (nox -s slow runs it)
pytestmark = [pytest.mark.real_weights, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_dir) -> tuple[dict, str]:
    """One CPU run: x4plus on 32x32, realesr-animevideov3 on 64x64, fp32 and bf16, batches of 2 photos, 32 px
    tiles (so the compact model's photos are cut in four, and x4plus's run whole)."""
    out = tmp_path_factory.mktemp("gpu-bench") / "throughput.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--sizes", "32x32", "64x64", "--precisions", "fp32", "bf16",
         "--images", "2", "--repeats", "1", "--batch-repeats", "1", "--threads", "2", "--tile", "32",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_json_names_the_machine_and_the_run(run):
    results, _ = run
    assert results["device_type"] == "cpu"
    for key in ("device", "torch", "cpu", "date"):
        assert isinstance(results[key], str) and results[key]
    assert results["threads"] == 2 and results["images"] == 2 and results["repeats"] == 1 and results["tile"] == 32
    assert set(results["auto_precision"]) == {"realesrgan-x4plus", "realesr-animevideov3"}
    assert results["seconds"] > 0


def test_every_case_is_measured(run):
    results, _ = run
    cases = {(c["model"], c["width"], c["height"], c["precision"]) for c in results["cases"]}
    assert cases == {("realesr-animevideov3", 64, 64, "fp32"), ("realesr-animevideov3", 64, 64, "bf16"),
                     ("realesrgan-x4plus", 32, 32, "fp32"), ("realesrgan-x4plus", 32, 32, "bf16")}


def test_figures_are_positive_and_agree(run):
    results, _ = run
    for case in results["cases"]:
        assert case["forward_ms"] > 0 and len(case["forward_all_ms"]) == 1
        assert case["forward_ms"] == pytest.approx(case["forward_all_ms"][0])
        assert case["flops"] > 0
        assert case["tflops_per_s"] == pytest.approx(case["flops"] / (case["forward_ms"] / 1000) / 1e12)
        assert case["peak_tflops"] is None and case["peak_share"] is None  # the CPU's peak is unknown
        restore = case["restore"]
        assert restore["images"] == 2 and min(restore["one_s"] + restore["all_s"]) > 0
        # the marginal is (2 images - 1 image) / 1; it may come out at or under zero on a busy machine
        assert restore["marginal_s"] == pytest.approx([restore["all_s"][0] - restore["one_s"][0]])
        assert restore["marginal_ms"] == pytest.approx(restore["marginal_s"][0] * 1000)
        assert case["host_overhead_ratio"] == pytest.approx(restore["marginal_ms"] / case["forward_ms"])
        assert case["host_ms"] == pytest.approx(restore["marginal_ms"] - case["forward_ms"])
        tiles = case["tiles"]
        assert tiles["grid"][0] * tiles["grid"][1] == tiles["count"]
        if case["model"] == "realesrgan-x4plus":  # 32x32 in one 32 px tile
            assert tiles == {"tile": 0, "pad": 24, "count": 1, "grid": [1, 1], "computed_to_output": 1.0,
                             "forward_ms": None}
            assert case["ratio_to_tiles"] is None
        else:  # 64x64 in 2 x 2 cores of 32; with 24 px of context each side a window is the whole image
            assert tiles["tile"] == 32 and tiles["grid"] == [2, 2]
            assert tiles["computed_to_output"] == 4.0
            assert tiles["forward_ms"] > 0
            assert case["ratio_to_tiles"] == pytest.approx(restore["marginal_ms"] / tiles["forward_ms"])
        peer = case["peer"]
        assert (peer["ms"] is not None and peer["ms"] > 0) or peer["reason"]
        assert case["variants"] == []  # none by default on the CPU
        # ncnn on each Vulkan GPU (issue 31): figures where one ran, else why none did (no GPU here; lavapipe, the
        # CPU again, only with --software)
        assert case["ncnn_vulkan"] and all(gpu["reason"] or (gpu["forward_ms"] > 0 and gpu["restore"]["images"] == 2)
                                           for gpu in case["ncnn_vulkan"])
        assert case["target_ratio"] is None  # issue 19's targets are for 512x512


def test_flops_are_the_networks_multiply_adds(run):
    """Two FLOPs per multiply-add of the convolutions, per input pixel, whatever the size and precision.
    realesr-animevideov3 (SRVGGNetCompact, 64 features, 16 body convolutions, 3x3): 3*64*9 + 16*64*64*9 + 64*48*9
    = 619,200. realesrgan-x4plus (RRDBNet, 23 blocks of 3 dense blocks): per dense block 9*32*(64+96+128+160) +
    9*64*192 = 239,616, times 69; the first, trunk and two up-sampling convolutions (at 4 and 16 times the pixels),
    the high-resolution and the last one (at 16 times) add 1728 + 36,864 + 147,456 + 589,824 + 589,824 + 27,648."""
    results, _ = run
    expected = {"realesr-animevideov3": 2 * 619_200,
                "realesrgan-x4plus": 2 * (69 * 239_616 + 1728 + 36_864 + 147_456 + 589_824 + 589_824 + 27_648)}
    for case in results["cases"]:
        assert case["flops"] == expected[case["model"]] * case["width"] * case["height"]


def test_the_table_names_every_case(run):
    results, stdout = run
    rows = [line for line in stdout.splitlines() if line.startswith("| realesr")]
    assert len(rows) == len(results["cases"])
    for case, row in zip(results["cases"], rows):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:4] == [case["model"], f"{case['width']}x{case['height']}", case["precision"], "eager"]
        assert f"{case['host_overhead_ratio']:.2f}x" in cells[9]
    assert "unknown peak" in stdout and "tiles (--tile 32)" in stdout
