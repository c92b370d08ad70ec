"""`restorecli restore` on animated GIF, WebP and APNG (issue 33), through the CLI: every frame restored and written
back in the input's own format with its frame count, each frame's duration, the loop count and the transparency;
a part with --frames; a dry run; a still GIF or PNG stays an image; a broken animation fails alone in a batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import invoke, items_of, json_lines
from helpers.cli import restore_exactly as restore

W, H = 24, 16
DURATIONS = [100, 200, 50, 300]  # milliseconds, each a whole hundredth of a second, as a GIF stores them


def frames_of(seed: int = 0, count: int = 4, alpha: bool = False) -> list[Image.Image]:
    """``count`` random W x H frames, every one different; with ``alpha``, the left third of each transparent."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        color = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        if not alpha:
            frames.append(Image.fromarray(color, "RGB"))
            continue
        plane = np.full((H, W), 255, np.uint8)
        plane[:, : W // 3] = 0
        frames.append(Image.fromarray(np.dstack((color, plane)), "RGBA"))
    return frames


def make_animation(path: Path, loop: int | None = 3, alpha: bool = False, count: int = 4,
                   durations: list[int] = DURATIONS) -> Path:
    """A ``count``-frame animation in the format ``path``'s suffix names, shown ``durations`` long, looping
    ``loop`` times (None: a GIF without a loop extension, which plays once)."""
    frames = frames_of(alpha=alpha, count=count)
    settings: dict = {"save_all": True, "append_images": frames[1:], "duration": durations[:count]}
    if loop is not None:
        settings["loop"] = loop
    if path.suffix == ".gif" and alpha:
        settings["disposal"] = 2
    if path.suffix == ".webp":
        settings["lossless"] = True
    frames[0].save(path, format={".gif": "GIF", ".webp": "WEBP"}.get(path.suffix, "PNG"), **settings)
    return path


def shown(path: Path) -> tuple[str, int, list[float], object, list[np.ndarray]]:
    """What an animation file holds: its format, its frame count, each frame's duration (ms), its loop count
    (None: not stated), and each frame as it is shown (H x W x 4 RGBA)."""
    with Image.open(path) as image:
        loop, durations, pictures = image.info.get("loop"), [], []
        for index in range(image.n_frames):
            image.seek(index)
            image.load()
            durations.append(float(image.info.get("duration") or 0))
            pictures.append(np.asarray(image.convert("RGBA")))
        return image.format, image.n_frames, durations, loop, pictures


@pytest.mark.parametrize(("name", "fmt", "loop"), [("anim.gif", "GIF", 3), ("once.gif", "GIF", None),
                                                   ("anim.png", "PNG", 2), ("anim.apng", "PNG", 0),
                                                   ("anim.webp", "WEBP", 5)])
def test_an_animation_keeps_its_frames_durations_and_loop(tmp_path, model2, name, fmt, loop):
    source = make_animation(tmp_path / name, loop=loop)
    result = restore(source, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    output = tmp_path / "out" / name
    [item] = items_of(result)
    assert item["status"] == "ok" and item["output"] == str(output)
    assert item["in_size"] == [W, H] and item["out_size"] == [2 * W, 2 * H]
    video = item["video"]
    assert video["frames"] == 4 and video["duration"] == pytest.approx(0.65) and video["loop"] == loop
    assert video["fps"] == pytest.approx(4 / 0.65, rel=1e-3) and video["codec"] == {"GIF": "gif", "PNG": "apng",
                                                                                       "WEBP": "webp"}[fmt]
    written_format, count, durations, written_loop, pictures = shown(output)
    assert (written_format, count, durations, written_loop) == (fmt, 4, DURATIONS, loop)
    assert all(picture.shape == (2 * H, 2 * W, 4) for picture in pictures)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]  # no temporary file left


def test_each_apng_frame_is_that_frame_restored(tmp_path, model2, restorer):
    """APNG is lossless: each frame written is exactly what the model makes of the input's frame."""
    source = make_animation(tmp_path / "anim.png")
    assert restore(source, "-o", tmp_path / "out", "--model", model2).exit_code == 0
    *_, pictures = shown(tmp_path / "out" / "anim.png")
    for frame, picture in zip(frames_of(), pictures, strict=True):
        assert np.array_equal(picture[:, :, :3], restorer.restore_array(np.asarray(frame)))
        assert (picture[:, :, 3] == 255).all()


@pytest.mark.parametrize("name", ["alpha.png", "alpha.webp", "alpha.gif"])
def test_an_animation_keeps_its_transparency(tmp_path, model2, name):
    source = make_animation(tmp_path / name, alpha=True)
    result = restore(source, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    [item] = items_of(result)
    assert item["video"]["alpha"] is True
    _, count, durations, _, pictures = shown(tmp_path / "out" / name)
    assert (count, durations) == (4, DURATIONS)
    edge = 2 * (W // 3)  # the transparent third, twice as wide; resizing softens a pixel or two beside its edge
    for picture in pictures:
        assert (picture[:, : edge - 2, 3] == 0).all() and (picture[:, edge + 2 :, 3] == 255).all()


def test_frames_restores_a_part_of_an_animation(tmp_path, model2):
    source = make_animation(tmp_path / "anim.gif")
    result = restore(source, "-o", tmp_path / "out", "--model", model2, "--frames", "1:3")
    assert result.exit_code == 0, result.stderr
    [item] = items_of(result)
    assert item["video"]["frames"] == 2 and item["video"]["duration"] == pytest.approx(0.25)
    _, count, durations, loop, _ = shown(tmp_path / "out" / "anim.gif")
    assert (count, durations, loop) == (2, DURATIONS[1:3], 3)
    beyond = restore(source, "-o", tmp_path / "later", "--model", model2, "--frames", "4:")
    [item] = items_of(beyond)
    assert beyond.exit_code == 1 and item["status"] == "error"
    assert "anim.gif: --frames 4: holds no frame: the animation has 4" in item["error"]
    assert not (tmp_path / "later").exists() or not any((tmp_path / "later").iterdir())


def test_start_and_duration_restore_the_frames_shown_in_a_span(tmp_path, model2):
    source = make_animation(tmp_path / "anim.png")  # frames start at 0, 0.1, 0.3 and 0.35 s
    result = restore(source, "-o", tmp_path / "out", "--model", model2, "--start", "0.1", "--duration", "0.25")
    assert result.exit_code == 0, result.stderr
    [item] = items_of(result)
    assert item["video"]["frames"] == 2 and item["video"]["duration"] == pytest.approx(0.25)
    assert shown(tmp_path / "out" / "anim.png")[1:4] == (2, DURATIONS[1:3], 3)
    beyond = restore(source, "-o", tmp_path / "later", "--model", model2, "--start", "1")
    [item] = items_of(beyond)
    assert beyond.exit_code == 1 and item["status"] == "error"
    assert "anim.png: --start 1 holds no frame: the animation ends at 0.65 s" in item["error"]


def test_a_dry_run_plans_an_animation_in_its_own_format(tmp_path, model2):
    source = make_animation(tmp_path / "anim.gif")
    result = invoke("restore", source, "-o", tmp_path / "out", "--model", model2, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    [item] = items_of(result)
    assert item["status"] == "planned" and item["output"] == str(tmp_path / "out" / "anim.gif")
    assert not (tmp_path / "out").exists()
    assert item["video"] == {"frames": 4, "duration": pytest.approx(0.65), "fps": pytest.approx(4 / 0.65, abs=1e-3)}
    # the part test_start_and_duration_restore_the_frames_shown_in_a_span restores: its frames and seconds
    part = invoke("restore", source, "-o", tmp_path / "out", "--model", model2, "--dry-run", "--json",
                  "--outscale", "2", "--start", "0.1", "--duration", "0.25")
    [item] = items_of(part)
    assert item["out_size"] == [2 * s for s in item["in_size"]]
    assert item["video"]["frames"] == 2 and item["video"]["duration"] == pytest.approx(0.25)  # the frames from 0.1 s


@pytest.mark.parametrize("lossless", [True, False])
def test_a_webp_is_written_lossless_where_its_input_is(tmp_path, model2, restorer, lossless):
    frames = frames_of()
    source = tmp_path / "anim.webp"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=DURATIONS, lossless=lossless)
    result = restore(source, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    data = (tmp_path / "out" / "anim.webp").read_bytes()
    assert (b"VP8L" in data, b"VP8 " in data) == (lossless, not lossless)  # each frame's bitstream: lossless or not
    if lossless:
        *_, pictures = shown(tmp_path / "out" / "anim.webp")
        assert np.array_equal(pictures[0][:, :, :3], restorer.restore_array(np.asarray(frames[0])))


def test_format_leaves_an_animation_in_its_own_format(tmp_path, model2):
    source = make_animation(tmp_path / "anim.webp")
    result = restore(source, "-o", tmp_path / "out", "--model", model2, "--format", "jpg")
    assert result.exit_code == 0, result.stderr
    assert shown(tmp_path / "out" / "anim.webp")[:2] == ("WEBP", 4)


def test_a_still_gif_png_or_webp_stays_an_image(tmp_path, model2):
    folder = tmp_path / "in"
    folder.mkdir()
    [frame] = frames_of(count=1)
    frame.save(folder / "a_still.gif")
    frame.save(folder / "b_still.png")
    frame.save(folder / "c_still.webp", lossless=True)
    make_animation(folder / "d_one_frame.png", count=1, durations=[100])  # an APNG of one frame is a picture
    result = restore(folder, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    items = {Path(item["input"]).name: item for item in items_of(result)}
    assert all(item["status"] == "ok" and "video" not in item for item in items.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_still.png", "b_still.png", "c_still.webp",
                                                                     "d_one_frame.png"]  # a GIF is written as PNG
    with Image.open(tmp_path / "out" / "b_still.png") as image:
        assert image.size == (2 * W, 2 * H) and not getattr(image, "is_animated", False)


def test_a_broken_animation_fails_alone_and_the_batch_goes_on(tmp_path, model2):
    folder = tmp_path / "in"
    folder.mkdir()
    make_animation(folder / "a_good.gif")
    whole = make_animation(tmp_path / "whole.gif").read_bytes()
    (folder / "b_cut.gif").write_bytes(whole[: len(whole) // 2])
    whole = make_animation(tmp_path / "whole.png").read_bytes()
    (folder / "c_cut.png").write_bytes(whole[: len(whole) - 40])
    frames_of(count=1)[0].save(folder / "d_photo.png")
    result = restore(folder, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1
    items = {Path(item["input"]).name: item for item in items_of(result)}
    assert [items[n]["status"] for n in sorted(items)] == ["ok", "error", "error", "ok"]
    assert "b_cut.gif: damaged or truncated at frame 1" in items["b_cut.gif"]["error"]
    assert "c_cut.png: damaged or truncated at frame 3" in items["c_cut.png"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good.gif", "d_photo.png"]  # nothing partial
    assert "b_cut.gif: damaged or truncated" in result.stderr


def test_a_queued_animation_is_restored_by_the_worker_in_its_own_format(tmp_path, model2):
    """submit takes an animation as it takes an image; the worker's batch restores it as restore does."""
    source = make_animation(tmp_path / "anim.gif")
    queue = tmp_path / "queue"
    submitted = invoke("submit", source, "--queue", queue, "--model", model2, "--device", "cpu", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = json_lines(submitted)[0]["job_id"]
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    status = json.loads(invoke("status", job_id, "--queue", queue, "--json").stdout)
    [result] = status["results"]
    assert status["status"] == "completed" and result["status"] == "ok", status
    written_format, count, durations, loop, pictures = shown(queue / result["output"])
    assert (written_format, count, durations, loop) == ("GIF", 4, DURATIONS, 3)
    assert pictures[0].shape == (2 * H, 2 * W, 4)


def test_an_animation_needs_no_pyav(tmp_path, model2, monkeypatch):
    """Animations are read and written with Pillow: restored where PyAV (restorecli[video]) cannot be imported."""
    monkeypatch.setitem(sys.modules, "av", None)  # ``import av`` raises ImportError, as where it is not installed
    source = make_animation(tmp_path / "anim.webp")
    result = restore(source, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    assert shown(tmp_path / "out" / "anim.webp")[:4] == ("WEBP", 4, DURATIONS, 3)


def test_a_named_pipe_named_like_an_animation_is_refused_unopened(tmp_path, model2):
    """Telling an animation by its content must not open what is no file: a pipe would block the batch."""
    import os
    import threading

    fifo = tmp_path / "anim.gif"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)  # returns once it is opened
    writer.start()
    try:
        result = restore(fifo, "-o", tmp_path / "out", "--model", model2)
        [item] = items_of(result)
        assert item["status"] == "error" and item["error"].endswith("anim.gif: is a named pipe, not an image file")
        assert writer.is_alive()  # still waiting for a reader: nothing opened the pipe
    finally:
        if writer.is_alive():
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)


def test_an_animation_s_frames_are_bounded_by_max_pixels_and_pillow_s_limit(tmp_path, model2, monkeypatch):
    """Both refused before any model time, each saying which limit; Pillow's checks every frame after the first
    as it decodes it, warning or failing there."""
    source = make_animation(tmp_path / "anim.gif")
    refused = restore(source, "-o", tmp_path / "out", "--model", model2, "--max-pixels", 100)
    [item] = items_of(refused)
    assert refused.exit_code == 1 and f"anim.gif: its frames are {W}x{H} pixels, over the limit of 100" in item["error"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    refused = restore(source, "-o", tmp_path / "out", "--model", model2)
    [item] = items_of(refused)
    assert refused.exit_code == 1
    assert f"anim.gif: its frames are {W}x{H} pixels, over the 300 that Pillow decodes in an animation" in item["error"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
