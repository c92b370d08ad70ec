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
