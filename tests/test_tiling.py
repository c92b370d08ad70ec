"""Tiling: plans partition the image, tiled equals untiled, out-of-memory handling, batching, dtypes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import psnr, tiny_compact_state, tiny_rrdb_state
from restorecli.engine.device import place_model
from restorecli.engine.tiling import plan_grid, plan_tiles, upscale
from restorecli.errors import TileOutOfMemory
from restorecli.models.loading import load_model

CPU = torch.device("cpu")
ASTRONAUT = skimage.data.astronaut()


def _load_state(tmp_path, state, name="m"):
    from safetensors.torch import save_file

    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    return place_model(load_model(str(path), tmp_path), CPU, torch.float32)


@given(
    height=st.integers(1, 300), width=st.integers(1, 300), tile=st.integers(0, 128), pad=st.integers(0, 40)
)
def test_plan_cores_partition_the_image_and_windows_share_one_size(height, width, tile, pad):
    plan = plan_tiles(height, width, tile, pad)
    covered = np.zeros((height, width), dtype=np.int32)
    sizes = set()
    for t in plan.tiles:
        y0, y1, x0, x1 = t.core
        covered[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        sizes.add((wy1 - wy0, wx1 - wx0))
        assert 0 <= wy0 and wy1 <= height and 0 <= wx0 and wx1 <= width
        # the window holds the core, the cross-fade band and (where the image allows) the context
        assert wy0 <= max(y0 - plan.band, 0) and wy1 >= min(y1 + plan.band, height)
        assert wx0 <= max(x0 - plan.band, 0) and wx1 >= min(x1 + plan.band, width)
        if tile:
            assert y1 - y0 <= tile and x1 - x0 <= tile
    assert (covered == 1).all()
    assert len(sizes) == 1


def test_whole_image_is_one_tile():
    plan = plan_tiles(37, 53, 0, 10)
    assert len(plan.tiles) == 1 and plan.tiles[0].core == (0, 37, 0, 53) and plan.band == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scale=st.sampled_from([1, 2, 3, 4]),
    height=st.integers(16, 90),
    width=st.integers(16, 90),
    tile=st.integers(8, 64),
    pad=st.integers(4, 24),
    y=st.integers(0, 400),
    x=st.integers(0, 400),
)
def test_tiled_matches_untiled_on_a_real_photo(tmp_path, scale, height, width, tile, pad, y, x):
    model = _load_state(tmp_path, tiny_compact_state(scale, num_conv=3, seed=scale), f"c{scale}")
    crop = ASTRONAUT[y : y + height, x : x + width]
    whole = upscale(model, crop, device=CPU, tile=0).image
    tiled = upscale(model, crop, device=CPU, tile=tile, pad=pad)
    assert tiled.image.shape == whole.shape == (crop.shape[0] * scale, crop.shape[1] * scale, 3)
    assert tiled.image.dtype == np.uint8
    assert psnr(tiled.image, whole) >= 45


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdb_tiled_matches_untiled_at_every_scale(tmp_path, scale):
    """A deeper random RRDBNet has a receptive field wider than the pad: the blend must still hide the seams."""
    model = _load_state(tmp_path, tiny_rrdb_state(scale, seed=scale, num_block=2), f"r{scale}")
    crop = ASTRONAUT[150:214, 180:250]
    whole = upscale(model, crop, device=CPU, tile=0).image
    tiled = upscale(model, crop, device=CPU, tile=24, pad=16).image
    assert psnr(tiled, whole) >= 45


@pytest.mark.real_weights
@pytest.mark.parametrize("size,tile", [  # 8-13 s each on 2 cores: one in the default suite, two in nox -s slow
    pytest.param((72, 90), 32, marks=pytest.mark.slow), ((96, 64), 40),
    pytest.param((61, 77), 24, marks=pytest.mark.slow)])
def test_real_x4plus_tiled_matches_untiled_above_45_db(real_weights, size, tile):
    model = place_model(load_model("realesrgan-x4plus", real_weights), CPU, torch.float32)
    h, w = size
    crop = ASTRONAUT[120 : 120 + h, 150 : 150 + w]
    whole = upscale(model, crop, device=CPU, tile=0).image
    tiled = upscale(model, crop, device=CPU, tile=tile, pad=24).image
    value = psnr(tiled, whole)
    assert value >= 45, f"tiled vs untiled PSNR {value:.2f} dB"


class _StripRecorder:
    """A row sink that keeps copies of what it receives (the engine reuses its strip buffer)."""

    def __init__(self):
        self.strips: list[np.ndarray] = []
        self.restarts = 0

    def write(self, rows):
        self.strips.append(rows.copy())

    def restart(self):
        self.strips.clear()
        self.restarts += 1

    def image(self):
        return np.concatenate(self.strips)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scale=st.sampled_from([1, 2, 4]),
    height=st.integers(8, 80),
    width=st.integers(8, 80),
    tile=st.integers(0, 48),
    pad=st.integers(0, 16),
    sixteen=st.booleans(),
)
def test_rows_streamed_to_a_sink_are_the_whole_array_bit_for_bit(tmp_path, scale, height, width, tile, pad, sixteen):
    model = _load_state(tmp_path, tiny_compact_state(scale), f"c{scale}")
    crop = ASTRONAUT[:height, :width]
    if sixteen:
        crop = crop.astype(np.uint16) * 257 + 100
    whole = upscale(model, crop, device=CPU, tile=tile, pad=pad)
    sink = _StripRecorder()
    streamed = upscale(model, crop, device=CPU, tile=tile, pad=pad, sink=sink)
    assert streamed.image is None and streamed.tiles == whole.tiles
    assert len(sink.strips) == (1 if tile == 0 else -(-height // tile))  # one strip per tile row
    np.testing.assert_array_equal(sink.image(), whole.image)


def test_a_sink_is_restarted_when_out_of_memory_shrinks_the_tiles(tmp_path, monkeypatch):
    model = _load_state(tmp_path, tiny_compact_state(2))
    crop = ASTRONAUT[100:228, 100:228]
    reference = upscale(model, crop, device=CPU, tile=0).image
    _with_recorder(model, limit=48 * 48)
    monkeypatch.setattr("restorecli.engine.tiling.executor.auto_plan", _plan_of_100)
    sink = _StripRecorder()
    result = upscale(model, crop, device=CPU, tile=None, pad=4, sink=sink)
    assert sink.restarts >= 1 and result.tile < 100
    assert sink.image().shape == reference.shape
    assert psnr(sink.image(), reference) >= 45


def test_sixteen_bit_and_float_inputs_keep_their_type(tmp_path):
    model = _load_state(tmp_path, tiny_compact_state(2))
    rgb16 = (ASTRONAUT[:40, :50].astype(np.uint16) * 257)
    out16 = upscale(model, rgb16, device=CPU, tile=16, pad=8).image
    assert out16.dtype == np.uint16 and out16.shape == (80, 100, 3)
    assert len(np.unique(out16 % 257)) > 1  # real 16-bit precision, not 8-bit values scaled
    rgbf = ASTRONAUT[:40, :50].astype(np.float32) / 255
    outf = upscale(model, rgbf, device=CPU, tile=16, pad=8).image
    assert outf.dtype == np.float32
    # the same computation, quantised to 16 bits or not (inputs differ by 8-bit vs float rounding only)
    assert np.abs(outf * 65535 - out16.astype(np.float32)).max() <= 1.0


def _plan_of_100(model, height, width, **kwargs):
    """An automatic plan of 100 px tiles, whatever the memory (for the out-of-memory retries)."""
    return plan_tiles(height, width, 100, kwargs["pad"])


class _Recorder(torch.nn.Module):
    """Wraps a network: records batch sizes and fails with out-of-memory above a number of input pixels."""

    def __init__(self, inner, limit_pixels=None):
        super().__init__()
        self.inner = inner
        self.limit = limit_pixels
        self.batches = []

    def forward(self, x):
        self.batches.append(tuple(x.shape))
        if self.limit is not None and x.shape[0] * x.shape[2] * x.shape[3] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def _with_recorder(model, limit=None):
    recorder = _Recorder(model.descriptor._model, limit)
    model.descriptor._model = recorder
    return recorder


def test_auto_tile_halves_on_out_of_memory_and_never_pastes_stale_tiles(tmp_path, monkeypatch):
    model = _load_state(tmp_path, tiny_compact_state(2))
    crop = ASTRONAUT[100:228, 100:228]
    reference = upscale(model, crop, device=CPU, tile=0).image
    recorder = _with_recorder(model, limit=48 * 48)
    monkeypatch.setattr("restorecli.engine.tiling.executor.auto_plan", _plan_of_100)
    result = upscale(model, crop, device=CPU, tile=None, pad=4)
    assert result.tile < 100 and result.tile >= 16
    assert psnr(result.image, reference) >= 45
    assert any(shape[2] * shape[3] > 48 * 48 for shape in recorder.batches)  # it did fail first


def test_fixed_tile_out_of_memory_is_a_clear_error(tmp_path):
    model = _load_state(tmp_path, tiny_compact_state(2))
    _with_recorder(model, limit=16 * 16)
    with pytest.raises(TileOutOfMemory, match="tile size 64 does not fit"):
        upscale(model, ASTRONAUT[:128, :128], device=CPU, tile=64, pad=4)


def test_tiles_run_in_batches(tmp_path):
    model = _load_state(tmp_path, tiny_compact_state(2))
    recorder = _with_recorder(model)
    upscale(model, ASTRONAUT[:64, :64], device=CPU, tile=16, pad=4, batch=4)
    assert [shape[0] for shape in recorder.batches] == [4, 4, 4, 4]


def test_tile_progress_counts_every_tile_once_per_attempt(tmp_path, monkeypatch):
    model = _load_state(tmp_path, tiny_compact_state(2))
    calls = []
    result = upscale(model, ASTRONAUT[:64, :80], device=CPU, tile=16, pad=4, batch=3,
                     on_tile=lambda done, total: calls.append((done, total)))
    assert result.tiles == 20 and calls[-1] == (20, 20)
    assert [done for done, _ in calls] == [3, 6, 9, 12, 15, 18, 20]
    _with_recorder(model, limit=48 * 48)  # now the first plan fails: counting starts again for the smaller tiles
    monkeypatch.setattr("restorecli.engine.tiling.executor.auto_plan", _plan_of_100)
    calls.clear()
    result = upscale(model, ASTRONAUT[:128, :128], device=CPU, tile=None, pad=4,
                     on_tile=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (result.tiles, result.tiles)
    assert all(done <= total for done, total in calls)


def test_auto_batch_is_one_tile_on_the_cpu_and_what_fits_on_accelerators(monkeypatch):
    from restorecli.engine.tiling import memory

    assert memory.auto_batch(CPU, 10**6) == 1
    monkeypatch.setattr(memory, "available_memory", lambda device: 5 * 10**6)
    assert memory.auto_batch(torch.device("cuda"), 10**6) == 5
    assert memory.auto_batch(torch.device("mps"), 10**5) == 8  # capped
    assert memory.auto_batch(torch.device("cuda:1"), 10**8) == 1


def test_wrong_channel_count_is_refused(tmp_path):
    model = _load_state(tmp_path, tiny_compact_state(2))
    with pytest.raises(ValueError, match="expected H x W x 3"):
        upscale(model, np.zeros((8, 8, 1), np.uint8), device=CPU)


@pytest.mark.slow  # x4plus in bf16: about 5 s where the CPU has bf16, 30-45 s where it is emulated (AVX2 only)
@pytest.mark.real_weights
def test_bf16_fast_path_matches_fp32_above_45_db_on_real_weights(real_weights):
    """bf16 is what --precision auto picks on CPUs where it measures faster; it must give the fp32 pixels
    within 45 dB."""
    crop = ASTRONAUT[140:204, 170:250]
    fp32 = upscale(place_model(load_model("realesrgan-x4plus", real_weights), CPU, torch.float32), crop,
                   device=CPU, tile=0).image
    bf16_model = place_model(load_model("realesrgan-x4plus", real_weights), CPU, torch.bfloat16)
    bf16 = upscale(bf16_model, crop, device=CPU, dtype=torch.bfloat16, tile=40, pad=24).image
    value = psnr(bf16, fp32)
    assert value >= 45, f"bf16 tiled vs fp32 untiled: {value:.2f} dB"


_MEMORY_PROBE = """
import sys, numpy as np, torch
from pathlib import Path
from restorecli.engine.device import place_model
from restorecli.engine.tiling import upscale
from restorecli.models.loading import load_model

def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024

torch.set_num_threads(1)
model = place_model(load_model(sys.argv[1], Path(sys.argv[1]).parent), torch.device('cpu'), torch.float32)
image = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
upscale(model, image[:64, :64], device=torch.device('cpu'), tile=64, pad=8)  # warm-up allocations
before = hwm()
if sys.argv[3] == "sink":
    class Discard:
        rows = 0
        def write(self, rows): self.rows += len(rows)
        def restart(self): self.rows = 0
    sink = Discard()
    upscale(model, image, device=torch.device('cpu'), tile=int(sys.argv[2]), pad=8, batch=1, sink=sink)
    print(hwm() - before, sink.rows * 4000 * 3)
else:
    out = upscale(model, image, device=torch.device('cpu'), tile=int(sys.argv[2]), pad=8, batch=2).image
    print(hwm() - before, out.nbytes)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory is read from /proc (Linux only)")
def test_output_is_assembled_in_its_final_dtype_without_a_float_canvas(make_model):
    """1000x1000 -> 4000x4000: the uint8 output is 48 MB; a float32 canvas of it would be 192 MB more.
    What else the run holds is a batch of two 128 px tiles in flight (about 30 MB for this network)."""
    path = make_model(4)
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), "128", "array"], capture_output=True,
                           text=True, check=True)
    grown, output_bytes = map(int, probe.stdout.split())
    assert output_bytes == 4000 * 4000 * 3
    assert grown < output_bytes + 80 * 1024**2, f"peak grew by {grown / 2**20:.0f} MiB"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory is read from /proc (Linux only)")
def test_output_streamed_to_a_sink_is_never_whole_in_memory(make_model):
    """The same output through a sink: memory follows the tile in flight (one 64 px tile, whose 4x float32
    output stage is most of it) and one strip of rows, not the output."""
    path = make_model(4)
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), "64", "sink"], capture_output=True,
                           text=True, check=True)
    grown, streamed_bytes = map(int, probe.stdout.split())
    assert streamed_bytes == 4000 * 4000 * 3  # every row reached the sink
    assert grown < streamed_bytes / 2, f"peak grew by {grown / 2**20:.0f} MiB for a {streamed_bytes / 2**20:.0f} MiB output"


def test_streamed_enhance_equals_the_whole_array_and_says_what_it_cannot_stream(tmp_path):
    from restorecli.engine.enhance import EngineOptions, enhance, enhance_rows, streamable

    model = _load_state(tmp_path, tiny_compact_state(2))
    grey = ASTRONAUT[:40, :56, :1].copy()
    rgb = ASTRONAUT[:40, :56]
    assert streamable(model, grey) and streamable(model, rgb)
    assert not streamable(model, np.zeros((40, 56, 2), np.uint8))  # no 2-plane colour: split, run, join
    options = EngineOptions(device=CPU, tile=16, tile_pad=8)
    for planes in (grey, rgb):
        sink = _StripRecorder()
        enhance_rows(model, planes, options, sink)
        np.testing.assert_array_equal(sink.image(), enhance(model, planes, None, options).color)
    with pytest.raises(ValueError, match="whole-array path"):
        enhance_rows(model, np.zeros((40, 56, 2), np.uint8), options, _StripRecorder())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # (model scale, --outscale): native, whole-number shrinks, fractional shrinks, enlarging
    scales=st.sampled_from([(2, 2.0), (2, 1.0), (3, 1.0), (4, 2.0), (4, 1.0), (4, 3.0), (2, 1.3), (3, 4.5), (2, 3.7)]),
    height=st.integers(8, 64),
    width=st.integers(8, 64),
    tile=st.integers(0, 40),
    sixteen=st.booleans(),
    grey=st.booleans(),
    alpha=st.sampled_from([None, "model", "resize"]),
)
def test_any_outscale_is_streamed_with_the_pixels_of_the_whole_resize(tmp_path, scales, height, width, tile,
                                                                      sixteen, grey, alpha):
    """Native scale, whole-number and fractional shrinks and enlarging, with and without an alpha plane: the
    strips put together are what ``enhance`` returns, colour and alpha planes side by side."""
    from restorecli.engine.enhance import EngineOptions, enhance, enhance_rows

    scale, outscale = scales
    model = _load_state(tmp_path, tiny_compact_state(scale), f"c{scale}")
    crop = np.ascontiguousarray(ASTRONAUT[:height, :width, :1] if grey else ASTRONAUT[:height, :width])
    plane = np.ascontiguousarray(ASTRONAUT[-height:, -width:, 1]) if alpha else None
    if sixteen:
        crop = crop.astype(np.uint16) * 257 + 100
        plane = plane.astype(np.uint16) * 257 if plane is not None else None
    options = EngineOptions(device=CPU, tile=tile, tile_pad=8, alpha=alpha or "model")
    sink = _StripRecorder()
    enhance_rows(model, crop, options, sink, outscale=outscale, alpha=plane)
    whole = enhance(model, crop, plane, options, outscale)
    expected = whole.color if plane is None else np.dstack([whole.color, whole.alpha])
    np.testing.assert_array_equal(sink.image(), expected)


def test_shrinking_strips_holds_back_part_bands_and_forgets_them_on_restart():
    from restorecli.engine.enhance import _ShrinkRows, resize

    image = ASTRONAUT[:30, :40]
    sink = _StripRecorder()
    shrink = _ShrinkRows(sink, 4)
    shrink.write(image[:6])  # one band of 4 rows goes on; 2 rows wait for the next strip
    assert [len(strip) for strip in sink.strips] == [1]
    shrink.restart()
    assert sink.restarts == 1 and not sink.strips
    for top, bottom in ((0, 3), (3, 13), (13, 28)):
        shrink.write(image[top:bottom])
    np.testing.assert_array_equal(sink.image(), resize(image[:28], (10, 7)))


def test_alpha_rows_follow_the_colour_strips_and_start_again_on_restart():
    from restorecli.engine.enhance import _WithAlpha

    colour, alpha = ASTRONAUT[:20, :30], ASTRONAUT[:20, :30, 2].copy()
    sink = _StripRecorder()
    joined = _WithAlpha(sink, alpha)
    joined.write(colour[:7])
    joined.restart()
    for top, bottom in ((0, 5), (5, 20)):
        joined.write(colour[top:bottom])
    np.testing.assert_array_equal(sink.image(), np.dstack([colour, alpha]))


@pytest.mark.parametrize("sixteen", [False, True])
def test_alpha_through_an_rgb_model_is_the_grey_of_its_rgb_result(tmp_path, sixteen):
    """The alpha pass runs a strip at a time into one plane; it must equal running the plane as RGB and
    taking the grey of the whole result, the way the originals do."""
    import cv2

    from restorecli.engine.enhance import EngineOptions, _upscale_alpha

    model = _load_state(tmp_path, tiny_compact_state(2))
    alpha = np.ascontiguousarray(ASTRONAUT[:50, :70, 2])
    if sixteen:
        alpha = alpha.astype(np.uint16) * 257
    options = EngineOptions(device=CPU, tile=16, tile_pad=4)
    rgb = upscale(model, np.repeat(alpha[:, :, None], 3, axis=2), device=CPU, tile=16, pad=4).image
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    got = _upscale_alpha(model, alpha, options, (140, 100), None)
    assert got.dtype == alpha.dtype
    np.testing.assert_array_equal(got, expected)


def test_the_final_resize_is_block_means_for_a_whole_number_shrink_and_opencv_s_filters_otherwise():
    """``resample`` (what the strips go through) against OpenCV resizing the whole result: the same bytes for
    whole-number shrinks (k x k block means), within one level elsewhere (area when shrinking, Lanczos-4 when
    enlarging, summed in float32 in another order)."""
    import cv2

    from restorecli.engine.enhance import resample

    image = np.ascontiguousarray(ASTRONAUT[:120, :160])
    for size in ((80, 60), (40, 30), (20, 15)):
        np.testing.assert_array_equal(resample(image, size), cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    for size, flag in (((120, 90), cv2.INTER_AREA), ((53, 41), cv2.INTER_AREA), ((240, 180), cv2.INTER_LANCZOS4),
                       ((333, 250), cv2.INTER_LANCZOS4)):
        ours, theirs = resample(image, size).astype(int), cv2.resize(image, size, interpolation=flag).astype(int)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1, size
    sixteen = image.astype(np.uint16) * 257
    assert np.abs(resample(sixteen, (333, 250)).astype(int)
                  - cv2.resize(sixteen, (333, 250), interpolation=cv2.INTER_LANCZOS4).astype(int)).max() <= 2
    assert resample(image[:, :, 0], (53, 41)).shape == (41, 53)


def test_resized_strips_hold_only_the_rows_still_needed_and_start_again_on_restart():
    from restorecli.engine.resample import ResizeRows

    image = np.ascontiguousarray(ASTRONAUT[:90, :60])
    sink = _StripRecorder()
    rows = ResizeRows(sink, (60, 90), (150, 225))  # 2.5x, Lanczos-4
    rows.write(image[:40])
    assert rows.held is not None and len(rows.held) <= 8  # the 4 rows either side of the next output row
    rows.restart()
    assert sink.restarts == 1 and not sink.strips and rows.held is None
    for top, bottom in ((0, 1), (1, 37), (37, 90)):
        rows.write(image[top:bottom])
    from restorecli.engine.enhance import resample

    np.testing.assert_array_equal(sink.image(), resample(image, (150, 225)))


# --- automatic tiles from the measured table ---------------------------------------------------------------------


def _grid_cost(height, width, rows, cols, pad, spec=None):
    from restorecli.engine.tiling import network_window

    plan = plan_grid(height, width, rows, cols, pad)
    y0, y1, x0, x1 = plan.tiles[0].window
    h, w = (y1 - y0, x1 - x0) if spec is None else network_window(spec, y1 - y0, x1 - x0)
    return h * w, len(plan.tiles) * h * w, plan


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 400), width=st.integers(1, 400), pad=st.integers(0, 32),
       per_pixel=st.sampled_from([600, 5000, 9000]), window=st.integers(16, 600))
def test_the_grid_chosen_fits_the_budget_and_computes_the_fewest_pixels(height, width, pad, per_pixel, window):
    """Against every grid, by brute force: the choice fits, no fitting grid computes fewer pixels, and so the
    computed pixels are within 1.10x of the output's wherever some grid that fits allows it."""
    from restorecli.engine.tiling import MIN_AUTO_TILE, choose_grid

    budget = per_pixel * window * window
    rows, cols = choose_grid(height, width, pad, per_pixel, budget)
    one, total, plan = _grid_cost(height, width, rows, cols, pad)
    max_rows, max_cols = max(1, height // MIN_AUTO_TILE), max(1, width // MIN_AUTO_TILE)
    fitting = [(r, c) for r in range(1, max_rows + 1) for c in range(1, max_cols + 1)
               if _grid_cost(height, width, r, c, pad)[0] * per_pixel <= budget]
    if not fitting:
        assert (rows, cols) == (max_rows, max_cols)  # the finest grid; out-of-memory retries go on from there
        return
    assert one * per_pixel <= budget
    cheapest = min(_grid_cost(height, width, r, c, pad)[1] for r, c in fitting)
    assert total == cheapest
    if height * width * per_pixel <= budget:
        assert (rows, cols) == (1, 1) and plan.computed_ratio == 1.0
    if any(_grid_cost(height, width, r, c, pad)[2].computed_ratio <= 1.10 for r, c in fitting):
        assert plan.computed_ratio <= 1.10


def test_a_large_image_with_room_for_big_windows_computes_at_most_1_10x_its_pixels():
    from restorecli.engine.tiling import choose_grid

    per_pixel = 5471  # about x4plus in bf16
    for height, width in ((2000, 3000), (1080, 1920), (4000, 6000)):
        rows, cols = choose_grid(height, width, 24, per_pixel, per_pixel * 1100 * 1100)
        plan = plan_grid(height, width, rows, cols, 24)
        assert plan.computed_ratio <= 1.10, (height, width, rows, cols, plan.computed_ratio)


def test_grids_account_for_the_padding_spandrel_adds():
    """A model that wants multiples of 16 is padded up to them: those pixels cost memory and time too."""
    from dataclasses import replace

    from restorecli.engine.tiling import choose_grid, network_window

    spec = replace(_spec(), multiple_of=16, minimum_size=32)
    assert network_window(spec, 20, 33) == (32, 48)
    assert network_window(replace(spec, square=True), 20, 33) == (48, 48)
    rows, cols = choose_grid(300, 500, 16, 1000, 1000 * 200 * 200, spec)
    one, _, _ = _grid_cost(300, 500, rows, cols, 16, spec)
    assert one * 1000 <= 1000 * 200 * 200


def _spec():
    from pathlib import Path

    from restorecli.engine.model import ModelSpec

    return ModelSpec(name="m", path=Path("m"), architecture="Compact", scale=2, default_outscale=2.0, input_channels=3,
                     output_channels=3, supports_half=True, supports_bfloat16=True, multiple_of=1, minimum_size=0,
                     square=False, tileable=True, max_features=64)


def test_a_512_input_that_fits_the_budget_runs_as_one_tile(tmp_path, monkeypatch):
    from restorecli.engine.tiling import memory

    model = _load_state(tmp_path, tiny_compact_state(2))
    per_pixel = memory.bytes_per_pixel(model, torch.float32)
    monkeypatch.setattr(memory, "available_memory", lambda device: per_pixel * 512 * 512)
    recorder = _with_recorder(model)
    result = upscale(model, ASTRONAUT, device=CPU, tile=None, pad=24)
    assert (result.tiles, result.tile, result.computed_ratio) == (1, 0, 1.0)
    assert recorder.batches == [(1, 3, 512, 512)]


def test_with_less_memory_the_tiles_fit_the_budget_by_the_table(tmp_path, monkeypatch):
    from restorecli.engine.tiling import memory

    model = _load_state(tmp_path, tiny_compact_state(2))
    per_pixel = memory.bytes_per_pixel(model, torch.float32)
    budget = per_pixel * 310 * 310  # windows of 304 x 304 (2 x 2 tiles) and 512 x 176 (1 x 4) fit, 304 x 512 not
    monkeypatch.setattr(memory, "available_memory", lambda device: budget)
    recorder = _with_recorder(model)
    result = upscale(model, ASTRONAUT, device=CPU, tile=None, pad=24)
    assert result.tiles > 1 and result.computed_ratio > 1.0
    assert all(n * h * w * per_pixel <= budget for n, _, h, w in recorder.batches)
    plan = memory.auto_plan(model, 512, 512, device=CPU, dtype=torch.float32, pad=24)
    assert (plan.rows * plan.cols, plan.computed_ratio) == (result.tiles, result.computed_ratio)
    # four columns, with no overlap between rows, compute fewer pixels than 2 x 2 tiles would
    assert (plan.rows, plan.cols, plan.computed_ratio) == (1, 4, pytest.approx(4 * 512 * 176 / 512**2))
    assert psnr(result.image, upscale(model, ASTRONAUT, device=CPU, tile=0).image) >= 45  # the seam bar


def test_an_untileable_model_runs_whole_whatever_the_budget(tmp_path, monkeypatch):
    from dataclasses import replace

    from restorecli.engine.tiling import memory

    model = _load_state(tmp_path, tiny_compact_state(2))
    model.spec = replace(model.spec, tileable=False)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    assert len(memory.auto_plan(model, 512, 512, device=CPU, dtype=torch.float32, pad=24).tiles) == 1


def test_the_plan_reports_its_tile_and_computed_ratio():
    plan = plan_grid(100, 300, 1, 3, 10)
    assert plan.tile == 100 and plan.computed_ratio == pytest.approx(3 * 100 * 120 / (100 * 300))
    assert plan_tiles(100, 300, 0, 10).tile == 0 and plan_tiles(100, 300, 0, 10).computed_ratio == 1.0


# --- quantising --------------------------------------------------------------------------------------------------


def _reference(values: torch.Tensor, maxval: float) -> np.ndarray:
    """What the output pixels are: the float result clamped, scaled, rounded (half to even), as numpy does it."""
    as_float = values.float().permute(1, 2, 0).numpy()
    return np.round(np.clip(as_float, 0, 1) * np.float32(maxval)).astype(np.uint16 if maxval > 255 else np.uint8)


def _awkward_values(dtype):
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(3, 37, 53, generator=generator) * 1.2 - 0.1  # out of range both ways, too
    # exact halves after scaling (127.5, 32767.5, ...) and the ends
    values[0, 0, :6] = torch.tensor([0.5, 0.0, 1.0, 1.5 / 255, 2.5 / 255, 32767.5 / 65535])
    return values.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("depth", [np.uint8, np.uint16])
def test_quantising_gives_the_reference_pixels(dtype, depth, monkeypatch):
    from restorecli.engine.tiling import pixels

    monkeypatch.setattr(pixels, "_QUANTISE_ELEMENTS", 500)  # several chunks, a partial last one
    values = _awkward_values(dtype)
    maxval = 255.0 if depth == np.uint8 else 65535.0
    expected = _reference(values, maxval)
    out = np.zeros((37, 53, 3), depth)
    pixels.quantise(values.clone(), pixels.tensor_of(out), maxval)  # float32 values are scaled in place
    np.testing.assert_array_equal(out, expected)
    # a strided view of channels_last memory, as tiles' outputs are, into a strided view of rows
    wide = torch.zeros(1, 3, 40, 60, dtype=dtype).contiguous(memory_format=torch.channels_last)
    wide[0, :, 2:39, 4:57] = values
    rows = np.zeros((50, 70, 3), depth)
    pixels.quantise(wide[0, :, 2:39, 4:57], pixels.tensor_of(rows)[5:42, 9:62], maxval)
    np.testing.assert_array_equal(rows[5:42, 9:62], expected)
    assert not rows[:5].any() and not rows[:, :9].any()


@pytest.mark.parametrize("layout", ["planes", "channels_last", "window"])
def test_eight_bit_pixels_from_float32_on_the_host_round_as_torch_at_every_boundary(layout):
    """The host's 8-bit path (OpenCV's one pass) gives torch's bytes on every value near each rounding boundary
    k + 0.5 and each level k, 64 float32 steps either side, and on values out of range and infinite."""
    from restorecli.engine.tiling import pixels

    levels = np.arange(256, dtype=np.float64)
    centres = np.concatenate([(levels[:-1] + 0.5) / 255, levels / 255]).astype(np.float32)
    steps = np.arange(-64, 65, dtype=np.int32)
    near = (centres.view(np.int32)[:, None] + steps[None, :]).view(np.float32).ravel()
    near = near[np.isfinite(near)]  # below 0.0's bits lie NaNs
    extremes = np.array([-np.inf, -1.0, -1e-9, 1.0000001, 2.0, np.inf], np.float32)
    flat = np.concatenate([near, extremes, np.zeros((-(near.size + extremes.size)) % 96, np.float32)])
    values = torch.from_numpy(flat.reshape(3, -1, 32))
    if layout == "channels_last":
        values = values.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]
    elif layout == "window":
        values = torch.nn.functional.pad(values, (2, 3, 1, 1))[:, 1:-1, 2:-3]
    expected = np.round(np.clip(values.permute(1, 2, 0).numpy(), 0, 1) * np.float32(255)).astype(np.uint8)
    out = np.zeros(expected.shape, np.uint8)
    pixels.quantise(values.clone() if layout != "window" else values, pixels.tensor_of(out), 255.0)
    np.testing.assert_array_equal(out, expected)
    assert expected.max() == 255 and expected.min() == 0 and len(np.unique(expected)) == 256


def test_sixteen_bit_pixels_on_a_torch_without_uint16_go_through_int16_bits(monkeypatch):
    from restorecli.engine.tiling import pixels

    monkeypatch.setattr(pixels, "_UINT16", None)
    values = _awkward_values(torch.float32)
    expected = _reference(values, 65535.0)
    out = np.zeros((37, 53, 3), np.uint16)
    view = pixels.tensor_of(out)
    assert view.dtype == torch.int16
    pixels.quantise(values, view, 65535.0)
    np.testing.assert_array_equal(out, expected)
    assert out.max() > 32767


def test_float_outputs_are_the_values_as_they_are():
    from restorecli.engine.tiling import pixels

    values = _awkward_values(torch.bfloat16)
    out = np.zeros((37, 53, 3), np.float32)
    pixels.quantise(values, pixels.tensor_of(out), None)
    np.testing.assert_array_equal(out, values.float().permute(1, 2, 0).numpy())


def test_only_cuda_is_staged_and_the_cpu_path_never_touches_cuda(tmp_path, monkeypatch):
    """Pinned buffers and side streams are for CUDA alone; on the CPU the output rows are written in place."""
    from restorecli.engine import tiling

    assert tiling.staged(torch.device("cuda")) and tiling.staged(torch.device("cuda:1"))
    assert not tiling.staged(CPU) and not tiling.staged(torch.device("mps"))

    def refuse(*args, **kwargs):
        raise AssertionError("the CPU path used CUDA")

    for name in ("Stream", "Event", "current_stream", "stream"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: refuse() if k.get("pin_memory") else real_empty(*a, **k))
    model = _load_state(tmp_path, tiny_compact_state(2))
    sink = _StripRecorder()
    upscale(model, ASTRONAUT[:40, :50], device=CPU, tile=16, pad=4, sink=sink)
    assert len(sink.strips) == 3
    assert upscale(model, ASTRONAUT[:40, :50], device=CPU, tile=16, pad=4).image.shape == (80, 100, 3)


class _LateCopies:
    """A ``Staging`` on the CPU whose side-stream copies run as late as a GPU's may (``late``: only once the host
    or the model's stream waits for their event), or as early (as soon as they are queued). The staged pixels
    must be the unstaged run's either way: a pinned buffer read before its copy ran, a device buffer the model
    overwrote before the copy out of it ran, or a pinned buffer refilled before it was handed over, would show.
    Its buffers start full of a value no test pixel has, so one that is never written would show too."""

    def __init__(self, device, late: bool):
        assert device == CPU
        self.late = late
        self.queue: list[tuple[int, object]] = []  # (event, copy), in the side stream's order
        self.issued = self.downloads = self.uploads = 0

    def _queue(self, copy) -> int:
        self.issued += 1
        if self.late:
            self.queue.append((self.issued, copy))
        else:
            copy()
        return self.issued

    def _run_to(self, event: int) -> None:
        while self.queue and self.queue[0][0] <= event:
            self.queue.pop(0)[1]()

    def empty(self, shape, dtype):
        return torch.full(shape, 99, dtype=dtype)

    def pinned(self, shape, dtype):
        return torch.full(shape, 99, dtype=dtype)

    def download(self, host, source):
        self.downloads += 1
        return self._queue(lambda: host.copy_(source))

    def upload(self, host):
        self.uploads += 1
        raw = torch.full(tuple(host.shape), 99, dtype=host.dtype)
        event = self._queue(lambda: raw.copy_(host))
        self._run_to(event)  # the model's stream waits for it; here the model runs on the host
        return raw, event

    def wait(self, event):
        self._run_to(event)

    def synchronize(self, event=None):
        self._run_to(self.issued if event is None else event)


def _late_staging(late: bool, made: list):
    def make(device):
        made.append(_LateCopies(device, late))
        return made[-1]

    return make


@pytest.mark.parametrize("late", [True, False], ids=["late-copies", "early-copies"])
@pytest.mark.parametrize("depth", ["uint8", "uint16", "uint16-without-torch-uint16"])
@pytest.mark.parametrize("to_sink", [False, True], ids=["array", "sink"])
def test_the_staged_path_gives_the_unstaged_pixels_however_late_its_copies_run(tmp_path, monkeypatch, late, depth,
                                                                               to_sink):
    """The CUDA path's logic (double-buffered pinned uploads and strip downloads on a side stream, events between
    the streams), run on the CPU through a ``Staging`` that runs copies late or early: 3 strips, batches of 5
    tiles that straddle tile rows."""
    from restorecli.engine.tiling import pixels

    if depth == "uint16-without-torch-uint16":
        monkeypatch.setattr(pixels, "_UINT16", None)
    image = ASTRONAUT[:40, :50] if depth == "uint8" else ASTRONAUT[:40, :50].astype(np.uint16) * 257 + 3
    model = _load_state(tmp_path, tiny_compact_state(2))
    reference = upscale(model, image, device=CPU, tile=16, pad=4, batch=5).image
    made: list[_LateCopies] = []
    sink = _StripRecorder() if to_sink else None
    result = upscale(model, image, device=CPU, tile=16, pad=4, batch=5, sink=sink,
                     staging=_late_staging(late, made))
    staged = sink.image() if sink is not None else result.image
    assert staged.dtype == reference.dtype
    np.testing.assert_array_equal(staged, reference)
    assert result.tiles == 12 and len(made) == 2  # one side stream for the windows, one for the rows
    windows, rows = made[1], made[0]
    assert (windows.uploads, rows.downloads) == (3, 3) and not windows.queue and not rows.queue
    if sink is not None:
        # tile rows end at input rows 13 and 27; each strip ends in the middle of the cross-fade below it (4 rows)
        assert [len(strip) for strip in sink.strips] == [26 - 4, 54 - 4 - 22, 80 - 50]


class _BreaksOnBatch(torch.nn.Module):
    """Wraps a network: raises an error that is not out-of-memory on its ``nth`` call."""

    def __init__(self, inner, nth):
        super().__init__()
        self.inner, self.nth, self.calls = inner, nth, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("the model broke")
        return self.inner(x)


def test_a_staged_run_that_fails_waits_for_its_copies_and_hands_nothing_more_over(tmp_path):
    model = _load_state(tmp_path, tiny_compact_state(2))
    model.descriptor._model = _BreaksOnBatch(model.descriptor._model, 3)
    made: list[_LateCopies] = []
    sink = _StripRecorder()
    with pytest.raises(RuntimeError, match="the model broke"):
        upscale(model, ASTRONAUT[:40, :50], device=CPU, tile=16, pad=4, batch=4, sink=sink,
                staging=_late_staging(True, made))
    assert all(not staging.queue for staging in made)  # every copy queued ran before upscale returned
    # rows 0 and 1 were copied down; only row 0, whose copy the second one's end waited for, was handed over
    assert made[0].downloads == 2 and len(sink.strips) == 1


def test_cuda_is_staged_through_cuda_streams_by_default():
    from restorecli.engine.tiling import CudaStaging, staging_for

    assert staging_for(torch.device("cuda")) is CudaStaging and staging_for(torch.device("cuda:1")) is CudaStaging
    assert staging_for(CPU) is None and staging_for(torch.device("mps")) is None


class _FakeCudaStream:
    """Stands in for a CUDA stream on the CPU, where every operation is done when it returns: it records which
    stream waits for which and what the host waits for, so the order of ``CudaStaging``'s calls can be checked."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_event(self, event):
        assert event.stream is not None, "a stream waits for an event never recorded"
        self.log.append((self.name, "waits for", event.stream))

    def synchronize(self):
        self.log.append(("host", "waits for", self.name))


class _FakeCudaEvent:
    def __init__(self, log):
        self.log, self.stream = log, None

    def record(self, stream):
        self.stream = stream.name

    def synchronize(self):
        assert self.stream is not None, "the host waits for an event never recorded"
        self.log.append(("host", "waits for", self.stream))


def test_cuda_staging_orders_its_streams_as_the_strips_and_uploads_need(tmp_path, monkeypatch):
    """``CudaStaging`` itself, run on the CPU with torch.cuda's streams and events standing in: the pixels are the
    unstaged run's, every copy down waits for the model's stream, the model's stream waits for every copy up and
    for the copy out of a buffer before writing it again, and the buffers are marked for the streams that use
    them."""
    from contextlib import nullcontext

    from restorecli.engine.tiling import CudaStaging

    model = _load_state(tmp_path, tiny_compact_state(2))
    reference = upscale(model, ASTRONAUT[:40, :50], device=CPU, tile=16, pad=4, batch=5).image
    log: list[tuple[str, ...]] = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: _FakeCudaStream("compute", log))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: _FakeCudaStream("copies", log))
    monkeypatch.setattr(torch.cuda, "Event", lambda: _FakeCudaEvent(log))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: log.append(("used on", stream.name)),
                        raising=False)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: real_empty(*a, **k))  # no CUDA to pin
    result = upscale(model, ASTRONAUT[:40, :50], device=CPU, tile=16, pad=4, batch=5, staging=CudaStaging)
    np.testing.assert_array_equal(result.image, reference)
    count = log.count
    assert count(("copies", "waits for", "compute")) == 3  # each strip's copy down, after the model wrote it
    assert count(("compute", "waits for", "copies")) == 3 + 1  # each batch's copy up; strip 2 reuses strip 0's
    assert count(("used on", "copies")) == 2 and count(("used on", "compute")) == 3  # the strip buffers, batches
    # the host: each strip before its hand-over, the first batch's copy before its buffer is refilled, each side
    # stream at the end
    assert count(("host", "waits for", "copies")) == 3 + 1 + 2
