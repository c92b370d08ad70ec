"""The picture at the top of the README and the docs: a crop of a test input beside the same region restored by
restorecli itself (the ``restorecli`` command of this environment, its default model, on the CPU).

    python scripts/before_after.py [--input test_inputs/astronaut_face.jpg] [--box 40 16 64 64]
                                   [--output docs/images/before-after.png] [-- RESTORE OPTIONS...]

The left half is the input's crop enlarged by nearest neighbour (each input pixel a square, as a viewer zoomed in
shows it); the right half is the restored output's crop of the same region. Options after ``--`` go to
``restorecli restore`` (``-- --preset old-photo``). Writes docs/images/before-after.png unless told otherwise; the
old-photo guide's picture is ``--input test_inputs/cameraman_gray.png --box 40 8 64 64
--output docs/images/old-photo.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "images" / "before-after.png"
GAP = 8  # white pixels between the halves


def restored(source: Path, folder: Path, extra: list[str]) -> Path:
    """``source`` restored by the restorecli command into ``folder`` (``extra``: more restore options); the
    output's path."""
    command = [sys.executable, "-m", "restorecli", "restore", str(source), "-o", str(folder), "--format", "png",
               "--device", "cpu", "--json", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    item = next(json.loads(line) for line in done.stdout.splitlines() if '"type": "item"' in line)
    return Path(item["output"])


def side_by_side(before: Image.Image, after: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    x, y, w, h = box
    scale = after.width // before.width
    left = before.crop((x, y, x + w, y + h)).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    right = after.crop((x * scale, y * scale, (x + w) * scale, (y + h) * scale))
    picture = Image.new("RGB", (left.width * 2 + GAP, left.height), "white")
    picture.paste(left, (0, 0))
    picture.paste(right, (left.width + GAP, 0))
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=ROOT / "test_inputs" / "astronaut_face.jpg")
    parser.add_argument("--box", type=int, nargs=4, default=(40, 16, 64, 64), metavar=("X", "Y", "W", "H"),
                        help="the crop, in input pixels")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the picture is written")
    parser.add_argument("restore", nargs="*", help="options for restorecli restore, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="restorecli-picture-") as tmp:
        output = restored(args.input, Path(tmp), args.restore)
        with Image.open(args.input) as before, Image.open(output) as after:
            picture = side_by_side(before.convert("RGB"), after.convert("RGB"), tuple(args.box))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output, optimize=True)
    print(f"{args.output}: {picture.width}x{picture.height}, {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
