"""`restorecli restore` on videos (issue 33), through the CLI, on small videos made here with PyAV: frames,
timestamps (constant and variable rate), audio and subtitle packets, rotation and colour kept; each frame restored
as its image would be; bad videos failing alone; a part with --frames; the error without PyAV."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_INPUTS, psnr
from helpers.cli import invoke, items_of
from helpers.cli import restore_exactly as restore
from restorecli.options import RestoreOptions
from restorecli.plan import InputItem, plan_outputs

av = pytest.importorskip("av", reason="PyAV (restorecli[video]) is not installed: the video tests need it")

W, H, FRAMES = 64, 48, 24
SAMPLE_RATE = 48000


def moving_frame(i: int) -> np.ndarray:
    """A gradient whose colours shift with ``i`` and a white block that moves: every frame differs."""
    yy, xx = np.mgrid[0:H, 0:W]
    frame = np.stack([(xx * 4 + i * 8) % 256, yy * 5, (xx + yy + i * 3) % 256], -1).astype(np.uint8)
    left = (i * 2) % (W - 8)
    frame[10:20, left:left + 8] = 255
    return frame


def make_video(path: Path, codec: str = "libx264", variable: bool = False, audio: str | None = "aac",
               subtitles: bool = False, rotation: int = 0, bt709: bool = False, frames: int = FRAMES,
               faststart: bool = False, gop: int | None = None, first_tick: int = 0) -> Path:
    """A ``frames``-frame 64x48 video at 24 fps (``variable``: every third frame shown twice as long), with a 440 Hz
    sine in ``audio`` and three subtitle lines where asked; the container is the suffix's. ``frames=0``: a second of
    sound alone, no video stream. ``faststart``: an MP4's index before its frames, as web videos have it. ``gop``: a
    keyframe every that many frames (libx264); ``first_tick``: the first frame's time, in 1/600 s."""
    out = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    video = out.add_stream(codec, rate=24, options={"g": str(gop)} if gop else None) if frames else None
    if video is not None:
        video.width, video.height = W, H
        video.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        video.time_base = Fraction(1, 600)
        if rotation:
            video.set_display_rotation(rotation)
        if bt709:
            context = video.codec_context
            context.color_primaries = context.color_trc = context.colorspace = 1  # BT.709
            context.color_range = 1  # limited
    sound = out.add_stream(audio, rate=SAMPLE_RATE, layout="mono") if audio else None
    text = out.add_mux_stream("subrip", time_base=Fraction(1, 1000)) if subtitles else None
    if subtitles:  # a film's: a title and chapters too
        out.metadata["title"] = "Holiday"
        out.set_chapters([{"id": n + 1, "start": n * 500, "end": n * 500 + 500, "time_base": Fraction(1, 1000),
                           "metadata": {"title": f"Part {n + 1}"}} for n in range(2)])
    tick = first_tick
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(moving_frame(i), format="rgb24")
        if bt709:
            frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
        frame.pts, frame.time_base = tick, Fraction(1, 600)
        if text is not None and i % 8 == 0:
            packet = av.Packet(f"line {i}".encode())
            packet.stream, packet.time_base = text, text.time_base
            packet.pts = packet.dts = round(tick / 600 * 1000)
            packet.duration = 200
            out.mux(packet)
        tick += 50 if variable and i % 3 == 2 else 25
        out.mux(video.encode(frame))  # type: ignore[union-attr]
    if video is not None:
        out.mux(video.encode(None))
    if sound is not None:
        size = sound.codec_context.frame_size or 1024
        total = SAMPLE_RATE * (tick or 600) // 600
        for start in range(0, total, size):
            n = np.arange(start, min(start + size, total))
            wave = 0.3 * np.sin(2 * np.pi * 440 * n / SAMPLE_RATE)
            fmt = sound.codec_context.format.name
            samples = (wave * 32767).astype(np.int16) if fmt.startswith("s16") else wave.astype(np.float32)
            chunk = av.AudioFrame.from_ndarray(samples[None, :], format=fmt, layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    out.close()
    return path


def frames_of(path: Path) -> list:
    with av.open(str(path)) as container:
        return [(frame.to_ndarray(format="rgb24"), frame.pts * frame.time_base, frame.rotation)
                for frame in container.decode(video=0)]


def packets_of(path: Path, kind: str) -> list[tuple[bytes, float]]:
    """The packets of the first ``kind`` stream: their bytes and presentation times in seconds."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(stream) if p.size]


def duration_of(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / 1_000_000


def shown_until(path: Path) -> float:
    """The video stream's duration: its last frame's time plus how long the file says it is shown."""
    with av.open(str(path)) as container:
        *_, last = container.decode(video=0)
        return float((last.pts + (last.duration or 0)) * last.time_base)


def stated_end(path: Path) -> float | None:
    """When the last frame ends as the file states it: the time plus the duration of the packet that shows it,
    where that packet is the stream's last in decoding order. None where the encoder put a B-frame after it: an
    MP4/MOV's sample then has no duration of its own, only the gap to the next sample's decoding time, which the
    encoder's frame types decide (so the same frames may come out either way), and a player shows the frame until
    the track's end."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        time_base = stream.time_base  # PyAV 18.1.1 refuses a stream's fields once its file is closed
    last_shown = max(packets, key=lambda p: p.pts)
    if packets[-1] is not last_shown:  # a file holds its packets in decoding order
        return None
    return float((last_shown.pts + last_shown.duration) * time_base)



@pytest.mark.parametrize(("name", "variable", "audio", "codec"), [
    ("clip.mp4", False, "aac", "libx264"), ("vfr.mkv", True, "aac", "libx264"),
    ("pcm.mov", True, "pcm_s16le", "libx264"), ("web.webm", True, "libopus", "libvpx-vp9")])
def test_a_video_keeps_its_frames_timestamps_duration_and_audio(tmp_path, model2, name, variable, audio, codec):
    clip = make_video(tmp_path / name, "libvpx-vp9" if name.endswith(".webm") else "libx264", variable, audio)
    result = restore(clip, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out" / name
    [item] = items_of(result)
    assert item["status"] == "ok" and item["output"] == str(out)
    assert item["in_size"] == [W, H] and item["out_size"] == [2 * W, 2 * H]
    assert item["video"]["frames"] == FRAMES and item["video"]["codec"] == codec
    with av.open(str(clip)) as container:
        assert item["video"]["fps"] == pytest.approx(float(container.streams.video[0].average_rate))
    assert item["video"]["copied_streams"] == 1
    assert f"{clip}: video written with {codec} (the default for" in result.stderr  # said before the first frame
    before, after = frames_of(clip), frames_of(out)
    assert len(after) == len(before) == FRAMES
    assert [when for _, when, _ in after] == [when for _, when, _ in before], result.stderr  # variable gaps too
    assert all(pixels.shape == (2 * H, 2 * W, 3) for pixels, _, _ in after)
    assert duration_of(out) == pytest.approx(duration_of(clip), abs=0.011), item  # within a muxer's millisecond
    assert item["video"]["duration"] == pytest.approx(shown_until(clip))
    assert stated_end(out) in (None, shown_until(clip)), result.stderr  # the last frame's own duration kept
    if codec == "libvpx-vp9":  # no frame is decoded after it is shown: the file always states the last one's
        assert stated_end(out) == shown_until(clip)
    copied, original = packets_of(out, "audio"), packets_of(clip, "audio")
    assert [len(data) for data, _ in copied] == [len(data) for data, _ in original], (copied[:3], original[:3])
    assert copied == original  # copied, not encoded again
    assert not list(out.parent.glob(".*.part"))


def test_rotation_colour_and_subtitles_are_kept_and_no_audio_drops_the_sound(tmp_path, model2):
    clip = make_video(tmp_path / "phone.mkv", subtitles=True, rotation=90, bt709=True)
    result = restore(clip, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out" / "phone.mkv"
    assert {rotation for _, _, rotation in frames_of(out)} == {90}
    with av.open(str(out)) as container:
        context = container.streams.video[0].codec_context
        assert (context.color_primaries, context.color_trc, context.colorspace, context.color_range) == (1, 1, 1, 1)
    assert packets_of(out, "subtitles") == packets_of(clip, "subtitles")
    with av.open(str(clip)) as before, av.open(str(out)) as after:
        assert after.metadata["title"] == "Holiday" and after.chapters() == before.chapters()
        assert [chapter["metadata"]["title"] for chapter in after.chapters()] == ["Part 1", "Part 2"]
    assert [text for text, _ in packets_of(out, "subtitles")] == [b"line 0", b"line 8", b"line 16"]
    assert packets_of(out, "audio") == packets_of(clip, "audio")

    silent = restore(clip, "-o", tmp_path / "silent", "--model", model2, "--no-audio")
    assert silent.exit_code == 0, silent.stderr
    with av.open(str(tmp_path / "silent" / "phone.mkv")) as container:
        assert [stream.type for stream in container.streams] == ["video"]


def test_each_frame_is_its_image_restored_losslessly_and_within_the_codecs_loss(tmp_path, model2, restorer):
    clip = make_video(tmp_path / "clip.mkv", variable=True)
    lossless = restore(clip, "-o", tmp_path / "ffv1", "--model", model2, "--video-codec", "ffv1")
    assert lossless.exit_code == 0, lossless.stderr
    assert items_of(lossless)[0]["video"]["codec"] == "ffv1"
    lossy = restore(clip, "-o", tmp_path / "h264", "--model", model2, "--crf", "18")
    assert lossy.exit_code == 0, lossy.stderr
    inputs = frames_of(clip)
    exact, coded = frames_of(tmp_path / "ffv1" / "clip.mkv"), frames_of(tmp_path / "h264" / "clip.mkv")
    assert len(exact) == len(coded) == len(inputs)
    for i, ((pixels, _, _), (out, _, _), (compressed, _, _)) in enumerate(zip(inputs, exact, coded)):
        expected = restorer.restore_array(pixels)
        np.testing.assert_array_equal(out, expected)  # FFV1 in RGB: the frame as restore_array made it
        # H.264 in 4:2:0 at CRF 18: the codec's loss (a random model's noisy colours lose most to the subsampled
        # chroma), far less than the difference to the next frame's restoration
        assert psnr(compressed, out) > 26
        assert psnr(compressed, exact[(i + 1) % len(exact)][0]) < psnr(compressed, out) - 6


def test_frames_restores_a_part_starting_at_zero(tmp_path, model2, restorer):
    clip = make_video(tmp_path / "clip.mkv", variable=True)
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, "--frames", "5:15", "--video-codec", "ffv1")
    assert result.exit_code == 0, result.stderr
    assert items_of(result)[0]["video"]["frames"] == 10
    inputs, part = frames_of(clip), frames_of(tmp_path / "out" / "clip.mkv")
    assert len(part) == 10
    start = inputs[5][1]
    assert [when for _, when, _ in part] == [when - start for _, when, _ in inputs[5:15]]
    for (pixels, _, _), (out, _, _) in zip(inputs[5:15], part):
        np.testing.assert_array_equal(out, restorer.restore_array(pixels))
    sound = packets_of(tmp_path / "out" / "clip.mkv", "audio")
    end = float(inputs[15][1] - start)
    assert sound and all(0 <= when < end for _, when in sound)
    assert [data for data, _ in sound] == [data for data, when in packets_of(clip, "audio")
                                           if float(start) <= when < float(inputs[15][1])]

    bad = invoke("restore", clip, "-o", tmp_path / "o2", "--frames", "9:3")
    assert bad.exit_code == 2 and "--frames '9:3'" in bad.stderr
    past = restore(clip, "-o", tmp_path / "o3", "--model", model2, "--frames", "100:")
    assert past.exit_code == 1
    assert f"{clip}: --frames 100: holds no frame: the video ends before frame 100" in items_of(past)[0]["error"]
    assert list((tmp_path / "o3").iterdir()) == []


def test_bad_videos_fail_alone_and_the_batch_goes_on(tmp_path, model2):
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a_good.mp4")
    whole = make_video(tmp_path / "whole.mp4").read_bytes()
    (folder / "b_truncated.mp4").write_bytes(whole[: len(whole) // 2])
    make_video(tmp_path / "sound.mkv", frames=0)
    (folder / "c_sound_only.mkv").write_bytes((tmp_path / "sound.mkv").read_bytes())
    (folder / "d_empty.mov").write_bytes(b"")
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(moving_frame(0)).save(folder / "e_photo.png")
    result = restore(folder, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1
    items = {Path(item["input"]).name: item for item in items_of(result)}
    assert [items[n]["status"] for n in sorted(items)] == ["ok", "error", "error", "error", "ok"]
    assert "b_truncated.mp4: not a readable video" in items["b_truncated.mp4"]["error"]
    assert "c_sound_only.mkv: the file holds no video stream" in items["c_sound_only.mkv"]["error"]
    assert "d_empty.mov" in items["d_empty.mov"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good.mp4", "e_photo.png"]  # nothing partial
    assert "b_truncated.mp4: not a readable video" in result.stderr


@pytest.mark.parametrize(("name", "said"), [("cut.mkv", "its frames end at"),
                                           ("cut.mp4", "of its 36 frames could be decoded; its frames end at")])
def test_a_video_cut_short_inside_fails_without_leaving_a_file(tmp_path, model2, name, said):
    """Matroska needs no index at its end, and a web MP4 has its index first: such a file cut short opens, and
    FFmpeg decodes up to the cut without a word. The frames missing from its stated count and duration make it an
    error, and nothing is written."""
    clip = make_video(tmp_path / f"clip{Path(name).suffix}", frames=36, audio=None, faststart=True)
    data = clip.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 2 // 3])
    result = restore(cut, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1
    [item] = items_of(result)
    assert item["status"] == "error" and f"{cut}: truncated or damaged: " in item["error"]
    assert said in item["error"]
    assert list((tmp_path / "out").iterdir()) == []  # neither the output nor its temporary file


@pytest.mark.parametrize("stage", ["model", "writer"])
def test_a_failure_mid_video_stops_every_stage_and_leaves_nothing(tmp_path, model2, monkeypatch, stage):
    """The model failing on frame 5, or the writer on frame 5 (a disk error): the video's error, its threads ended,
    no file under its name or a temporary one; the next video of the batch is restored."""
    from restorecli.pipeline import Restorer
    from restorecli.video.write import VideoOutput

    calls = {"n": 0}
    owner, method = (Restorer, "restore_array") if stage == "model" else (VideoOutput, "frame")
    original = getattr(owner, method)

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(5, "Input/output error") if stage == "writer" else RuntimeError("the model broke")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, failing)
    first, second = make_video(tmp_path / "a.mkv", frames=12), make_video(tmp_path / "b.mkv", frames=12)
    result = restore(first, second, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1
    failed, restored = items_of(result)
    assert failed["status"] == "error" and str(first) in failed["error"]
    assert ("Input/output error" if stage == "writer" else "the model broke") in failed["error"]
    assert restored["status"] == "ok" and restored["video"]["frames"] == 12
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.mkv"]


def test_without_pyav_a_video_names_the_extra_and_images_go_on(tmp_path, model2, monkeypatch):
    clip = make_video(tmp_path / "clip.mp4")
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(moving_frame(0)).save(tmp_path / "photo.png")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError, as where it is not installed
    result = restore(clip, tmp_path / "photo.png", "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1
    video, photo = items_of(result)
    assert video["status"] == "error" and "pip install 'restorecli[video]'" in video["error"]
    assert str(clip) in video["error"] and photo["status"] == "ok"


def test_videos_keep_their_container_in_the_plan_whatever_format_images_take(tmp_path):
    items = [InputItem("in/Clip.MP4", Path("Clip.MP4")), InputItem("in/b.webm", Path("b.webm")),
             InputItem("in/c.jpg", Path("c.jpg"))]
    planned = plan_outputs(items, RestoreOptions(output_dir=str(tmp_path), format="png", suffix="_x2"))
    assert [p.output.name for p in planned] == ["Clip_x2.mp4", "b_x2.webm", "c_x2.png"]


def test_a_video_to_stdout_is_refused_for_that_video(tmp_path, model2):
    clip = make_video(tmp_path / "clip.mp4")
    result = invoke("restore", clip, "-o", "-", "--model", model2)
    assert result.exit_code == 1 and result.stdout == ""
    assert f"{clip}: a video is written into a folder, not to stdout; give -o DIR" in result.stderr


def test_a_dry_run_plans_a_video_and_writes_nothing(tmp_path, model2):
    clip = make_video(tmp_path / "clip.mp4")
    result = invoke("restore", clip, "-o", tmp_path / "out", "--model", model2, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    [item] = items_of(result)
    assert item["status"] == "planned" and item["output"] == str(tmp_path / "out" / "clip.mp4")
    assert not (tmp_path / "out").exists()
    # what the header tells: the frame size (the output's only where the scale is known without the model), the
    # frames and seconds to restore; no size in bytes, which a constant quality leaves to the pictures
    assert item["in_size"] == [W, H] and item["out_size"] is None
    assert item["video"] == {"frames": FRAMES, "duration": pytest.approx(FRAMES / 24), "fps": 24.0}

    def planned(*flags) -> dict:
        result = invoke("restore", clip, "-o", tmp_path / "out", "--model", model2, "--dry-run", "--json",
                        "--outscale", "2", *flags)
        assert result.exit_code == 0, result.stderr
        [item] = items_of(result)
        assert item["status"] == "planned" and item["out_size"] == [2 * W, 2 * H], item
        return item["video"]

    assert planned("--frames", "5:15") == {"frames": 10, "duration": pytest.approx(10 / 24), "fps": 24.0}
    assert planned("--start", "0.5") == {"frames": 12, "duration": pytest.approx(0.5), "fps": 24.0}
    # a bit rate is what the encoder aims at: the video's share of the size, and the copied sound's as its header says
    assert planned("--video-bitrate", "100k", "--no-audio")["estimated_bytes"] == round(100_000 * (FRAMES / 24) / 8)
    with av.open(str(clip)) as container:
        sound = container.streams.audio[0].bit_rate
    assert sound and planned("--video-bitrate", "100k")["estimated_bytes"] == round((100_000 + sound) * FRAMES / 24 / 8)
    assert not (tmp_path / "out").exists()
    refused = invoke("restore", clip, "-o", tmp_path / "out", "--model", model2, "--dry-run", "--json",
                     "--outscale", "2", "--max-output-pixels", "1000")
    assert refused.exit_code == 1 and "its output would be 128x96 pixels" in items_of(refused)[0]["error"]


def test_a_queued_video_is_restored_by_the_worker_into_its_container(tmp_path, model2):
    """submit takes a video as it takes an image; the worker's batch restores it as restore does."""
    clip = make_video(tmp_path / "clip.mp4")
    queue = tmp_path / "queue"
    submitted = invoke("submit", clip, "--queue", queue, "--model", model2, "--device", "cpu", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    status = json.loads(invoke("status", job_id, "--queue", queue, "--json").stdout)
    [result] = status["results"]
    assert status["status"] == "completed" and result["status"] == "ok", status
    output = queue / result["output"]
    assert output.suffix == ".mp4" and len(frames_of(output)) == FRAMES
    assert packets_of(output, "audio") == packets_of(clip, "audio")


def test_start_and_duration_restore_the_part_shown_in_that_time(tmp_path, model2, restorer):
    """--start/--duration choose the part by the video's clock, as a preview of a scene is chosen: the frames
    shown from --start until --start + --duration, their times then starting at 0, the sound of that span."""
    clip = make_video(tmp_path / "clip.mkv", variable=True)
    inputs = frames_of(clip)
    begin, end = float(inputs[5][1]), float(inputs[15][1])  # frames 5 to 14, by their times
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, "--start", f"{begin:.6f}",
                     "--duration", f"{end - begin - 0.001:.6f}", "--video-codec", "ffv1")
    assert result.exit_code == 0, result.stderr
    assert items_of(result)[0]["video"]["frames"] == 10
    part = frames_of(tmp_path / "out" / "clip.mkv")
    assert [when for _, when, _ in part] == [when - inputs[5][1] for _, when, _ in inputs[5:15]]
    for (pixels, _, _), (out, _, _) in zip(inputs[5:15], part):
        np.testing.assert_array_equal(out, restorer.restore_array(pixels))
    sound = packets_of(tmp_path / "out" / "clip.mkv", "audio")
    assert sound and all(0 <= when < end - begin for _, when in sound)

    minutes = restore(clip, "-o", tmp_path / "o2", "--model", model2, "--start", "0:00.5")  # [HH:]MM:SS
    assert minutes.exit_code == 0, minutes.stderr
    assert frames_of(tmp_path / "o2" / "clip.mkv")[0][0].shape == (2 * H, 2 * W, 3)
    assert items_of(minutes)[0]["video"]["frames"] == sum(1 for _, when, _ in inputs if when >= 0.5)
    past = restore(clip, "-o", tmp_path / "o3", "--model", model2, "--start", "1:00")
    assert f"{clip}: --start 60 holds no frame: the video ends before 60 s" in items_of(past)[0]["error"]
    for args, said in ((["--start", "1:75"], "--start '1:75' is not a time"),
                       (["--duration", "0"], "--duration '0' is no time at all"),
                       (["--frames", "1:3", "--start", "1"], "--frames and --start/--duration both choose")):
        bad = invoke("restore", clip, "-o", tmp_path / "o4", *args)
        assert bad.exit_code == 2 and said in bad.stderr, bad.stderr


def test_video_bitrate_sets_the_rate_the_encoder_aims_at(tmp_path, model2):
    """--video-bitrate: a file size known ahead instead of a constant quality; a tenfold rate gives a far larger
    video stream, the sound copied as ever."""
    clip = make_video(tmp_path / "clip.mp4")

    def video_bytes(rate: str) -> int:
        result = restore(clip, "-o", tmp_path / rate, "--model", model2, "--video-bitrate", rate)
        assert result.exit_code == 0, result.stderr
        out = tmp_path / rate / "clip.mp4"
        assert len(frames_of(out)) == FRAMES and packets_of(out, "audio") == packets_of(clip, "audio")
        return sum(len(data) for data, _ in packets_of(out, "video"))

    assert video_bytes("20k") * 3 < video_bytes("2M")
    lossless = restore(clip, "-o", tmp_path / "ffv1", "--model", model2, "--video-bitrate", "1M",
                       "--video-codec", "ffv1")
    assert "ffv1 is lossless: --video-bitrate is for the codecs" in items_of(lossless)[0]["error"]
    for args, said in ((["--video-bitrate", "fast"], "--video-bitrate 'fast' is not a bit rate"),
                       (["--video-bitrate", "1M", "--crf", "20"], "--crf and --video-bitrate both set")):
        bad = invoke("restore", clip, "-o", tmp_path / "bad", *args)
        assert bad.exit_code == 2 and said in bad.stderr, bad.stderr


def _x264_settings(path: Path) -> str:
    """The settings x264 writes into its first frame (an SEI message: ``... options: cabac=1 ref=3 ...``)."""
    first = packets_of(path, "video")[0][0]
    return first[first.index(b"options: "):].split(b"\x00")[0].decode("ascii", "replace")


def test_video_preset_sets_the_encoder_s_speed_and_a_codec_without_it_is_that_file_s_error(tmp_path, model2):
    """--video-preset: x264's speed names reach x264 (its own record of its settings in the stream says so), SVT-AV1
    takes its numbers; a codec without presets, or a preset of another codec's kind, is the file's error, named;
    a word no encoder knows is a usage error; and a video's kept segments are not reused under another preset."""
    from restorecli.options import from_given
    from restorecli.video.options import frames_settings

    clip = make_video(tmp_path / "clip.mp4")
    made = {}
    for preset in ("ultrafast", None):
        out = tmp_path / (preset or "default")
        result = restore(clip, "-o", out, "--model", model2, *(["--video-preset", preset] if preset else []))
        assert result.exit_code == 0, result.stderr
        assert len(frames_of(out / "clip.mp4")) == FRAMES
        assert packets_of(out / "clip.mp4", "audio") == packets_of(clip, "audio")
        made[preset] = _x264_settings(out / "clip.mp4")
    # ultrafast's diamond search and no sub-pixel refinement, against medium's (x264's default) hexagon and 7
    assert " me=dia " in made["ultrafast"] and " subme=0 " in made["ultrafast"], made["ultrafast"]
    assert " me=hex " in made[None] and " subme=7 " in made[None], made[None]

    av1 = restore(clip, "-o", tmp_path / "av1", "--model", model2, "--video-codec", "libsvtav1", "--video-preset",
                  "12")
    assert av1.exit_code == 0, av1.stderr
    assert items_of(av1)[0]["video"]["codec"] == "libsvtav1" and len(frames_of(tmp_path / "av1" / "clip.mp4")) == FRAMES

    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.mkv", "b.mkv"):
        (folder / name).write_bytes(make_video(tmp_path / name).read_bytes())
    for args, said in ((["--video-codec", "ffv1", "--video-preset", "fast"],
                        ": --video-preset is for libx264, libx265 and libsvtav1, not ffv1"),
                       (["--video-codec", "libsvtav1", "--video-preset", "fast"],
                        ": --video-preset fast is not one of libsvtav1's: it takes a number from -1 (slowest) to "
                        "13 (fastest)"),
                       (["--video-preset", "5"],
                        ": --video-preset 5 is not one of libx264's: it takes a speed from ultrafast to veryslow")):
        wrong = restore(folder, "-o", tmp_path / "wrong", "--model", model2, *args)
        assert wrong.exit_code == 1, wrong.stderr
        items = items_of(wrong)
        assert [i["status"] for i in items] == ["error", "error"], items  # each file its own error, the batch on
        errors = [i["error"] for i in items]
        assert errors == [f"{folder / n}{said}" for n in ("a.mkv", "b.mkv")], errors
        assert not (tmp_path / "wrong").exists() or not any((tmp_path / "wrong").iterdir())

    bad = invoke("restore", clip, "-o", tmp_path / "bad", "--video-preset", "turbo")
    assert bad.exit_code == 2 and "--video-preset 'turbo' is not an encoder speed: ultrafast, " in bad.stderr
    assert frames_settings(from_given({"video_preset": "fast"})) != frames_settings(from_given({}))


def test_a_full_disk_under_a_video_ends_the_batch_as_for_an_image(tmp_path, model2, disk_fills):
    """Out of space while a video is finished, every later input would fail alike after its model time: the batch
    stops there, says why, and leaves no temporary file; the same command again restores what is left."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a.mp4")
    (folder / "b.png").write_bytes((TEST_INPUTS / "cameraman_gray.png").read_bytes())
    disk_fills(1)
    result = restore(folder, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    items = [line for line in lines if line["type"] == "item"]
    assert [i["status"] for i in items] == ["error"] and "No space left on device" in items[0]["error"]
    assert lines[-1]["halted"].startswith("No space left on device")
    assert list((tmp_path / "out").iterdir()) == []
    disk_fills(None)
    again = restore(folder, "-o", tmp_path / "out", "--model", model2)
    assert [i["status"] for i in items_of(again)] == ["ok", "ok"]


def test_a_cancelled_job_s_video_is_dropped_at_its_next_frame_and_its_status_names_the_frame(tmp_path, model2,
                                                                                              monkeypatch):
    """A job's video tells its frames in the job's status (its ``current``), and a cancel (``should_abandon``, as the
    worker asks it between tiles) drops the video at its next frame, leaving no file."""
    from restorecli.jobs.run import JobRun
    from restorecli.pipeline import restore_batch

    clip = make_video(tmp_path / "clip.mp4")
    asked = []

    def abandon() -> bool:
        asked.append(1)
        return len(asked) >= 5

    options = RestoreOptions(model=str(model2), device="cpu", precision="fp32", output_dir=str(tmp_path / "out"))
    batch = restore_batch([str(clip)], options, should_abandon=abandon)
    assert batch.items == [] and len(asked) == 5  # dropped after its fifth frame, unreported
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    told, recorded = [], []
    real = JobRun.working_on

    def working_on(self, current, starting=None, frames=None):
        real(self, current, starting, frames)
        told.append(current)
        recorded.append(self.store.get(self.job_id).frames)  # what status and the server read

    monkeypatch.setattr(JobRun, "working_on", working_on)
    queue = tmp_path / "queue"
    assert invoke("submit", clip, "--queue", queue, "--model", model2, "--device", "cpu").exit_code == 0
    assert invoke("worker", "--queue", queue, "--once").exit_code == 0
    last = told.index(f"{clip} (frame {FRAMES} of {FRAMES})")  # the last frame is always told
    assert recorded[last] == {"input": str(clip), "done": FRAMES, "total": FRAMES}
    assert recorded[0] is None  # before its first frame, the video's name alone


def test_submit_refuses_a_video_whose_frames_would_be_over_the_output_limit(tmp_path, model2):
    """A queued video's frames are bounded as a queued image is, at the door: read from its header, before a
    worker spends time on it (the server's upload takes the same check)."""
    clip = make_video(tmp_path / "clip.mp4")  # 64x48: 128x96 at 2x, 12288 pixels a frame
    queue = tmp_path / "queue"
    refused = invoke("submit", clip, "--queue", queue, "--model", "realesrgan-x2plus", "--max-output-pixels", "10000")
    assert refused.exit_code == 2
    assert f"{clip}: its output would be 128x96 pixels" in refused.stderr and "--max-output-pixels 10000" in refused.stderr
    assert not (queue / "jobs").exists() or not list((queue / "jobs").iterdir())
    taken = invoke("submit", clip, "--queue", queue, "--model", "realesrgan-x2plus", "--max-output-pixels", "12288")
    assert taken.exit_code == 0, taken.stderr


def test_ctrl_c_mid_video_leaves_no_partial_file_and_a_rerun_restores_it(tmp_path, model2, monkeypatch):
    """Ctrl-C while the model is on a video's fifth frame: the batch ends as for an image (130, the summary), the
    video's temporary file goes with its threads, and the same command again restores it whole, sweeping away the
    temporary file a killed run left."""
    from restorecli.pipeline import Restorer

    original, calls = Restorer.restore_array, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Restorer, "restore_array", interrupted)
    clip = make_video(tmp_path / "clip.mp4")
    result = restore(clip, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 130
    assert json.loads(result.stdout.splitlines()[-1])["interrupted"] == "SIGINT"
    assert list((tmp_path / "out").iterdir()) == []
    from test_files import _dead_pid

    from restorecli.files import _host

    killed = tmp_path / "out" / f".clip.mp4.restorecli-{_dead_pid()}@{_host()}.q1w2e3r4.part"  # as SIGKILL leaves it
    killed.write_bytes(b"half a video")
    again = restore(clip, "-o", tmp_path / "out", "--model", model2)
    assert again.exit_code == 0, again.stderr
    assert len(frames_of(tmp_path / "out" / "clip.mp4")) == FRAMES
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clip.mp4"]  # the killed run's file swept


@pytest.mark.parametrize(("flags", "error"), [
    (["--outscale", "1.3"], "libx264 in yuv420p needs even frame sides, and the restored frames would be 83x62"),
    (["--max-output-pixels", "1000"], "its output would be 128x96 pixels"),
])
def test_a_video_whose_frames_cannot_be_written_is_refused_before_the_model_runs(tmp_path, model2, monkeypatch,
                                                                                 flags, error):
    from restorecli.pipeline import Restorer

    ran = []
    monkeypatch.setattr(Restorer, "restore_array", lambda self, *args, **kwargs: ran.append(1))
    clip = make_video(tmp_path / "clip.mp4")
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, *flags)
    assert result.exit_code == 1
    [item] = items_of(result)
    assert item["status"] == "error" and f"{clip}: {error}" in item["error"]
    assert ran == [] and not (tmp_path / "out" / "clip.mp4").exists()


def make_avi(path: Path, codec: str = "libx264", drops: bool = False) -> tuple[Path, list[int]]:
    """An AVI as cameras and old encoders write it: a tick per frame at 24 fps (with ``drops``, every fourth tick
    left empty, a dropped frame, as AVI marks it), H.264 with B-frames by default (stored in decoding order: AVI
    keeps no presentation times), 16-bit PCM sound. Returns the path and each frame's tick."""
    out = av.open(str(path), "w")
    video = out.add_stream(codec, rate=24)
    video.width, video.height, video.pix_fmt = W, H, "bgr0" if codec == "ffv1" else "yuv420p"
    sound = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
    ticks = [i + i // 3 if drops else i for i in range(FRAMES)]
    for i, tick in enumerate(ticks):
        frame = av.VideoFrame.from_ndarray(moving_frame(i), format="rgb24")
        frame.pts = tick
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    total = SAMPLE_RATE * (ticks[-1] + 1) // 24
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / SAMPLE_RATE) * 32767).astype(np.int16)
    for start in range(0, total, 1024):
        chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
        out.mux(sound.encode(chunk))
    out.mux(sound.encode(None))
    out.close()
    return path, ticks


def ticks_read(path: Path) -> list[int]:
    """Each frame's time as restorecli reads it (FFmpeg's own guess for H.264 in AVI is a frame late)."""
    from restorecli.video.restore import open_video

    with open_video(path) as video:
        return [item.pts for item in video.items() if hasattr(item, "color")]


@pytest.mark.parametrize(("codec", "drops"), [("libx264", False), ("ffv1", True)])
def test_an_avi_keeps_its_container_frame_times_and_sound(tmp_path, model2, restorer, codec, drops):
    """AVI holds decoding times only: the frames of an H.264 AVI with B-frames are read at their ticks, as are an
    FFV1 AVI's with dropped frames (the gaps kept); the output is H.264 without B-frames (whose times AVI could not
    tell apart) or the codec asked for, and the PCM sound is copied."""
    clip, ticks = make_avi(tmp_path / "old.avi", codec, drops)
    assert ticks_read(clip) == ticks
    flags = ("--video-codec", "ffv1") if codec == "ffv1" else ()
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, *flags)
    assert result.exit_code == 0, result.stderr
    [item] = items_of(result)
    out = tmp_path / "out" / "old.avi"
    assert item["output"] == str(out) and item["video"]["codec"] == codec and item["video"]["frames"] == FRAMES
    assert codec == "ffv1" or f"{clip}: video written with libx264 (the default for avi" in result.stderr
    assert ticks_read(out) == ticks
    restored = frames_of(out)
    if codec == "ffv1":  # FFmpeg reads an AVI without reordered frames at its ticks too
        assert [when for _, when, _ in restored] == [Fraction(tick, 24) for tick in ticks]
    assert packets_of(out, "audio") == packets_of(clip, "audio")
    with av.open(str(out)) as container:
        assert container.format.name == "avi"
        assert container.streams.video[0].codec_context.name == {"libx264": "h264"}.get(codec, codec)
    for (pixels, _, _), (written, _, _) in zip(frames_of(clip), restored, strict=True):
        expected = restorer.restore_array(pixels)
        if codec == "ffv1":
            np.testing.assert_array_equal(written, expected)
        else:  # each frame in its place: near its own restoration
            assert psnr(written, expected) > 26


def make_deep_video(path: Path, frames: int = 8) -> Path:
    """A 10-bit H.264 video (yuv420p10le) of smooth 16-bit gradients, whose steps 8 bits would round away."""
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=24)
    video.width, video.height, video.pix_fmt = W, H, "yuv420p10le"
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(frames):
        planes = np.stack([xx * 1000 + i * 300, yy * 1300, (xx + yy) * 500 + i * 200], -1) % 65536
        frame = av.VideoFrame.from_ndarray(planes.astype(np.uint16), format="rgb48le")
        frame.pts = i
        out.mux(video.encode(frame.reformat(format="yuv420p10le")))
    out.mux(video.encode(None))
    out.close()
    return path


def deep_frames(path: Path) -> tuple[str, list[np.ndarray]]:
    """The video stream's pixel format and its frames decoded as 16-bit RGB."""
    with av.open(str(path)) as container:
        return (container.streams.video[0].codec_context.pix_fmt,
                [frame.to_ndarray(format="rgb48le") for frame in container.decode(video=0)])


def test_a_10_bit_video_stays_10_bit_and_its_frames_go_through_the_model_in_16_bits(tmp_path, model2, restorer):
    clip = make_deep_video(tmp_path / "deep.mkv")
    _, inputs = deep_frames(clip)
    assert len({int(v) % 257 for v in np.unique(inputs[0])}) > 1  # not 8-bit values widened

    default = restore(clip, "-o", tmp_path / "x264", "--model", model2)
    assert default.exit_code == 0, default.stderr
    assert "video written with libx264 (the default for matroska that this FFmpeg has, in yuv420p10le: the input " \
           "has 10 bits a sample)" in " ".join(default.stderr.split())
    pix_fmt, written = deep_frames(tmp_path / "x264" / "deep.mkv")
    assert pix_fmt == "yuv420p10le" and len(written) == len(inputs)
    for pixels, out in zip(inputs, written, strict=True):
        expected = restorer.restore_array(pixels)
        assert expected.dtype == np.uint16
        mse = np.mean((out.astype(np.float64) - expected) ** 2)
        assert 10 * np.log10(65535 ** 2 / mse) > 26  # within the codec's loss (4:2:0 of a random model's colours)

    lossless = restore(clip, "-o", tmp_path / "ffv1", "--model", model2, "--video-codec", "ffv1")
    assert lossless.exit_code == 0, lossless.stderr
    pix_fmt, written = deep_frames(tmp_path / "ffv1" / "deep.mkv")
    assert pix_fmt == "gbrp16le"
    for pixels, out in zip(inputs, written, strict=True):  # the model's 16-bit output exactly: 16 bits all along
        np.testing.assert_array_equal(out, restorer.restore_array(pixels))

    eight = restore(clip, "-o", tmp_path / "eight", "--model", model2, "--pix-fmt", "yuv420p")
    assert eight.exit_code == 0, eight.stderr
    assert deep_frames(tmp_path / "eight" / "deep.mkv")[0] == "yuv420p"
    assert "in yuv420p (--pix-fmt)" in " ".join(eight.stderr.split())
    for bad in ("yuv420p16le", "nonsense"):
        refused = restore(clip, "-o", tmp_path / "bad", "--model", model2, "--pix-fmt", bad)
        assert refused.exit_code == 1
        assert f"{clip}: --pix-fmt {bad}: libx264 writes yuv420p, " in items_of(refused)[0]["error"]


def make_superframe_webm(path: Path, pairs: int = 10) -> Path:
    """A WebM that lies about its frames: each of its ``pairs`` packets is a VP9 superframe holding two shown 32x32
    frames, so demuxing counts ``pairs`` frames and decoding gives twice as many (the pair shares one time)."""
    plain = path.with_name(path.name + ".plain.webm")
    with av.open(str(plain), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=24, options={"lag-in-frames": "0", "auto-alt-ref": "0",
                                                                "deadline": "realtime", "cpu-used": "8"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(pairs * 2):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 10 % 256, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(plain)) as source, av.open(str(path), "w") as out:
        video = source.streams.video[0]
        target = out.add_stream_from_template(video)
        packets = [packet for packet in source.demux(video) if packet.size]
        for first, second in zip(packets[::2], packets[1::2], strict=True):
            marker = bytes([0b11000000 | (3 << 3) | 1])  # a superframe index: two frames, sizes in 4 bytes
            sizes = len(bytes(first)).to_bytes(4, "little") + len(bytes(second)).to_bytes(4, "little")
            joined = av.Packet(bytes(first) + bytes(second) + marker + sizes + marker)
            joined.pts, joined.dts, joined.time_base, joined.stream = first.pts, first.dts, first.time_base, target
            joined.is_keyframe = first.is_keyframe
            out.mux(joined)
    plain.unlink()
    return path


def test_count_video_packets_counts_by_demuxing_and_stops_past_its_bound(tmp_path):
    """The server's frame count: the video stream's packets, never decoded (a superframe file counts its packets,
    not its frames: the worker's decoded count is the second check); it stops one past ``stop_over``, and a file
    with no video stream is a ``VideoDecodeError`` naming it."""
    from restorecli.video.formats import VideoDecodeError
    from restorecli.video.read import count_video_packets

    clip = make_video(tmp_path / "clip.mp4")
    assert count_video_packets(clip, "clip.mp4") == FRAMES
    assert count_video_packets(clip, "clip.mp4", stop_over=5) == 6
    assert count_video_packets(make_superframe_webm(tmp_path / "lying.webm"), "lying.webm") == 10
    with pytest.raises(VideoDecodeError, match="^sound.mp4: the file holds no video stream$"):
        count_video_packets(make_video(tmp_path / "sound.mp4", frames=0), "sound.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoDecodeError, match="^junk.mp4: not a readable video"):
        count_video_packets(tmp_path / "junk.mp4", "junk.mp4")


@pytest.mark.parametrize("segments", [None, 0.001])
def test_restore_video_stops_at_the_first_frame_over_max_frames_and_writes_nothing(tmp_path, segments):
    """``max_frames`` counts decoded frames (a superframe file's too), in one go or in segments: the video's error,
    no output and no parts folder left; within the limit it is restored whole."""
    from test_video_resume import Doubling

    from restorecli.video.read import TooManyFrames
    from restorecli.video.restore import VideoOptions, restore_video

    lying = make_superframe_webm(tmp_path / "lying.webm")
    out = tmp_path / "out" / "lying.webm"
    said = "^lying.webm: more than 15 frames, over the limit of 15 frames a video \\(--max-video-frames\\)$"
    with pytest.raises(TooManyFrames, match=said):
        restore_video(lying, out, Doubling(), VideoOptions(max_frames=15, segment_seconds=segments), name="lying.webm")
    assert not out.parent.exists() or not list(out.parent.iterdir())
    assert restore_video(lying, out, Doubling(), VideoOptions(max_frames=20, segment_seconds=segments)).frames == 20


def test_restore_max_video_frames_is_that_video_s_error_and_the_batch_goes_on(tmp_path, model2):
    """``restore --max-video-frames N``: a video with more frames is that file's error (exit 1), nothing written for
    it; the other inputs are restored. Without the option a local restore has no frame limit."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    clip = make_video(inputs / "clip.mp4")
    from PIL import Image

    Image.fromarray(moving_frame(0)).save(inputs / "still.png")
    result = restore(inputs, "-o", tmp_path / "out", "--model", model2, "--max-video-frames", "10")
    assert result.exit_code == 1, result.stderr
    done = {Path(item["input"]).name: item for item in items_of(result)}
    assert done["clip.mp4"]["error"] == f"{clip}: more than 10 frames, over the limit of 10 frames a video " \
                                        "(--max-video-frames)"
    assert not (tmp_path / "out" / "clip.mp4").exists()
    assert done["still.png"]["status"] == "ok" and (tmp_path / "out" / "still.png").is_file()
    bad = invoke("restore", clip, "-o", tmp_path / "bad", "--max-video-frames", "0")
    assert bad.exit_code == 2 and "--max-video-frames" in bad.stderr


@pytest.mark.parametrize(("name", "codec", "late"), [
    ("intra.mkv", "ffv1", False),  # every frame a keyframe
    ("gop.mp4", "libx264", False),  # a keyframe every 4 frames, B-frames, variable rate, the first frame at 0.5 s
    ("gop.mp4", "libx264", True),  # a demuxer whose seek lands after the frame: read again from the start
])
def test_a_resumed_video_seeks_to_its_first_unfinished_segment_and_equals_an_uninterrupted_run(
        tmp_path, monkeypatch, name, codec, late):
    """A resumed run seeks to the keyframe at or before the last frame the kept segments hold and passes over only
    the frames from there: fewer than the segments hold. Its lossless output equals the frames restored in one
    go, at the input's times (variable rate, a first frame not at 0)."""
    from test_video_resume import Doubling, covered

    from restorecli.video import restore as video_restore
    from restorecli.video.read import VideoInput
    from restorecli.video.restore import VideoOptions, restore_video

    frames = 48
    clip = make_video(tmp_path / name, codec, variable=True, frames=frames, gop=4, first_tick=300, audio=None)
    out = tmp_path / "out" / "clip.mkv"  # FFV1 in Matroska whatever the input: frames compared exactly
    options = VideoOptions(codec="ffv1", segment_seconds=0.001, settings={"model": "doubling"})
    with pytest.raises(KeyboardInterrupt):
        restore_video(clip, out, Doubling(stop_at=36), options)
    kept = covered(out)
    assert 8 < kept < 36

    opened: list[VideoInput] = []
    real_open = video_restore.open_video
    monkeypatch.setattr(video_restore, "open_video", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    if late:  # as a demuxer without an exact index may: past the frame asked for
        real_seek = VideoInput._seek
        monkeypatch.setattr(VideoInput, "_seek", lambda self, pts: real_seek(self, self.video.duration))
    model = Doubling()
    done = restore_video(clip, out, model, options)
    assert (done.frames, done.resumed, model.calls) == (frames, kept, frames - kept)
    passed_over = sum(video.decoded for video in opened) - (frames - kept)
    # late: the frame it landed at, then every frame the segments hold, read from the start
    assert passed_over == kept + 1 if late else 0 < passed_over < kept
    expected = frames_of(clip)
    written = frames_of(out)
    assert expected[0][1] == Fraction(1, 2)
    assert [float(when) for _, when, _ in written] == pytest.approx([float(when) for _, when, _ in expected],
                                                                    abs=0.001)  # Matroska keeps milliseconds
    for (before, _, _), (after, _, _) in zip(expected, written, strict=True):
        np.testing.assert_array_equal(after, before.repeat(2, 0).repeat(2, 1))


def test_restore_animation_refuses_more_frames_than_max_frames_before_any_model_time(tmp_path):
    """An animation's frames are counted by Pillow, which reads every frame's header: over ``max_frames``, its
    error before the model runs and nothing written; at the limit it is restored."""
    from PIL import Image
    from test_video_resume import Doubling

    from restorecli.video.animated import restore_animation
    from restorecli.video.read import TooManyFrames
    from restorecli.video.restore import VideoOptions

    pictures = [Image.new("RGB", (1, 1), (i * 6, 0, 0)) for i in range(40)]
    pictures[0].save(tmp_path / "many.gif", save_all=True, append_images=pictures[1:], duration=20, loop=0)
    model, out = Doubling(), tmp_path / "out" / "many.gif"
    with pytest.raises(TooManyFrames, match="^many.gif: 40 frames, over the limit of 39 frames an animation"):
        restore_animation(tmp_path / "many.gif", out, model, VideoOptions(max_frames=39), name="many.gif")
    assert model.calls == 0 and not out.exists()
    assert restore_animation(tmp_path / "many.gif", out, model, VideoOptions(max_frames=40)).frames == 40


FILM_FRAMES = 6


def make_thumbnail_first(path: Path) -> Path:
    """A Matroska file whose first video stream is a one-frame 32x32 picture (a thumbnail) and whose second is the
    film: ``FILM_FRAMES`` moving 64x48 frames."""
    with av.open(str(path), "w") as out:
        thumbnail = out.add_stream("mjpeg", rate=1)
        thumbnail.width = thumbnail.height = 32
        thumbnail.pix_fmt = "yuvj420p"
        film = out.add_stream("libx264", rate=24)
        film.width, film.height, film.pix_fmt = W, H, "yuv420p"
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        picture = picture.reformat(format="yuvj420p")
        picture.pts = 0
        out.mux(thumbnail.encode(picture))
        out.mux(thumbnail.encode(None))
        for i in range(FILM_FRAMES):
            frame = av.VideoFrame.from_ndarray(moving_frame(i), format="rgb24")
            frame.pts = i
            out.mux(film.encode(frame))
        out.mux(film.encode(None))
    return path


def test_of_two_video_streams_the_film_is_restored_not_the_first_stream(tmp_path, model2):
    """A file with a thumbnail before its film: the stream restored, counted at upload and named in the header
    checks is the one FFmpeg picks (as a player does), not a one-frame picture that would drop the film."""
    from restorecli.video.formats import frame_size
    from restorecli.video.read import count_video_packets

    clip = make_thumbnail_first(tmp_path / "film.mkv")
    assert count_video_packets(clip, "film.mkv") == FILM_FRAMES and frame_size(clip) == (W, H)
    result = restore(clip, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 0, result.stderr
    restored = frames_of(tmp_path / "out" / "film.mkv")
    assert len(restored) == FILM_FRAMES and restored[0][0].shape == (2 * H, 2 * W, 3)


def remuxed(source: Path, path: Path, declared: tuple[int, int] | None = None, frames: bool = True,
            sound: Path | None = None) -> Path:
    """``source``'s video stream copied into ``path`` unchanged, under a header that states ``declared`` as its frame
    size where given (FFV1 keeps no size of its own: the header's is the decoder's); ``frames=False``: the stream
    with none of its packets; ``sound``: that file's audio stream beside it."""
    with av.open(str(source)) as film, av.open(str(path), "w") as out:
        video = out.add_stream_from_template(film.streams.video[0])
        if declared is not None:
            video.codec_context.width, video.codec_context.height = declared
        copies = [(film, film.streams.video[0], video)] if frames else []
        opened = av.open(str(sound)) if sound is not None else None
        if opened is not None:
            copies.append((opened, opened.streams.audio[0], out.add_stream_from_template(opened.streams.audio[0])))
        out.start_encoding()
        for container, stream, target in copies:
            for packet in container.demux(stream):
                if packet.size:
                    packet.stream = target
                    out.mux(packet)
        if opened is not None:
            opened.close()
    return path


def make_resized(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """An MJPEG video whose frames have ``sizes`` (each JPEG states its own), its header stating the first."""
    with av.open(str(path), "w") as out:
        stream = out.add_mux_stream("mjpeg", rate=24, width=sizes[0][0], height=sizes[0][1])
        stream.time_base = Fraction(1, 24)
        for i, (width, height) in enumerate(sizes):
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.width, encoder.height, encoder.pix_fmt, encoder.time_base = width, height, "yuvj420p", \
                Fraction(1, 24)
            picture = av.VideoFrame.from_ndarray(np.resize(moving_frame(i), (height, width, 3)), format="rgb24")
            [packet] = encoder.encode(picture.reformat(format="yuvj420p"))
            packet.stream, packet.pts, packet.dts = stream, i, i
            out.mux(packet)
    return path


def hostile_videos(folder: Path, scratch: Path) -> dict[str, str]:
    """Videos a hostile or broken source sends, written into ``folder``: name -> the error each must end as."""
    scratch.mkdir(exist_ok=True)
    ffv1 = make_video(scratch / "ffv1.mkv", "ffv1", frames=4, audio=None)
    remuxed(ffv1, folder / "declared_huge.mkv", declared=(60000, 60000))
    make_resized(folder / "resized.avi", [(W, H)] * 3 + [(2 * W, 2 * H)])
    make_resized(folder / "exploding.avi", [(W, H)] * 3 + [(16 * W, 16 * H)])  # over GROWTH: FFmpeg allocates none
    remuxed(ffv1, folder / "no_frames.mkv", frames=False, sound=make_video(scratch / "sound.mkv", frames=0))
    return {"declared_huge.mkv": "declared_huge.mkv: its video stream states no frame size FFmpeg can take (none, or "
                                 "one too large to decode)",
            "resized.avi": f"resized.avi: frame 3 is {2 * W}x{2 * H} pixels where the video's frames are {W}x{H}; "
                           "restorecli restores videos whose frames keep one size",
            "exploding.avi": f"exploding.avi: damaged or truncated at frame 3, or a frame there over 64x the video's "
                             f"{W}x{H} pixels (Invalid argument)",
            "no_frames.mkv": "no_frames.mkv: no frame could be decoded (empty, truncated or damaged)"}


def test_hostile_videos_end_as_their_own_errors_and_the_batch_goes_on(tmp_path, model2):
    """A header stating 60000x60000 (FFmpeg will not decode it), frames that grow mid-stream (twice the stated size:
    refused by restorecli, sizes named; 16 times: refused by the decoder before it allocates the frame), a video
    stream with no frames beside its sound: each is that file's error naming it and the problem, nothing written for
    it; the same frames under an honest header are restored. The server's header check knows no size for the first."""
    from restorecli.video.formats import frame_size

    inputs = tmp_path / "in"
    inputs.mkdir()
    said = hostile_videos(inputs, tmp_path / "scratch")
    remuxed(tmp_path / "scratch" / "ffv1.mkv", inputs / "honest.mkv")
    assert frame_size(inputs / "declared_huge.mkv") is None and frame_size(inputs / "honest.mkv") == (W, H)
    result = restore(inputs, "-o", tmp_path / "out", "--model", model2)
    assert result.exit_code == 1, result.stderr
    done = {Path(item["input"]).name: item for item in items_of(result)}
    assert {name: item.get("error") for name, item in done.items() if name != "honest.mkv"} == {
        name: text.replace(name, str(inputs / name), 1) for name, text in said.items()}  # the CLI names the path
    assert done["honest.mkv"]["status"] == "ok"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["honest.mkv"]


def test_a_list_of_other_files_or_itself_is_not_followed(tmp_path):
    """An upload's content picks FFmpeg's demuxer, not its name: an ffconcat list named clip.mp4 would have its
    files read (one naming itself: opened again and again until the process had no file descriptor left). It is
    refused as not a readable video, by the reader, the server's counters and header checks alike, however it
    names its files; a video beside it still opens."""
    from restorecli.video.formats import VideoDecodeError, frame_size, header_duration
    from restorecli.video.read import VideoInput, count_video_packets

    make_video(tmp_path / "clip.mkv", frames=4, audio=None)
    listed = tmp_path / "list.mp4"
    listed.write_text("ffconcat version 1.0\nfile list.mp4\nfile clip.mkv\n")
    said = "^list.mp4: not a readable video \\(.*a list of other files or a playlist, which restorecli does not follow\\)$"
    for read in (lambda: VideoInput(listed, "list.mp4"), lambda: count_video_packets(listed, "list.mp4"),
                 lambda: header_duration(listed)):
        with pytest.raises(VideoDecodeError, match=said):
            read()
    assert frame_size(listed) is None
    with VideoInput(tmp_path / "clip.mkv", "clip.mkv") as video:
        assert (video.facts.width, video.facts.height) == (W, H)
