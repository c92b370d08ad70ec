"""Spandrel (torch) models on ncnn: converted once per model with pnnx, checked against torch, cached.

pnnx (the ``pnnx`` package, the extra ``restorecli[ncnn]``) reads a TorchScript trace and writes an ncnn graph. It is
run in a subprocess asked for the ncnn files only (its other outputs go to /dev/null), with its resident memory
watched: on realesrgan-x4plus it went on to about 20 GB after writing the ncnn files, which on a shared machine is
an outage, so a conversion past ``memory_limit()`` is stopped and the model stays on torch. Every converted graph is
run on random tiles of two sizes and kept only within ``TOLERANCE`` of torch in fp32 (as the ncnn import is held to).
The result lives in the user cache under the weights' sha256 and the pnnx and ncnn versions; a failure is recorded
beside the precision verdicts with its reason, so neither is paid twice.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.backends.ncnn import NcnnBackend, NcnnGraph
from ..engine.model import LoadedModel
from ..engine.precision import Notice, parameter_millions, recall, remember
from ..progress import Step
from ..errors import DeviceUnavailable, UsageError
from ..files import user_cache
from .ncnn import native_graph

PNNX_INSTALL = "pip install 'restorecli[ncnn]'"  # the extra that brings pnnx (and ncnn)
MEMORY_ENV = "RESTORECLI_PNNX_MEMORY_MB"
DEFAULT_MEMORY_MB = 4096  # x4plus converted at a peak well under this (docs/performance.md)
TOLERANCE = 1e-4  # max abs difference from torch in fp32, on values in [0, 1]
TRACE_SIDE = 32  # the traced input's side (rounded up to the model's size rules): small, any size runs after
_POLL_SECONDS = 0.02


class ConversionFailed(Exception):
    """pnnx could not convert a model, went past its memory limit (``limit``, bytes) or its time, or its graph
    failed the check against torch."""

    def __init__(self, message: str, limit: int | None = None):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class ConverterRun:
    """One run of the pnnx binary: its peak resident memory (bytes) and wall time."""

    peak: int
    seconds: float


def available() -> bool:
    """Whether pnnx is installed (found without importing it)."""
    return importlib.util.find_spec("pnnx") is not None


def memory_limit() -> int:
    """Bytes the converter may hold resident: $RESTORECLI_PNNX_MEMORY_MB, else ``DEFAULT_MEMORY_MB``."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    try:
        return int(float(text) * 1024**2) if text else DEFAULT_MEMORY_MB * 1024**2
    except ValueError:
        raise UsageError(f"${MEMORY_ENV}={text!r} is not a number of MiB") from None


def versions() -> str:
    """The converter's and the runtime's versions, part of every cache key."""
    return f"pnnx {importlib.metadata.version('pnnx')} | ncnn {importlib.metadata.version('ncnn')}"


def cache_folder(weights_sha256: str) -> Path:
    """Where the ncnn form of the weights hashing to ``weights_sha256`` is kept, for this pnnx and ncnn."""
    tag = versions().replace(" | ", "-").replace(" ", "")
    return user_cache("ncnn", f"{weights_sha256}-{tag}")


def failure_key(weights_sha256: str) -> str:
    """Where a failed conversion's reason is recorded (``precision.remember``)."""
    return f"ncnn conversion | {weights_sha256} | {versions()}"


def cached_graph(weights_sha256: str) -> NcnnGraph | None:
    """The converted graph from an earlier run, or None."""
    folder = cache_folder(weights_sha256)
    param, weights = folder / "model.param", folder / "model.bin"
    return native_graph(param, weights) if param.is_file() and weights.is_file() else None


def record_failure(weights_sha256: str, failure: ConversionFailed) -> None:
    """Record why the weights could not be converted, so later runs say it without trying again: a conversion
    stopped for its time too, which would otherwise cost every run that time again."""
    remember(failure_key(weights_sha256), {"reason": str(failure), "limit": failure.limit})


def recorded_failure(weights_sha256: str) -> str | None:
    """Why an earlier run could not convert these weights, unless it was stopped at a memory limit lower than
    today's (a larger limit tries again)."""
    entry = recall(failure_key(weights_sha256))
    if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str):
        return None
    if entry.get("limit") is not None and memory_limit() > int(entry["limit"]):
        return None
    return entry["reason"]


def trace_shape(model: LoadedModel, side: int = TRACE_SIDE) -> tuple[int, int, int, int]:
    """An N x C x H x W input the model takes: ``side`` rounded up to its minimum and its multiple."""
    spec = model.spec
    side = max(side, spec.minimum_size)
    side += -side % max(spec.multiple_of, 1)
    return 1, spec.input_channels, side, side


def trace(model: LoadedModel, target: Path) -> tuple[int, ...]:
    """Save a TorchScript trace of ``model``'s network (a CPU fp32 copy) to ``target``; returns the input shape."""
    shape = trace_shape(model)
    network = copy.deepcopy(model.module).to("cpu", torch.float32).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls tracing deprecated; shape-dependent branches show in the check
        traced = torch.jit.trace(network, torch.rand(shape), check_trace=False)
    traced.save(str(target))
    return shape


def _peak_resident(pid: int) -> int:
    """The most resident memory the process has held so far (its high-water mark), in bytes; 0 where /proc does
    not say. (``wait4``'s ``ru_maxrss`` will not do: on Linux a child's counts its parent's memory at the fork.)"""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_pnnx(traced: Path, shape: tuple[int, ...], folder: Path, limit: int, timeout: float = 600.0) -> ConverterRun:
    """Run the pnnx binary on ``traced``, writing ``folder/model.param`` and ``model.bin`` only, its peak resident
    memory read every ``_POLL_SECONDS`` as it runs, and killed once past ``limit`` bytes (or ``timeout`` seconds).
    Raises ``ConversionFailed`` with the reason."""
    import pnnx

    command = [pnnx.EXEC_PATH, str(traced), f"inputshape=[{','.join(map(str, shape))}]f32", "fp16=0",
               f"ncnnparam={folder / 'model.param'}", f"ncnnbin={folder / 'model.bin'}", "ncnnpy=/dev/null",
               "pnnxparam=/dev/null", "pnnxbin=/dev/null", "pnnxpy=/dev/null", "pnnxonnx=/dev/null"]
    log = folder / "pnnx.log"
    start = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=folder)
    stopped, peak = None, 0
    while process.poll() is None:
        peak = max(peak, _peak_resident(process.pid))
        if peak > limit:
            stopped = "memory"
        elif time.perf_counter() - start > timeout:
            stopped = "time"
        if stopped:
            process.kill()
            process.wait()
            break
        time.sleep(_POLL_SECONDS)  # a watchdog's pace, not a test's wait
    run = ConverterRun(peak, round(time.perf_counter() - start, 2))
    mib = f"{run.peak / 1024**2:.0f} MiB"
    if stopped == "memory":
        raise ConversionFailed(f"pnnx was stopped at its memory limit ({limit // 1024**2} MiB, ${MEMORY_ENV}; "
                               f"it reached {mib})", limit)
    if stopped == "time":
        raise ConversionFailed(f"pnnx was stopped after {timeout:.0f} s")
    if process.returncode != 0 or not (folder / "model.param").is_file():
        tail = " ".join(log.read_text(errors="replace").split()[-30:])
        raise ConversionFailed(f"pnnx could not convert it (exit status {process.returncode}: ...{tail[-300:]})")
    return run


def check_sizes(model: LoadedModel) -> list[tuple[int, int]]:
    """The tile sizes a converted graph is checked on: the traced one, and a larger one of other proportions (a
    graph that kept the traced size somewhere fails there)."""
    _, _, side, _ = trace_shape(model)
    step = max(model.spec.multiple_of, 1)
    other = (side + 3 * step, side + (3 if model.spec.square else 7) * step)
    return [(side, side), other]


def check(model: LoadedModel, graph: NcnnGraph, seed: int = 0) -> float:
    """The largest difference between ``graph`` on ncnn's CPU path and ``model``'s network in torch (a CPU fp32
    copy), both clamped to [0, 1] as they run, over random tiles of ``check_sizes``. Raises ``ConversionFailed``
    past ``TOLERANCE`` (or where ncnn cannot run it)."""
    network = copy.deepcopy(model.module).to("cpu", torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    try:
        backend = NcnnBackend(graph)
    except DeviceUnavailable as exc:
        raise ConversionFailed(f"ncnn could not load its converted graph ({exc})") from None
    worst = 0.0
    for height, width in check_sizes(model):
        tile = torch.rand(1, model.spec.input_channels, height, width, generator=generator)
        with torch.no_grad():
            expected = network(tile).clamp(0, 1)
        try:
            found = backend.run(tile)
        except RuntimeError as exc:
            raise ConversionFailed(f"ncnn could not run its converted graph on a {width}x{height} tile "
                                   f"({exc})") from None
        if found.shape != expected.shape:
            raise ConversionFailed(f"its ncnn graph gave {tuple(found.shape)} for a {width}x{height} tile, where "
                                   f"torch gives {tuple(expected.shape)}")
        worst = max(worst, float((found - expected).abs().max()))
    if not np.isfinite(worst) or worst > TOLERANCE:
        raise ConversionFailed(f"its ncnn graph is {worst:.2g} from torch on a random tile (at most {TOLERANCE:g})")
    return worst


def convert(model: LoadedModel, weights_sha256: str, notice: Notice | None = None,
            limit: int | None = None) -> NcnnGraph:
    """Convert ``model`` (its weights hashing to ``weights_sha256``) to ncnn with pnnx, check it against torch, and
    keep it in ``cache_folder``: written in a temporary folder beside it and renamed into place whole, so a
    conversion that fails leaves nothing there. A ``Step``, its time estimated from the model's size; ``notice``
    hears its start and end where no listener does. Raises ``ConversionFailed``."""
    limit = memory_limit() if limit is None else limit
    final = cache_folder(weights_sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    with Step(f"converting {model.spec.name} to ncnn with pnnx (first run only: the result is cached for later runs)",
              kind="pnnx conversion", size=parameter_millions(model), notice=notice, tell_end=True) as step:
        run, worst = _convert_into(model, final, limit)
        step.found = (f"converted {model.spec.name} to ncnn (pnnx {run.seconds:.1f} s, peak "
                      f"{run.peak / 1024**2:.0f} MiB; within {worst:.1g} of torch)")
    graph = cached_graph(weights_sha256)
    assert graph is not None
    return graph


def _convert_into(model: LoadedModel, final: Path, limit: int) -> tuple[ConverterRun, float]:
    """``convert``'s work: trace, pnnx, the check, and the rename into ``final``; pnnx's run and the difference."""
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".converting-") as work_dir:
        work = Path(work_dir)
        try:
            shape = trace(model, work / "model.pt")
        except Exception as exc:  # noqa: BLE001 - an architecture torch cannot trace stays on torch, saying why
            raise ConversionFailed(f"torch could not trace it for pnnx ({type(exc).__name__}: "
                                   f"{str(exc).strip()[:200]})") from None
        run = run_pnnx(work / "model.pt", shape, work, limit)
        worst = check(model, native_graph(work / "model.param", work / "model.bin"))
        (work / "done").mkdir()
        for name in ("model.param", "model.bin"):
            os.replace(work / name, work / "done" / name)
        try:
            os.rename(work / "done", final)
        except OSError:  # another process put its own there first: the same conversion
            shutil.rmtree(work / "done", ignore_errors=True)
    return run, worst
