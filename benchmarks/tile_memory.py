"""Peak activation memory per input pixel of a window, per architecture family: the table auto tiling plans with.

Each configuration is a family in a published shape, built with random weights (memory does not depend on the
weights' values), saved as .safetensors and loaded the way restorecli loads any model (``load_model``,
``place_model``). Then, for each precision and window size, a fresh process loads it, warms it on a tiny window,
and runs one window as ``tiling._run_plan`` does (``window_batch``, channels_last, ``torch.inference_mode``):

- on the CPU it reads the growth of the process's peak resident memory (``VmHWM`` in /proc/self/status, reset
  after the warm-up by writing 5 to /proc/self/clear_refs);
- on CUDA, ``torch.cuda.max_memory_allocated`` over what was allocated before.

Three window sizes per configuration; the figure is the least-squares slope of bytes over input pixels, so the
fixed costs (weights, kernel caches) drop out, or the most bytes per pixel a window but the smallest took, where
that is more (``figure``). ``--write`` puts the table into src/restorecli/engine/activation.py,
between its markers, with the machine, the torch version and the date.

    python benchmarks/tile_memory.py                  # measure every configuration on the CPU, print the table
    python benchmarks/tile_memory.py --write          # ... and write it into activation.py
    python benchmarks/tile_memory.py --device cuda --only HAT --only SwinIR
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE_FILE = ROOT / "src" / "restorecli" / "engine" / "activation.py"
CNN_SIDES = (128, 256, 384)
LIGHT_SIDES = (256, 512, 768)  # small networks: windows as large as they are given in practice
TRANSFORMER_SIDES = (64, 112, 160)


@dataclass(frozen=True)
class Config:
    name: str  # the published model it stands for
    module: str  # spandrel.architectures.<module>
    cls: str
    kwargs: dict = field(default_factory=dict)
    sides: tuple[int, ...] = CNN_SIDES


def _swin(**extra):
    return dict(img_size=64, window_size=8, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2,
                resi_connection="1conv", **extra)


T = TRANSFORMER_SIDES
CONFIGS = (
    # restorecli's registry
    Config("realesrgan-x4plus", "ESRGAN", "ESRGAN", dict(num_filters=64, num_blocks=23, scale=4)),
    Config("realesrgan-x4plus-anime (6 blocks)", "ESRGAN", "ESRGAN", dict(num_filters=64, num_blocks=6, scale=4)),
    Config("realesrgan-x2plus", "ESRGAN", "ESRGAN", dict(in_nc=12, num_filters=64, num_blocks=23, scale=4,
                                                         shuffle_factor=2)),
    Config("ESRGAN x2 (no unshuffle)", "ESRGAN", "ESRGAN", dict(num_filters=64, num_blocks=6, scale=2)),
    Config("ESRGAN x4, 32 filters", "ESRGAN", "ESRGAN", dict(num_filters=32, num_blocks=6, scale=4)),
    # 1x restoration models, run before an upscaler in a chain
    Config("scunet-color-real-psnr", "SCUNet", "SCUNet", dict(in_nc=3, config=[4] * 7, dim=64)),
    Config("fbcnn-color", "FBCNN", "FBCNN", dict(in_nc=3, out_nc=3, nc=[64, 128, 256, 512], nb=4)),
    Config("realesr-animevideov3", "Compact", "Compact", dict(num_feat=64, num_conv=16, upscale=4),
           LIGHT_SIDES),
    Config("realesr-animevideov3-x3", "Compact", "Compact", dict(num_feat=64, num_conv=16, upscale=3),
           LIGHT_SIDES),
    Config("realesr-animevideov3-x2", "Compact", "Compact", dict(num_feat=64, num_conv=16, upscale=2),
           LIGHT_SIDES),
    Config("realesr-general-x4v3", "Compact", "Compact", dict(num_feat=64, num_conv=32, upscale=4),
           LIGHT_SIDES),
    Config("Compact x4, 32 features", "Compact", "Compact", dict(num_feat=32, num_conv=16, upscale=4),
           LIGHT_SIDES),
    # other spandrel families, in their usual published shapes
    Config("SPAN x4", "SPAN", "SPAN", dict(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4)),
    Config("SPAN x2", "SPAN", "SPAN", dict(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=2)),
    Config("RealCUGAN 2x", "RealCUGAN", "UpCunet2x"),
    Config("RealCUGAN 3x", "RealCUGAN", "UpCunet3x"),
    Config("RealCUGAN 4x", "RealCUGAN", "UpCunet4x"),
    Config("OmniSR x4", "OmniSR", "OmniSR", dict(num_feat=64, block_num=1, res_num=5, window_size=8, up_scale=4),
           T),
    Config("SwiftSRGAN x4", "SwiftSRGAN", "SwiftSRGAN"),
    Config("RealPLKSR x4", "PLKSR", "RealPLKSR", dict(dim=64, n_blocks=28, upscaling_factor=4)),
    Config("PLKSR x4", "PLKSR", "PLKSR", dict(dim=64, n_blocks=28, upscaling_factor=4)),
    Config("RCAN x4", "RCAN", "RCAN", dict(scale=4)),
    Config("SAFMN x4", "SAFMN", "SAFMN", dict(dim=36, n_blocks=8, upscaling_factor=4)),
    Config("DITN x4", "DITN", "DITN", dict(upscale=4), T),
    Config("DCTLSA x4", "DCTLSA", "DCTLSA", dict(upscale=4), T),
    Config("MoSR x4", "MoSR", "MoSR", dict(upscale=4)),
    Config("SeemoRe x4", "SeemoRe", "SeemoRe", dict(scale=4)),
    Config("SwinIR-M x4 (real-world)", "SwinIR", "SwinIR", _swin(upscale=4, upsampler="nearest+conv"), T),
    Config("SwinIR-M x4 (classical)", "SwinIR", "SwinIR", _swin(upscale=4, upsampler="pixelshuffle"), T),
    Config("SwinIR-M x2 (classical)", "SwinIR", "SwinIR", _swin(upscale=2, upsampler="pixelshuffle"), T),
    Config("SwinIR-S x4 (lightweight)", "SwinIR", "SwinIR",
           dict(img_size=64, window_size=8, embed_dim=60, depths=[6] * 4, num_heads=[6] * 4, mlp_ratio=2,
                upscale=4, upsampler="pixelshuffledirect", resi_connection="1conv"), T),
    Config("Swin2SR x4 (real-world)", "Swin2SR", "Swin2SR", _swin(upscale=4, upsampler="nearest+conv"), T),
    Config("HAT x4", "HAT", "HAT",
           dict(img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5,
                embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2, upscale=4, upsampler="pixelshuffle",
                resi_connection="1conv"), T),
    Config("HAT-S x4", "HAT", "HAT",
           dict(img_size=64, window_size=16, compress_ratio=24, squeeze_factor=24, conv_scale=0.01,
                overlap_ratio=0.5, embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2, upscale=4,
                upsampler="pixelshuffle", resi_connection="1conv"), T),
    Config("DAT x4", "DAT", "DAT",
           dict(img_size=64, split_size=[8, 32], depth=[6] * 6, embed_dim=180, num_heads=[6] * 6,
                expansion_factor=4, resi_connection="1conv", upscale=4, upsampler="pixelshuffle"), (64, 128, 192)),
    Config("DAT-light x4", "DAT", "DAT",
           dict(img_size=64, split_size=[8, 32], depth=[18], embed_dim=60, num_heads=[6], expansion_factor=2,
                resi_connection="3conv", upscale=4, upsampler="pixelshuffledirect"), (64, 128, 192)),
    Config("RGT x4", "RGT", "RGT",
           dict(img_size=64, embed_dim=180, depth=[6] * 8, num_heads=[6] * 8, mlp_ratio=2, split_size=[8, 32],
                c_ratio=0.5, upscale=4), (64, 128, 192)),
    Config("DRCT x4", "DRCT", "DRCT",
           dict(img_size=64, window_size=16, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2,
                upscale=4, upsampler="pixelshuffle", gc=32), T),
    Config("ATD x4", "ATD", "ATD",
           dict(embed_dim=210, depths=[6] * 6, num_heads=[6] * 6, window_size=16, category_size=256,
                num_tokens=128, reducted_dim=20, convffn_kernel_size=5, mlp_ratio=2, upscale=4,
                upsampler="pixelshuffle"), T),
    Config("CRAFT x4", "CRAFT", "CRAFT", dict(upscale=4), T),
)


# --- one measurement, in its own process ------------------------------------------------------------------------

def _status(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def child(path: str, precision: str, device_name: str, sides: list[int]) -> None:
    """Load ``path``, warm it, run one window per side, print {side: bytes} as JSON."""
    import gc

    import numpy as np
    import torch

    from restorecli.engine.device import place_model
    from restorecli.engine.tiling import Tile, network_window, window_batch
    from restorecli.models.loading import load_model

    device = torch.device(device_name)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = place_model(load_model(path, Path(path).parent), device, dtype)
    rng = np.random.default_rng(0)

    def run(side: int) -> None:
        image = rng.integers(0, 256, (side, side, model.spec.input_channels), dtype=np.uint8)
        tile = Tile(0, 0, (0, side, 0, side), (0, side, 0, side))
        with torch.inference_mode():
            inputs = window_batch(image, [tile], device, dtype).contiguous(memory_format=torch.channels_last)
            out = model.descriptor(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            del out

    tiny = network_window(model.spec, 16, 16)[0]
    run(tiny)  # the warm-up: kernels chosen, weights reordered, caches filled
    gc.collect()
    grown = {}
    for side in sides:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            run(side)
            grown[side] = torch.cuda.max_memory_allocated(device) - before
        else:
            before = _status("VmRSS")
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # VmHWM back to the current resident size
            run(side)
            grown[side] = _status("VmHWM") - before
    print(json.dumps(grown))


# --- the driver -------------------------------------------------------------------------------------------------

def build(config: Config, folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = importlib.import_module(f"spandrel.architectures.{config.module}")
    net = getattr(module, config.cls)(**config.kwargs)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    path = folder / (re.sub(r"[^A-Za-z0-9]+", "-", config.name).strip("-") + ".safetensors")
    save_file(state, str(path))
    return path


def figure(points: dict[int, int]) -> int:
    """The table's bytes per pixel: the slope, or, where more, the most bytes per pixel any window but the smallest
    took. Windows do not always cost in proportion: other kernels are picked for other sizes (attention's
    matrix products, oneDNN's convolutions), and the allocator reuses what it holds, so the slope alone can
    undercount a window of a size in between. The smallest window is left out of that maximum: what a call
    costs whatever its size weighs most there, and tiles are seldom that small."""
    sides = sorted(points)
    return round(max([slope(points)[0]] + [points[side] / side**2 for side in sides[1:]]))


def slope(points: dict[int, int]) -> tuple[float, float]:
    """Least-squares bytes per pixel over the windows' pixels, and the largest residual as a share of the peak."""
    xs = [side * side for side in points]
    ys = list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    worst = max(abs(a + b * x - y) for x, y in zip(xs, ys)) / max(ys)
    return b, worst


def measure(config: Config, folder: Path, device: str, timeout: float) -> dict:
    from restorecli.engine.activation import architecture_id, variant_of
    from restorecli.engine.tiling import network_window
    from restorecli.models.loading import load_model

    path = build(config, folder)
    model = load_model(str(path), folder)
    spec = model.spec
    sides = sorted({network_window(spec, s, s)[0] for s in config.sides})
    row = dict(config=config.name, architecture=architecture_id(model), variant=variant_of(model.module),
               scale=spec.scale, width=spec.max_features, tileable=spec.tileable,
               params=sum(p.numel() for p in model.module.parameters()))
    precisions = ["fp32"] + (["bf16"] if spec.supports_bfloat16 else [])
    if device.startswith("cuda") and spec.supports_half:
        precisions.append("fp16")
    for precision in precisions:
        started = time.perf_counter()
        points: dict[int, int] = {}
        runs = [sides] if device.startswith("cuda") else [[side] for side in sides]
        try:
            for run in runs:
                done = subprocess.run([sys.executable, __file__, "--child", str(path), precision, device,
                                       ",".join(map(str, run))], capture_output=True, text=True, timeout=timeout,
                                      check=True)
                points.update({int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()})
        except (subprocess.SubprocessError, ValueError) as exc:
            lines = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()
            row[precision] = None
            row[f"{precision}_error"] = (lines[-1] if lines else type(exc).__name__)[:200]
            continue
        per_pixel, worst = slope(points)
        row[precision] = figure(points)
        row[f"{precision}_slope"] = round(per_pixel)
        row[f"{precision}_points"] = points
        row[f"{precision}_residual"] = round(worst, 4)
        row[f"{precision}_seconds"] = round(time.perf_counter() - started, 1)
    path.unlink()
    return row


def machine(device: str) -> str:
    import torch

    from restorecli.engine.device import cpu_model

    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{cpu_model()}, {torch.get_num_threads()} threads"
    return (f"{where}; torch {torch.__version__}, spandrel {importlib.import_module('spandrel').__version__}, "
            f"Python {platform.python_version()}; {datetime.date.today().isoformat()}; {device}")


def render(rows: list[dict], where: str) -> str:
    lines = ["# --- measured: begin (written by benchmarks/tile_memory.py --write) ---",
             f"MEASURED_WITH = {where!r}", "MEASURED: tuple[Measured, ...] = ("]
    for row in rows:
        if row.get("fp32") is None:
            continue
        if row.get("bf16") is None and row.get("bf16_error"):
            reason = row["bf16_error"].split("['")[-1].strip("'].")[:80]  # the measuring process's last words
            lines.append(f"    # bf16 failed here: {reason}")
        line = (f"    Measured({row['architecture']!r}, {row['variant']!r}, {row['scale']}, {row['width']}, "
                f"{row['fp32']}, {row.get('bf16')}, {row['config']!r}),")
        if len(line) > 120:  # the configuration's name on a line of its own
            cut = line.rindex(", '") + 1
            line = line[:cut] + "\n" + " " * 13 + line[cut:].lstrip()
        lines.append(line)
    lines += [")", "# --- measured: end ---"]
    return "\n".join(lines)


def write_table(rows: list[dict], where: str) -> None:
    text = TABLE_FILE.read_text()
    pattern = re.compile(r"# --- measured: begin.*?# --- measured: end ---", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{TABLE_FILE}: no measured block to replace")
    TABLE_FILE.write_text(pattern.sub(lambda _: render(rows, where), text))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], [int(s) for s in sys.argv[5].split(",")])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--only", action="append", default=[],
                        help="architecture id or configuration name to measure (repeatable; default all)")
    parser.add_argument("--write", action="store_true", help=f"write the table into {TABLE_FILE.relative_to(ROOT)}")
    parser.add_argument("--json", type=Path,
                        help="also write the machine and every row, with its points, as JSON lines here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per measuring process")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="measure nothing: write the table (with --write) from rows an earlier --json saved")
    args = parser.parse_args()
    if args.from_json:
        lines = args.from_json.read_text().splitlines()
        where = json.loads(lines[0])["machine"]
        latest = {}  # a configuration measured again (a later line) replaces the earlier row
        for line in lines[1:]:
            if not line.startswith('{"machine"'):
                row = json.loads(line)
                latest[row["config"]] = row
        order = {config.name: i for i, config in enumerate(CONFIGS)}
        rows = sorted(latest.values(), key=lambda row: order.get(row["config"], len(order)))
        for row in rows:  # the figure again from the points, as this version of the script takes it
            for precision in ("fp32", "bf16", "fp16"):
                if row.get(f"{precision}_points"):
                    row[precision] = figure({int(k): v for k, v in row[f"{precision}_points"].items()})
        if args.write:
            write_table(rows, where)
        print(render(rows, where))
        return
    configs = [c for c in CONFIGS if not args.only or c.module in args.only or c.name in args.only
               or c.cls in args.only]
    where = machine(args.device)
    print(f"# {where}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": where}) + "\n")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for config in configs:
            try:
                row = measure(config, Path(folder), args.device, args.timeout)
            except Exception as exc:  # a configuration spandrel cannot build or load here: say so, go on
                row = dict(config=config.name, error=f"{type(exc).__name__}: {exc}"[:300])
            rows.append(row)
            if args.json:
                with args.json.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            print(f"{row['config']:36} {row.get('architecture', '-'):10} x{row.get('scale', '-')} "
                  f"w{row.get('width', '-'):<4} fp32 {row.get('fp32')} bf16 {row.get('bf16')} "
                  f"fp16 {row.get('fp16', '-')}  {row.get('variant', '')} {row.get('error', '')}"
                  f"{row.get('fp32_error', '')}", flush=True)
    if args.write:
        write_table(rows, where)
        print(f"wrote {TABLE_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
