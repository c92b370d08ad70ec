"""Videos through the Ray pool (``restorecli worker --ray``, issue 33): a video in a job is restored whole by one
actor, from the file the driver names, into a hidden file the driver renames into place once the actor is done;
its frames, times and sound are those the local worker writes. On the module's local Ray instance (2 CPUs), with
a tiny 2x model and a 12-frame 64x48 clip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'restorecli[ray]'")
pytest.importorskip("av", reason="PyAV (restorecli[video]) is not installed: the video tests need it")

import ray_harness  # noqa: E402
from conftest import TEST_INPUTS, psnr  # noqa: E402
from helpers.cli import invoke as cli  # noqa: E402
from helpers.processes import alive  # noqa: E402
from helpers.wait import wait_until  # noqa: E402
from test_ray import assert_clean, instances, joined, local_ray, start_pool  # noqa: E402,F401  (fixtures)
from test_video import frames_of, make_video, packets_of  # noqa: E402

FRAMES = 12


def submit_clip_and_photo(queue: Path, model: Path, folder: Path) -> str:
    """One job of a 12-frame clip and a photo, as ``submit`` queues it; its id."""
    folder.mkdir(parents=True)
    clip = make_video(folder / "clip.mp4", frames=FRAMES)
    shutil.copy(TEST_INPUTS / "rocket.jpg", folder / "rocket.jpg")
    result = cli("submit", clip, folder / "rocket.jpg", "--queue", queue, "--model", model, "--precision", "fp32",
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["job_id"]


LONG = 48  # frames of the clip split into ranges: two of RANGE frames


RANGE = 24


def submit_clip(queue: Path, model: Path, clip: Path, *flags: str) -> str:
    result = cli("submit", clip, "--queue", queue, "--model", model, "--precision", "fp32", "--device", "cpu",
                 *flags, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["job_id"]


def assert_like_the_local_worker(ours: Path, theirs: Path, source: Path, frames: int) -> None:
    """``ours`` has the frames of ``theirs`` (the local worker's), each within the codec's loss of its own and
    further from the next frame's; the same frame count and times; and ``source``'s audio packets, unchanged."""
    restored, expected = frames_of(ours), frames_of(theirs)
    assert len(restored) == len(expected) == frames and restored[0][0].shape == (96, 128, 3)
    assert [when for _, when, _ in restored] == [when for _, when, _ in expected] == [
        when for _, when, _ in frames_of(source)]
    for i, ((ours_frame, _, _), (theirs_frame, _, _)) in enumerate(zip(restored, expected)):
        alike = psnr(ours_frame, theirs_frame)
        assert alike > 30 and alike > psnr(ours_frame, expected[(i + 1) % frames][0]) + 6, (i, alike)
    assert packets_of(ours, "audio") == packets_of(source, "audio")


def local_output(tmp_path: Path, model: Path, clip: Path, *flags: str) -> Path:
    """The output of ``clip`` restored by the local worker (``worker --once``) in a queue of its own."""
    queue = tmp_path / "local"
    job_id = submit_clip(queue, model, clip, *flags)
    worked = cli("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    [result] = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    return queue / result["output"]


def test_the_frames_done_of_a_video_in_ranges_are_what_its_actors_tell(tmp_path):
    """The driver's count for status (``distributed.videos``): the ranges that are in, and those in hand as their
    actors tell them (``actor.tell_frames``: frames done of those left when the actor took the range up)."""
    from restorecli.distributed.actor import tell_frames
    from restorecli.distributed.videos import VideoRanges
    from restorecli.plan import InputItem
    from restorecli.video.ranges import plan_ranges
    from restorecli.video.restore import VideoProgress

    ranges = VideoRanges(InputItem("clip.mp4", Path("clip.mp4")), tmp_path / "clip.mp4", 50, plan_ranges(50, 20),
                         tmp_path, 0.0)
    assert [(span.first, span.stop) for span in ranges.spans] == [(0, 20), (20, 40), (40, None)]
    assert ranges.frames_done() == 0 and not ranges.complete
    ranges.done[0] = {"frames": 20}
    tell_frames(str(ranges.progress_file(20)))(VideoProgress(3, 16, 10.0))  # 4 kept by a try its actor died in
    tell_frames(str(ranges.progress_file(40)))(VideoProgress(5, 10, 10.0))
    assert ranges.frames_done() == 20 + 7 + 5
    ranges.done[20], ranges.done[40] = {"frames": 20}, {"frames": 10}
    assert ranges.frames_done() == 50 and ranges.complete


@pytest.mark.slow  # 30-40 s on a busy 2-core machine (two actors, and the local worker's run): nox -s slow runs it;
# its fast siblings: the test above, and test_video_resume's test_ranges_restored_apart_and_joined_...
def test_a_long_video_s_ranges_are_restored_by_two_actors_at_once_and_status_names_its_frames(tmp_path, local_ray,
                                                                                            make_model):
    """A 48-frame clip in ranges of 24 frames: both actors restore one at once (each held at its fourth frame,
    the job's status says the six frames done of 48, as ``status JOB --json`` reads it), and the driver joins them
    into the video the local worker writes."""
    model = make_model(2, "compact", "safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=LONG)
    queue = tmp_path / "ray"
    job_id = submit_clip(queue, model, clip)
    hold = local_ray.harness / "hold"
    hold.write_text("3")
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=2, actor_cpus=0.5, actor_images=1, range_frames=RANGE)
    try:
        wait_until(lambda: len({p.name.split("-")[1] for p in ray_harness.held(local_ray.harness)}) == 2,
                   what="both actors to hold a range each")

        def current() -> str:
            return json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)["current"] or ""

        told = wait_until(lambda: current().endswith(f"clip.mp4 (frame 6 of {LONG})") and current(),
                          what="the status to name the frames done", detail=current)
        assert told == f"{clip} (frame 6 of {LONG})"
    finally:
        hold.unlink(missing_ok=True)
    report = joined(thread, done, stop)

    assert report.jobs == [(job_id, "completed")] and report.images == 1
    [result] = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    assert result["status"] == "ok" and result["in_size"] == [64, 48] and result["out_size"] == [128, 96]
    assert_like_the_local_worker(queue / result["output"], local_output(tmp_path, model, clip), clip, LONG)
    assert_clean(queue)
    assert not list(queue.rglob(".ray-*")) and not list(queue.rglob("*.parts"))


def test_a_video_is_restored_whole_by_one_actor_as_the_local_worker_restores_it(tmp_path, local_ray, make_model):
    model = make_model(2, "compact", "safetensors")
    local_queue, ray_queue = tmp_path / "local", tmp_path / "ray"
    local_id = submit_clip_and_photo(local_queue, model, tmp_path / "in-local")
    ray_id = submit_clip_and_photo(ray_queue, model, tmp_path / "in-ray")
    worked = cli("worker", "--queue", local_queue, "--once")
    assert worked.exit_code == 0, worked.stderr

    stop = threading.Event()
    thread, done = start_pool(ray_queue, stop, actors=2, actor_cpus=0.5)
    report = joined(thread, done, stop)

    assert report.jobs == [(ray_id, "completed")] and report.images == 2
    results = {Path(r["original_filename"]).name: r
               for r in json.loads((ray_queue / "jobs" / ray_id / "result.json").read_text())["results"]}
    clip = results["clip.mp4"]
    assert clip["status"] == "ok" and Path(clip["output"]).name == "clip.mp4", clip
    assert clip["in_size"] == [64, 48] and clip["out_size"] == [128, 96]
    local = {Path(r["original_filename"]).name: r
             for r in json.loads((local_queue / "jobs" / local_id / "result.json").read_text())["results"]}
    ours, theirs = ray_queue / clip["output"], local_queue / local["clip.mp4"]["output"]
    restored, expected = frames_of(ours), frames_of(theirs)
    assert len(restored) == FRAMES and restored[0][0].shape == (96, 128, 3)
    assert [when for _, when, _ in restored] == [when for _, when, _ in expected]
    # The same frames through the same encoder, but not always the same bytes: an actor's torch runs on its own
    # thread count (Ray's CPU share), whose fp32 sums can differ in the last bit and round a pixel the other way,
    # and x264 then decides differently. So each frame is within the codec's loss of the local worker's, and
    # further from the next frame's (the frames move).
    for i, ((ours_frame, _, _), (theirs_frame, _, _)) in enumerate(zip(restored, expected)):
        alike = psnr(ours_frame, theirs_frame)
        assert alike > 30 and alike > psnr(ours_frame, expected[(i + 1) % FRAMES][0]) + 6, (i, alike)
    assert packets_of(ours, "audio") == packets_of(tmp_path / "in-ray" / "clip.mp4", "audio")
    assert (ray_queue / results["rocket.jpg"]["output"]).read_bytes() == (
        local_queue / local["rocket.jpg"]["output"]).read_bytes()
    assert_clean(ray_queue)
    assert not list(ray_queue.rglob(".ray-*"))  # the actor's file was renamed into place


@pytest.mark.slow  # 18 s on a busy 2-core machine (Ray restarts the actor): nox -s slow runs it
def test_an_actor_killed_mid_video_is_restarted_and_the_video_restored_on_its_next_try(tmp_path, local_ray,
                                                                                       make_model):
    """The actor restoring a video is SIGKILLed at its first frame's model run: Ray restarts it, the video goes
    round again, and the job completes with the whole video under its name and no file of the killed try left."""
    model = make_model(2, "compact", "safetensors")
    queue = tmp_path / "queue"
    job_id = submit_clip_and_photo(queue, model, tmp_path / "in")
    hold = local_ray.harness / "hold"
    hold.touch()  # the model waits at its first run: the video's, which the job lists first
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=1, actor_cpus=0.5, actor_images=1)
    try:
        victim = wait_until(lambda: ray_harness.held(local_ray.harness), what="the video's first frame to wait")
        os.kill(int(victim[0].name.split("-")[1]), signal.SIGKILL)
    finally:
        hold.unlink(missing_ok=True)
    report = joined(thread, done, stop)

    assert report.retried == 1 and report.jobs == [(job_id, "completed")]
    results = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "ok"], results
    restored = frames_of(queue / results[0]["output"])
    assert len(restored) == FRAMES and restored[0][0].shape == (96, 128, 3)
    assert_clean(queue)
    assert not list(queue.rglob(".ray-*"))


@pytest.mark.slow  # 30-40 s on a busy 2-core machine (Ray restarts the actor): nox -s slow runs it; its fast sibling:
# test_video_resume's test_ranges_restored_apart_and_joined_are_the_video_a_single_run_writes
def test_an_actor_killed_mid_range_leaves_its_finished_segments_to_whichever_actor_takes_the_range_up(
        tmp_path, local_ray, make_model):
    """Both actors hold a range each at their sixth frame; one is SIGKILLed: its range goes round again and goes on
    from the segments the killed actor finished (a segment a frame or so), so the model restores every frame once
    but the few the killed actor had not kept; the video is the local worker's."""
    model = make_model(2, "compact", "safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=LONG)
    queue = tmp_path / "ray"
    job_id = submit_clip(queue, model, clip, "--segment-seconds", "0.001")
    hold = local_ray.harness / "hold"
    hold.write_text("5")
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=2, actor_cpus=0.5, actor_images=1, range_frames=RANGE)
    try:
        held = wait_until(lambda: len(found := {p.name.split("-")[1] for p in ray_harness.held(local_ray.harness)})
                          == 2 and sorted(found), what="both actors to hold a range each")
        victim = int(held[0])

        def victims() -> list[Path]:  # the manifest of the range the victim restores, once it has kept a segment
            return [m for m in queue.glob("jobs/*/work/*/.clip.mp4.parts/.range-*.parts/manifest.json")
                    if json.loads(m.read_text())["writer"].startswith(f"{victim}@")]

        wait_until(victims, what="the victim's first segment kept")
        hold.write_text("0")  # from now on every process's first run waits too: the actor Ray restarts keeps nothing
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), what="the victim gone")
        [manifest] = victims()  # what the dead actor kept, as the range's next try will find it
        kept = sum(segment["frames"] for segment in json.loads(manifest.read_text())["segments"])
        ran = ray_harness.runs(local_ray.harness)[victim]
    finally:
        hold.unlink(missing_ok=True)
    report = joined(thread, done, stop)

    assert report.retried == 1 and report.jobs == [(job_id, "completed")]
    assert 1 <= kept <= 5 and ran == 6  # its first segment kept, its sixth frame in the model
    assert sum(ray_harness.runs(local_ray.harness).values()) == LONG + ran - kept  # kept segments not redone
    [result] = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    assert result["status"] == "ok", result
    assert_like_the_local_worker(queue / result["output"],
                                 local_output(tmp_path, model, clip, "--segment-seconds", "0.001"), clip, LONG)
    assert_clean(queue)


@pytest.mark.slow  # 40-60 s on a busy 2-core machine (two pools, one after the other): nox -s slow runs it; its fast
# sibling: test_video_resume's test_ranges_restored_apart_and_joined_are_the_video_a_single_run_writes
def test_a_ray_driver_stopped_mid_video_leaves_its_finished_ranges_to_the_next_driver(tmp_path, local_ray,
                                                                                      make_model):
    """A 48-frame clip in four ranges of 12 frames over two actors: the driver is stopped while each actor holds a
    range; it lets them finish those two ranges, sends no other, and gives the job back. The next driver restores
    only the two ranges left (24 frames through the model), and joins all four into the whole video."""
    model = make_model(2, "compact", "safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=LONG)
    queue = tmp_path / "ray"
    job_id = submit_clip(queue, model, clip)
    hold = local_ray.harness / "hold"
    hold.write_text("3")
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=2, actor_cpus=0.5, actor_images=1, range_frames=LONG // 4)
    try:
        wait_until(lambda: len({p.name.split("-")[1] for p in ray_harness.held(local_ray.harness)}) == 2,
                   what="both actors to hold a range each")
        stop.set()
    finally:
        hold.unlink(missing_ok=True)
    first = joined(thread, done, stop)
    assert first.jobs == [(job_id, "released")] and first.retried == 0
    ran = ray_harness.runs(local_ray.harness)
    assert sum(ran.values()) == LONG // 2  # the two ranges in hand, whole
    # the ranges' manifests name their writers: the next pool's actors go on from them once these are gone
    wait_until(lambda: not any(alive(pid) for pid in ran), what="the first pool's actors gone")
    for counted in local_ray.harness.glob("runs-*"):
        counted.unlink()

    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=2, actor_cpus=0.5, actor_images=1, range_frames=LONG // 4)
    second = joined(thread, done, stop)

    assert second.jobs == [(job_id, "completed")] and second.images == 1
    assert sum(ray_harness.runs(local_ray.harness).values()) == LONG // 2  # only the two ranges left
    [result] = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    assert result["status"] == "ok" and result["out_size"] == [128, 96], result
    restored = frames_of(queue / result["output"])
    assert [when for _, when, _ in restored] == [when for _, when, _ in frames_of(clip)]
    assert packets_of(queue / result["output"], "audio") == packets_of(clip, "audio")
    assert_clean(queue)
    assert not list(queue.rglob("*.parts"))


def test_an_actor_restores_an_animation_in_its_own_format_as_the_local_worker_does(tmp_path, make_model):
    """The pool's actor (``RestoreActor``, called in this process here) takes an animated GIF as a local batch
    does: every frame restored, written back as a GIF with its frame count, durations and loop count; its frames
    told for status as they are done."""
    from restorecli.distributed.actor import RestoreActor, VideoTask
    from restorecli.distributed.videos import read_progress
    from restorecli.options import RestoreOptions
    from test_animated import make_animation, shown

    model = make_model(2, "compact", "safetensors")
    source = make_animation(tmp_path / "anim.gif", loop=3)
    local = cli("restore", source, "-o", tmp_path / "local", "--model", model, "--device", "cpu", "--precision",
                "fp32")
    assert local.exit_code == 0, local.stderr
    options = RestoreOptions(model=str(model), device="cpu", precision="fp32", output_dir=str(tmp_path / "ray"))
    (tmp_path / "ray").mkdir()
    ours = tmp_path / "ray" / ".ray-anim.gif"
    outcome = RestoreActor().restore_video(VideoTask(str(source), str(ours), options, str(tmp_path / "told.json")))
    assert outcome.error is None and outcome.failure is None and outcome.setup is None, outcome
    assert outcome.in_size == (24, 16) and outcome.out_size == (48, 32)
    assert outcome.video["frames"] == 4 and outcome.video["loop"] == 3 and outcome.video["codec"] == "gif"
    assert read_progress(tmp_path / "told.json") == (4, 4)
    fmt, count, durations, loop, pictures = shown(ours)
    theirs = shown(tmp_path / "local" / "anim.gif")
    assert (fmt, count, durations, loop) == theirs[:4] == ("GIF", 4, [100.0, 200.0, 50.0, 300.0], 3)
    for i, (picture, expected) in enumerate(zip(pictures, theirs[4])):  # the same frames, within the palette's loss
        alike = psnr(picture[..., :3], expected[..., :3])
        assert alike > 30 and alike > psnr(picture[..., :3], theirs[4][(i + 1) % 4][..., :3]) + 6, (i, alike)


@pytest.mark.slow  # 15-25 s on a busy 2-core machine (a pool to start): nox -s slow runs it; its fast sibling is the
# test above, the actor called in this process
def test_a_queued_animation_goes_through_the_pool_in_its_own_format(tmp_path, local_ray, make_model):
    """An animated WebP through the pool: restored frame by frame by an actor (the job's status naming the frame in
    hand, as ``status JOB --json`` reads it), written back as an animated WebP with its durations and loop count."""
    from test_animated import make_animation, shown

    model = make_model(2, "compact", "safetensors")
    (tmp_path / "in").mkdir()
    source = make_animation(tmp_path / "in" / "anim.webp", loop=5)
    queue = tmp_path / "ray"
    job_id = submit_clip(queue, model, source)
    hold = local_ray.harness / "hold"
    hold.write_text("1")  # the actor's second frame waits: status names the first one done
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=1, actor_cpus=0.5)
    try:
        def current() -> str:
            return json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)["current"] or ""

        wait_until(lambda: current() == f"{source} (frame 1 of 4)", what="the status to name the frame done",
                   detail=current)
    finally:
        hold.unlink(missing_ok=True)
    report = joined(thread, done, stop)

    assert report.jobs == [(job_id, "completed")] and report.images == 1
    [result] = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    assert result["status"] == "ok" and Path(result["output"]).name == "anim.webp", result
    assert result["out_size"] == [48, 32]
    assert shown(queue / result["output"])[:4] == ("WEBP", 4, [100.0, 200.0, 50.0, 300.0], 5)
    assert_clean(queue)
    assert not list(queue.rglob(".ray-*"))
