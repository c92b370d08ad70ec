"""PNG encode time of restorecli's strip writer: one zlib stream at OpenCV's settings (level 1, RLE: the writer
before the parallel deflate and ISA-L) and OpenCV's own ``cv2.imencode`` beside the writer's segmented stream
(``images/deflate.py``: ISA-L's level 1) deflated by 1, 2 and all worker threads, on photo-like RGB images
(skimage's astronaut, upscaled with cv2's bicubic resize) fed in strips of 256 rows as the engine hands them over.
Reports the best of ``--repeats`` runs (these machines are shared, so single runs move) in wall seconds and
process CPU seconds, the speed-up over one stream, and the file sizes.

    python benchmarks/png_deflate.py [--sizes 2048 4096] [--repeats 5] [--segment-kib N] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import time
import zlib
from importlib.metadata import version

import cv2
import numpy as np
from common import machine, photos

from restorecli.images import png
from restorecli.images.png import PngWriter, deflate_workers

STRIP_ROWS = 256


def single_stream(pixels: np.ndarray) -> bytes:
    """What the writer did before segments and ISA-L: the same filter, one zlib stream at OpenCV's settings, the
    same IDAT chunks."""
    height, width, channels = pixels.shape
    out = io.BytesIO()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out.write(png.PNG_SIGNATURE + png.png_chunk(b"IHDR", header))
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    pending = bytearray()
    step = max(1, (1 << 20) // (width * channels))
    for top in range(0, height, step):
        flat = np.ascontiguousarray(pixels[top : top + step]).reshape(-1, width * channels)
        filtered = np.empty((len(flat), flat.shape[1] + 1), np.uint8)
        filtered[:, 0] = 1
        filtered[:, 1:4] = flat[:, :3]
        np.subtract(flat[:, 3:], flat[:, :-3], out=filtered[:, 4:])
        pending += compressor.compress(filtered)
    pending += compressor.flush()
    for start in range(0, len(pending), png._IDAT_BYTES):
        out.write(png.png_chunk(b"IDAT", bytes(pending[start : start + png._IDAT_BYTES])))
    out.write(png.png_chunk(b"IEND", b""))
    return out.getvalue()


def segmented(pixels: np.ndarray, workers: int) -> bytes:
    height, width, channels = pixels.shape
    out = io.BytesIO()
    writer = PngWriter(out, width, height, channels, pixels.dtype, workers=workers)
    for top in range(0, height, STRIP_ROWS):
        writer.write(pixels[top : top + STRIP_ROWS])
    writer.close()
    return out.getvalue()


def best_of(repeats: int, encode) -> tuple[float, float, bytes]:
    """The least wall and the least CPU seconds over ``repeats`` runs, and the file."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        encoded = encode()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), encoded


def measure(sizes: list[int], repeats: int) -> list[dict]:
    every = deflate_workers()
    rows = []
    for side in sizes:
        [pixels] = photos(side, side, 1)  # the astronaut, enlarged with cv2's bicubic resize
        cases = [("one zlib stream", lambda pixels=pixels: single_stream(pixels)),
                 ("OpenCV's imencode", lambda pixels=pixels: cv2.imencode(".png", pixels[:, :, ::-1])[1].tobytes())]
        cases += [(f"segments, {n} worker{'s' * (n > 1)}", lambda n=n, pixels=pixels: segmented(pixels, n))
                  for n in sorted({1, 2, every})]
        base_wall = base_bytes = None
        for name, encode in cases:
            wall, cpu, encoded = best_of(repeats, encode)
            decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)  # libpng reads it
            assert np.array_equal(decoded[:, :, ::-1], pixels), name
            base_wall = base_wall or wall
            base_bytes = base_bytes or len(encoded)
            rows.append({"image": f"{side}x{side} RGB", "encoder": name, "wall_s": round(wall, 4),
                         "cpu_s": round(cpu, 4), "speedup": round(base_wall / wall, 2), "bytes": len(encoded),
                         "bytes_vs_one_stream": len(encoded) - base_bytes})
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| image | encoder | wall s | CPU s | speed-up | bytes | vs one zlib stream |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        share = 100 * row["bytes_vs_one_stream"] / (row["bytes"] - row["bytes_vs_one_stream"])
        lines.append(f"| {row['image']} | {row['encoder']} | {row['wall_s']:.3f} | {row['cpu_s']:.3f} | "
                     f"{row['speedup']:.2f}x | {row['bytes']:,} | {row['bytes_vs_one_stream']:+,} "
                     f"({share:+.4f}%) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segment-kib", type=int, help="raw bytes a segment holds (default: the writer's)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.segment_kib:
        png._SEGMENT_BYTES = args.segment_kib << 10
    rows = measure(args.sizes, args.repeats)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{machine()}, {cpus} CPUs to use; zlib {zlib.ZLIB_RUNTIME_VERSION}, isal {version('isal')}, "
          f"segments of {png._SEGMENT_BYTES >> 10} KiB, strips of {STRIP_ROWS} rows, best of {args.repeats}")
    print(render(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpus": cpus, "zlib": zlib.ZLIB_RUNTIME_VERSION, "isal": version("isal"), "rows": rows}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
