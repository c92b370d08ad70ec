"""A video restored in segments (issue 33): a run killed with SIGKILL, stopped with Ctrl-C or given back by a queue's
worker leaves its finished segments in a hidden parts folder beside the output; the next run restores only the frames
no segment holds, joins the segments without encoding them again, and its video equals an uninterrupted run's. A
changed input, other settings or --overwrite start again; no partial file is ever under the final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import invoke, items_of
from helpers.cli import restore_exactly as restore
from helpers.wait import wait_until
from test_video import frames_of, make_video, packets_of

av = pytest.importorskip("av", reason="PyAV (restorecli[video]) is not installed: the video tests need it")

FRAMES = 24  # a second at 24 fps
TORCH = ("--backend", "torch")  # no ncnn conversion and timing: the runs compared run alike
SMALL = ("--segment-seconds", "0.001", *TORCH)  # a segment kept every frame or few (a rerun needs none so small)
LOSSLESS = ("--video-codec", "ffv1")  # frames compared exactly

# A real `restorecli restore` process whose model hangs at its STALL-th frame, so that the SIGKILL lands mid-video
# whatever the machine's speed: the frames before it are restored and their segments kept as in any run.
_STALLING = """
import sys, threading
from restorecli.pipeline import Restorer
real, calls, stall = Restorer.restore_array, [], int(sys.argv[1])
def stalling(self, *args, **kwargs):
    calls.append(1)
    if len(calls) >= stall:
        threading.Event().wait()
    return real(self, *args, **kwargs)
Restorer.restore_array = stalling
from restorecli.cli.app import main
sys.argv = ["restorecli", *sys.argv[2:]]
main()
"""


def manifest(output: Path) -> dict:
    path = output.parent / f".{output.name}.parts" / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or (never) half renamed
        return {}


def covered(output: Path) -> int:
    return sum(segment["frames"] for segment in manifest(output).get("segments", []))


@pytest.fixture
def counted(monkeypatch):
    """The frames the model restores in this process, counted."""
    from restorecli.pipeline import Restorer

    real, calls = Restorer.restore_array, []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Restorer, "restore_array", counting)
    return calls


def submitted(clip: Path, queue: Path, model: Path) -> str:
    """The id of a job of ``clip`` alone, queued to be restored in small lossless segments, exactly."""
    result = invoke("submit", clip, "--queue", queue, "--model", model, "--device", "cpu", "--precision", "fp32",
                    "--tile", "0", *SMALL, *LOSSLESS, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["job_id"]


def interrupted(clip: Path, out: Path, model: Path, monkeypatch, at: int, *flags: str) -> int:
    """Ctrl-C on the model's ``at``-th frame of a small-segment run into ``out`` (``flags``: FFV1 where not
    given); returns the frames kept."""
    from restorecli.pipeline import Restorer

    real, calls = Restorer.restore_array, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Restorer, "restore_array", stopping)
        result = restore(clip, "-o", out, "--model", model, *SMALL, *(flags or LOSSLESS))
    assert result.exit_code == 130, result.stderr
    assert not (out / clip.name).exists()
    kept = covered(out / clip.name)
    assert 0 < kept < at
    return kept


def test_a_killed_run_resumes_at_its_first_unfinished_segment_and_equals_an_uninterrupted_run(tmp_path, model2,
                                                                                              counted):
    clip = make_video(tmp_path / "clip.mkv", variable=True, frames=FRAMES)
    whole = restore(clip, "-o", tmp_path / "whole", "--model", model2, *TORCH, *LOSSLESS)
    assert whole.exit_code == 0, whole.stderr
    reference = frames_of(tmp_path / "whole" / "clip.mkv")
    assert len(reference) == FRAMES

    out = tmp_path / "out" / "clip.mkv"
    killed = subprocess.Popen([sys.executable, "-c", _STALLING, "12", "restore", str(clip), "-o", str(out.parent),
                               "--model", str(model2), "--device", "cpu", "--precision", "fp32", "--tile", "0",
                               *SMALL, *LOSSLESS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: covered(out) >= 1 or killed.poll() is not None, what="a finished segment")
        assert killed.poll() is None, killed.stderr.read().decode() if killed.stderr else ""
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert not out.exists()  # never a partial file under the final name
    kept = covered(out)
    assert 1 <= kept < 12

    counted.clear()
    again = restore(clip, "-o", out.parent, "--model", model2, *TORCH, *LOSSLESS)
    assert again.exit_code == 0, again.stderr
    [item] = items_of(again)
    assert item["status"] == "ok" and item["video"]["frames"] == FRAMES and item["video"]["resumed"] == kept
    assert len(counted) == FRAMES - kept  # only the frames no segment held were restored
    resumed = frames_of(out)
    assert [when for _, when, _ in resumed] == [when for _, when, _ in frames_of(clip)]
    for (expected, _, _), (pixels, _, _) in zip(reference, resumed, strict=True):
        np.testing.assert_array_equal(pixels, expected)
    assert packets_of(out, "audio") == packets_of(clip, "audio")  # copied for the whole, once
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mkv"]  # the parts removed after the join


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_a_stopped_run_resumes_with_the_timestamps_and_sound_of_the_whole(tmp_path, model2, monkeypatch, counted,
                                                                          name):
    """MP4 (H.264 with B-frames, whose first frames of a segment decode before it) and WebM: the joined segments
    show every frame at its time, the last one for as long as the input, and the sound is the input's."""
    webm = name.endswith(".webm")
    clip = make_video(tmp_path / name, "libvpx-vp9" if webm else "libx264", variable=True,
                      audio="libopus" if webm else "aac", frames=FRAMES)
    codec = ("--video-codec", "libvpx-vp9" if webm else "libx264")
    kept = interrupted(clip, tmp_path / "out", model2, monkeypatch, 12, *codec)
    counted.clear()
    again = restore(clip, "-o", tmp_path / "out", "--model", model2, *TORCH, *codec)
    assert again.exit_code == 0, again.stderr
    assert items_of(again)[0]["video"]["resumed"] == kept and len(counted) == FRAMES - kept
    out = tmp_path / "out" / name
    assert [when for _, when, _ in frames_of(out)] == [when for _, when, _ in frames_of(clip)]
    with av.open(str(clip)) as before, av.open(str(out)) as after:
        assert after.duration == pytest.approx(before.duration, abs=11_000)  # microseconds: a muxer's rounding
    assert packets_of(out, "audio") == packets_of(clip, "audio")


def test_a_changed_input_other_settings_or_overwrite_start_again(tmp_path, model2, monkeypatch, counted):
    clip = make_video(tmp_path / "clip.mkv", frames=FRAMES)
    out = tmp_path / "out"

    def rerun(*flags: str) -> dict:
        counted.clear()
        result = restore(clip, "-o", out, "--model", model2, *TORCH, *LOSSLESS, *flags)
        assert result.exit_code == 0, result.stderr
        [item] = items_of(result)
        assert item["video"]["frames"] == FRAMES and len(counted) == FRAMES - item["video"]["resumed"]
        return item

    interrupted(clip, out, model2, monkeypatch, 12)
    assert rerun("--overwrite")["video"]["resumed"] == 0

    (out / "clip.mkv").unlink()
    interrupted(clip, out, model2, monkeypatch, 12)
    assert rerun("--outscale", "1")["video"]["resumed"] == 0  # other frames than the segments hold
    assert frames_of(out / "clip.mkv")[0][0].shape[:2] == (48, 64)

    (out / "clip.mkv").unlink()
    interrupted(clip, out, model2, monkeypatch, 12)
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the input written again since
    assert rerun()["video"]["resumed"] == 0
    assert not (out / ".clip.mkv.parts").exists()


def test_ctrl_c_before_the_first_segment_ends_leaves_no_parts_and_zero_restores_in_one_go(tmp_path, model2,
                                                                                           monkeypatch, counted):
    """The default segment (10 s of work) outlasts this short video: Ctrl-C leaves nothing; --segment-seconds 0
    writes the video in one go, never making a parts folder."""
    clip = make_video(tmp_path / "clip.mp4", frames=FRAMES)
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, "--segment-seconds", "0", *TORCH)
    assert result.exit_code == 0, result.stderr
    assert items_of(result)[0]["video"] == {**items_of(result)[0]["video"], "frames": FRAMES, "resumed": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4"]
    bad = invoke("restore", clip, "-o", tmp_path / "bad", "--segment-seconds", "-1")
    assert bad.exit_code == 2 and "--segment-seconds" in bad.stderr


def test_a_queued_video_given_back_mid_way_is_resumed_by_the_next_worker(tmp_path, model2, monkeypatch, counted):
    """A worker told twice to stop (SIGTERM, then again: no grace) abandons the video in hand; the job goes back to
    the queue with the segments finished so far, and the next worker restores only the rest."""
    from restorecli.pipeline import Restorer

    clip = make_video(tmp_path / "clip.mkv", variable=True, frames=FRAMES)
    queue = tmp_path / "queue"
    job_id = submitted(clip, queue, model2)

    real, calls = Restorer.restore_array, []

    def signalled(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 12:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Restorer, "restore_array", signalled)
        stopped = invoke("worker", "--queue", queue, "--once")
    assert stopped.exit_code in (0, 130, 143), stopped.stderr
    status = json.loads(invoke("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "queued", status
    [parts] = (queue / "jobs" / job_id / "work").glob("*/.clip.mkv.parts")
    kept = covered(parts.parent / "clip.mkv")
    assert 0 < kept < 12

    counted.clear()
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    status = json.loads(invoke("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "completed", status
    assert len(counted) == FRAMES - kept
    whole = restore(clip, "-o", tmp_path / "whole", "--model", model2, *TORCH, *LOSSLESS)
    assert whole.exit_code == 0, whole.stderr
    output = queue / status["results"][0]["output"]
    for (expected, when, _), (pixels, shown, _) in zip(frames_of(tmp_path / "whole" / "clip.mkv"), frames_of(output),
                                                       strict=True):
        assert shown == when
        np.testing.assert_array_equal(pixels, expected)


@pytest.mark.slow  # 16 s on a quiet 2-core machine (two worker processes, a lease to run out): nox -s slow runs it;
# test_a_stalled_worker_s_segments_are_left_to_it_while_it_runs is its fast sibling
def test_a_sigkilled_worker_s_finished_segments_are_taken_over_by_the_next_worker(tmp_path, model2, counted):
    """A real ``worker`` process SIGKILLed mid-video (its model hangs at the 12th frame): once its lease runs out,
    the next worker takes the finished segments over from the dead lease's folder and restores only the rest;
    the video has every frame at its time, each the restored frame (within the codec's loss of an uninterrupted
    run's and further from the next frame's: the killed process is another process), and the sound."""
    from conftest import psnr

    clip = make_video(tmp_path / "clip.mkv", variable=True, frames=FRAMES)
    queue = tmp_path / "queue"
    job_id = submitted(clip, queue, model2)
    work = queue / "jobs" / job_id / "work"

    def kept_by_the_killed() -> int:
        return sum(covered(parts.parent / "clip.mkv") for parts in work.glob("*/.clip.mkv.parts"))

    killed = subprocess.Popen([sys.executable, "-c", _STALLING, "12", "worker", "--queue", str(queue), "--once",
                               "--lease", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: kept_by_the_killed() >= 1 or killed.poll() is not None, what="a finished segment")
        assert killed.poll() is None, killed.stderr.read().decode() if killed.stderr else ""
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    kept = kept_by_the_killed()
    assert 1 <= kept < 12
    wait_until(lambda: all(run["stale"] for run in
                           json.loads(invoke("status", "--queue", queue, "--json").stdout)["running"]),
               what="the killed worker's lease to run out")

    counted.clear()
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    status = json.loads(invoke("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "completed", status
    assert len(counted) == FRAMES - kept  # only the frames no finished segment held
    output = queue / status["results"][0]["output"]
    whole = restore(clip, "-o", tmp_path / "whole", "--model", model2, *TORCH, *LOSSLESS)
    assert whole.exit_code == 0, whole.stderr
    expected, restored = frames_of(tmp_path / "whole" / "clip.mkv"), frames_of(output)
    assert [when for _, when, _ in restored] == [when for _, when, _ in frames_of(clip)]
    for i, ((pixels, _, _), (reference, _, _)) in enumerate(zip(restored, expected, strict=True)):
        alike = psnr(pixels, reference)
        assert alike > 30 and alike > psnr(pixels, expected[(i + 1) % FRAMES][0]) + 6, (i, alike)
    assert packets_of(output, "audio") == packets_of(clip, "audio")
    assert not work.exists() or list(work.iterdir()) == []  # the dead lease's folder removed


def test_a_stalled_worker_s_segments_are_left_to_it_while_it_runs(tmp_path):
    """A lease folder whose segments a live process of this host writes (a worker that stalled past its lease) is
    neither taken over nor removed by the next owner; a dead owner's is taken over."""
    from restorecli.files import _host
    from restorecli.jobs.run import work_folder

    job = tmp_path / "job"
    stalled, dead = job / "work" / "stalled" / ".clip.mkv.parts", job / "work" / "dead" / "sub" / ".a.mp4.parts"
    for parts, writer in ((stalled, f"{os.getppid()}@{_host()}"), (dead, f"{2 ** 22 + 1}@{_host()}")):
        parts.mkdir(parents=True)
        (parts / "manifest.json").write_text(json.dumps({"writer": writer, "segments": []}))
        (parts / "segment-00000.mkv").write_bytes(b"frames")
    work = work_folder(job, "next")
    assert (stalled / "segment-00000.mkv").read_bytes() == b"frames"  # untouched
    assert (work / "sub" / ".a.mp4.parts" / "segment-00000.mkv").read_bytes() == b"frames"
    assert not (job / "work" / "dead").exists()


def test_a_video_whose_segments_a_live_process_is_writing_is_refused(tmp_path, model2, monkeypatch):
    """Two runs over one output: the second leaves the parts folder to the live process its manifest names."""
    from restorecli.files import _host

    clip = make_video(tmp_path / "clip.mkv", frames=FRAMES)
    kept = interrupted(clip, tmp_path / "out", model2, monkeypatch, 12)
    path = tmp_path / "out" / ".clip.mkv.parts" / "manifest.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "writer": f"{os.getppid()}@{_host()}"}))  # a process that runs
    said = (f"{clip}: another restorecli process (pid {os.getppid()}) is restoring it into "
            f"{tmp_path / 'out' / 'clip.mkv'}")
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, *TORCH, *LOSSLESS)
    assert result.exit_code == 1 and said in items_of(result)[0]["error"]
    assert covered(tmp_path / "out" / "clip.mkv") == kept  # its segments left alone

    # a run that has kept no segment yet: the segment it is writing tells it
    path.unlink()
    writing = path.parent / f".segment-00000.mkv.restorecli-{os.getppid()}@{_host()}.a1b2c3d4.part"
    writing.write_bytes(b"the first frames")
    result = restore(clip, "-o", tmp_path / "out", "--model", model2, *TORCH, *LOSSLESS)
    assert result.exit_code == 1 and said in items_of(result)[0]["error"]
    assert writing.exists()


class Doubling:
    """A stand-in model for the library-level tests: each pixel repeated twice each way; it stops (Ctrl-C) at its
    ``stop_at``-th frame where given."""

    def __init__(self, stop_at: int | None = None):
        self.calls, self.stop_at = 0, stop_at

    def restore_array(self, color, alpha=None, options=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return color.repeat(2, 0).repeat(2, 1)


def test_restore_video_keeps_its_segments_and_resumes_and_a_damaged_manifest_starts_again(tmp_path):
    """The library's contract under the CLI's: ``restore_video`` with ``segment_seconds`` keeps each finished
    segment, resumes after the last of them, reports the frames it resumed, and starts again where the manifest
    cannot be read."""
    from restorecli.video.restore import VideoOptions, restore_video

    clip = make_video(tmp_path / "clip.mkv", variable=True, frames=FRAMES)
    out = tmp_path / "out" / "clip.mkv"
    options = VideoOptions(codec="ffv1", segment_seconds=0.001, settings={"model": "doubling"})
    with pytest.raises(KeyboardInterrupt):
        restore_video(clip, out, Doubling(stop_at=12), options)
    kept = covered(out)
    assert 0 < kept < 12 and not out.exists()

    model = Doubling()
    done = restore_video(clip, out, model, options)
    assert (done.frames, done.resumed, model.calls) == (FRAMES, kept, FRAMES - kept)
    assert [when for _, when, _ in frames_of(out)] == [when for _, when, _ in frames_of(clip)]
    for (before, _, _), (after, _, _) in zip(frames_of(clip), frames_of(out), strict=True):
        np.testing.assert_array_equal(after, before.repeat(2, 0).repeat(2, 1))
    assert not (out.parent / ".clip.mkv.parts").exists()

    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        restore_video(clip, out, Doubling(stop_at=12), options)
    (out.parent / ".clip.mkv.parts" / "manifest.json").write_text('{"segments": [1, 2]')  # cut short
    model = Doubling()
    assert restore_video(clip, out, model, options).resumed == 0 and model.calls == FRAMES


def test_ranges_restored_apart_and_joined_are_the_video_a_single_run_writes(tmp_path):
    """``video.ranges`` (the Ray pool's actors restore a video's ranges at once): a 24-frame clip in three ranges,
    the last to the end; one stopped mid-way is taken up again from its last finished segment, in whichever order
    the ranges come; joined (``segments.join_ranges``), they are every frame at its time and the input's sound."""
    from restorecli.video.ranges import plan_ranges, restore_range
    from restorecli.video.restore import VideoOptions, open_video
    from restorecli.video.segments import join_ranges, range_output

    clip = make_video(tmp_path / "clip.mkv", variable=True, frames=FRAMES)
    out = tmp_path / "out" / "clip.mkv"
    # a segment at each frame (a segment ends once a frame comes after its time), however fast the machine
    options = VideoOptions(codec="ffv1", segment_seconds=1e-9, settings={"model": "doubling"})
    spans = plan_ranges(FRAMES, 10)
    assert [(span.first, span.stop) for span in spans] == [(0, 10), (10, 20), (20, None)]

    class Stopping(Doubling):
        """Ctrl-C at the range's sixth frame, once the four segments before the fifth frame's are kept (frames wait
        for the writer in a queue, which a stop empties)."""

        def restore_array(self, color, alpha=None, options=None):
            if self.calls == 5:
                wait_until(lambda: covered(range_output(out, 10)) == 4, what="four segments kept")
                raise KeyboardInterrupt
            return super().restore_array(color, alpha, options)

    with pytest.raises(KeyboardInterrupt):
        restore_range(clip, out, spans[1], Stopping(), options)
    model = Doubling()
    done = [restore_range(clip, out, span, model, options) for span in reversed(spans)]
    kept = done[1].resumed
    assert kept == 4 and model.calls == FRAMES - kept  # the finished segments are not restored again
    assert [result.frames for result in done] == [4, 10, 10] and not out.exists()
    with open_video(clip) as video:
        assert join_ranges(out, [span.first for span in spans], video) == (128, 96)
    assert [when for _, when, _ in frames_of(out)] == [when for _, when, _ in frames_of(clip)]
    for (before, _, _), (after, _, _) in zip(frames_of(clip), frames_of(out), strict=True):
        np.testing.assert_array_equal(after, before.repeat(2, 0).repeat(2, 1))
    assert packets_of(out, "audio") == packets_of(clip, "audio")
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mkv"]  # the parts folder removed


def test_ranges_that_miss_frames_are_not_joined(tmp_path):
    from restorecli.video.formats import VideoEncodeError
    from restorecli.video.ranges import plan_ranges, restore_range
    from restorecli.video.restore import VideoOptions, open_video
    from restorecli.video.segments import join_ranges

    clip = make_video(tmp_path / "clip.mkv", frames=FRAMES)
    out = tmp_path / "out" / "clip.mkv"
    spans = plan_ranges(FRAMES, 12)
    restore_range(clip, out, spans[1], Doubling(), VideoOptions(codec="ffv1", segment_seconds=1e-9))
    with open_video(clip) as video, pytest.raises(VideoEncodeError, match=r"clip.mkv: the restored ranges miss "
                                                                         r"frames 0 to 11"):
        join_ranges(out, [span.first for span in spans], video)
    assert not out.exists()


def test_a_range_is_bounded_by_max_video_frames_as_a_whole_video_is(tmp_path):
    """A range decodes the frames before it to count them, so the last range (to the end, whatever the container
    says) meets ``--max-video-frames`` at the same frame a whole video's run does; a range ending before it does not."""
    from restorecli.video.ranges import FrameSpan, restore_range
    from restorecli.video.read import TooManyFrames
    from restorecli.video.restore import VideoOptions

    clip = make_video(tmp_path / "clip.mkv", frames=FRAMES)
    out = tmp_path / "out" / "clip.mkv"
    options = VideoOptions(codec="ffv1", segment_seconds=1e-9, max_frames=FRAMES - 4)
    assert restore_range(clip, out, FrameSpan(0, 10), Doubling(), options).frames == 10
    with pytest.raises(TooManyFrames, match=rf"clip.mkv: more than {FRAMES - 4} frames, over the limit"):
        restore_range(clip, out, FrameSpan(10, None), Doubling(), options)
