"""Videos through the HTTP API (issue 33): `POST /enhance` takes a video as it takes an image, a worker restores it
in its container, and its result is downloaded whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_serve import leftovers, make_config, small_png, upload, work
from test_video import (FILM_FRAMES, FRAMES, frames_of, hostile_videos, make_superframe_webm, make_thumbnail_first,
                        make_video, packets_of)

av = pytest.importorskip("av", reason="PyAV (restorecli[video]) is not installed: the video tests need it")


def test_an_uploaded_video_is_restored_in_its_container_and_served(tmp_path, make_model, monkeypatch):
    from fastapi.testclient import TestClient

    from restorecli.server.app import create_app

    monkeypatch.delenv("API_KEY", raising=False)
    clip = make_video(tmp_path / "clip.mp4")
    config = make_config(tmp_path, str(make_model(2)))
    with TestClient(create_app(config), base_url="http://localhost") as client:
        accepted = upload(client, ("holiday clip.mp4", clip.read_bytes()))
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        work(config)
        status = client.get(f"/status/{job_id}").json()
        assert status["status"] == "completed", status
        [result] = status["results"]
        assert result["status"] == "ok" and result["original_filename"] == "holiday clip.mp4"
        assert result["in_size"] == [64, 48] and result["out_size"] == [128, 96]
        got = client.get(result["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    out = tmp_path / "got.mp4"
    out.write_bytes(got.content)
    restored = frames_of(out)
    assert len(restored) == FRAMES and restored[0][0].shape == (96, 128, 3)
    assert [when for _, when, _ in restored] == [when for _, when, _ in frames_of(clip)]
    assert packets_of(out, "audio") == packets_of(clip, "audio")


def test_a_video_s_frames_done_are_in_its_status_and_each_change_is_an_event(tmp_path, make_model, monkeypatch):
    """While a worker restores a video, the status document's entry for it says its frames done of its total (what
    the worker's ``working_on_frames`` records, under the name it was uploaded as), the other entries none, and the
    event stream sends a new event when that count moves, though nothing else changed."""
    from fastapi.testclient import TestClient

    from restorecli.jobs.run import JobRun, SetAside
    from restorecli.jobs.store import JobStore
    from restorecli.jobs.worker import WorkerOptions, WorkerReport
    from restorecli.server.app import create_app

    monkeypatch.delenv("API_KEY", raising=False)
    clip = make_video(tmp_path / "clip.mp4")
    config = make_config(tmp_path, str(make_model(2)))
    with TestClient(create_app(config), base_url="http://localhost") as client:
        job_id = upload(client, ("holiday clip.mp4", clip.read_bytes()), ("b.png", small_png())).json()["job_id"]
        store = JobStore(config.queue)
        run = JobRun.claim(store, WorkerOptions(lease=60.0), "test:1", SetAside(60.0), WorkerReport(),
                           lambda *_: None)
        assert run is not None and run.job_id == job_id
        run.working_on_frames("holiday clip.mp4", 12, FRAMES)
        status = client.get(f"/status/{job_id}").json()
        assert [(r["status"], r["frames"]) for r in status["results"]] == [
            ("processing", {"done": 12, "total": FRAMES}), ("pending", None)]
        run.working_on_frames("holiday clip.mp4", FRAMES, FRAMES)  # the last frame is told at once
        looks = [status, client.get(f"/status/{job_id}").json()]
        told = [event["results"][0]["frames"] for event in _events_over(looks, monkeypatch)]
        assert told == [{"done": 12, "total": FRAMES}, {"done": FRAMES, "total": FRAMES}]
        run.working_on("b.png", starting="b.png")  # the next file in hand: the video's count is gone
        assert all(r["frames"] is None for r in client.get(f"/status/{job_id}").json()["results"])
        run.settle("released")
        store.close()


def _events_over(looks: list[dict], monkeypatch) -> list[dict]:
    """The documents ``GET /events`` sends for a job whose status documents are ``looks``, one a look (the stream
    ends here as when its client goes away, once every one was looked at)."""
    import json

    import anyio

    from restorecli.server.routes import events

    monkeypatch.setattr(events, "EVENT_POLL", 0.0)
    left = list(looks[1:])

    class Service:
        def latest(self, job_id: str) -> dict:
            return left.pop(0)

    class Request:
        async def is_disconnected(self) -> bool:
            return not left

    async def stream() -> list[str]:
        return [chunk async for chunk in events._event_stream(Service(), Request(), looks[0])]

    return [json.loads(chunk.split("data: ", 1)[1]) for chunk in anyio.run(stream) if chunk.startswith("event: ")]


# The live server's limits: a 24-frame clip (1 s, about 13 KB) is over the image limit and within the video's
IMAGE_MB, VIDEO_MB, VIDEO_SECONDS = 0.005, 0.04, 1.5


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One ``restorecli serve`` with a worker, a tiny 2x model and small limits, for the tests that change nothing
    about it."""
    from conftest import tiny_compact_state
    from live_server import LiveServer
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("video-serve")
    model = folder / "tiny-x2.safetensors"
    save_file(tiny_compact_state(2), str(model))
    with LiveServer(folder, "--model", str(model), "--max-file-mb", str(IMAGE_MB), "--max-video-mb", str(VIDEO_MB),
                    "--max-video-seconds", str(VIDEO_SECONDS), env={"API_KEY": None}) as server:
        yield server


def test_a_live_server_limits_videos_by_their_own_size_and_length_and_says_so(live, tmp_path):
    """``--max-video-mb`` is a video's upload limit (413), apart from the image limit; ``--max-video-seconds`` is
    read from the container's header (422); each refusal names the file and the limit, leaves nothing behind,
    and ``/health``, the OpenAPI document and serve's start-up lines state the limits."""
    clips = {frames: make_video(tmp_path / f"clip{frames}.mp4", frames=frames).read_bytes() for frames in (24, 48, 96)}
    image_mb, video_mb = (f"{int(mb * 1048576) / 1048576:g}" for mb in (IMAGE_MB, VIDEO_MB))  # as bytes, then MB
    assert f"(a video {video_mb} MB, 1.5 seconds, 90 frames)" in live.output()
    assert len(clips[24]) > IMAGE_MB * 1048576 and len(clips[96]) > VIDEO_MB * 1048576 > len(clips[48])
    with live.client() as client:
        assert client.get("/health").json()["limits"] == pytest.approx(
            {"max_file_mb": IMAGE_MB, "max_files": 20, "max_video_mb": VIDEO_MB, "max_video_seconds": VIDEO_SECONDS,
             "max_video_frames": 90}, rel=1e-3)  # without --max-video-frames: the duration limit at 60 fps
        files = client.get("/openapi.json").json()["paths"]["/enhance"]["post"]["requestBody"]["content"][
            "multipart/form-data"]["schema"]["properties"]["files"]["description"]
        assert f"an image at most {image_mb} MB" in files and f"at most {video_mb} MB and 1.5 seconds long" in files
        assert "of at most 90 frames" in files
        accepted = upload(client, ("one second.mp4", clips[24]))  # over the image limit, within the video's
        assert accepted.status_code == 202, accepted.text
        refusals = [
            (upload(client, ("four seconds.mp4", clips[96])), 413,
             f"four seconds.mp4: over the limit of {video_mb} MB a video"),
            (upload(client, ("long.mp4", clips[48])), 422,
             "long.mp4: 2.0 seconds long, over the limit of 1.5 seconds a video"),
            (upload(client, ("clip.png", clips[24])), 413, f"clip.png: over the limit of {image_mb} MB a file"),
            (upload(client, ("picture.mp4", small_png(64, 48))), 413,  # an image named as a video
             f"picture.mp4: over the limit of {image_mb} MB a file"),
        ]
        for response, status, detail in refusals:
            assert (response.status_code, response.json()) == (status, {"detail": detail})
        assert live.wait_for(accepted.json()["job_id"])["status"] == "completed"
        assert client.get("/health").status_code == 200 and live.process.poll() is None
    assert not list((live.queue / "incoming").iterdir())


def test_restore_server_uploads_a_video_and_downloads_it_restored_in_its_container(live, tmp_path):
    """``restore --server URL clip.mp4``: a live server restores the video beside an image, and the client writes
    it under its planned name once PyAV finds it whole (frame size, frame count); the sound is kept."""
    from remote_cli import lines, remote

    inputs = tmp_path / "in"
    inputs.mkdir()
    clip = make_video(inputs / "clip.mp4")
    (inputs / "still.png").write_bytes(small_png(24, 16))
    out = tmp_path / "out"
    result = remote(inputs, "-o", out, "--server", live.url, "--json")  # the video is over the image limit
    assert result.returncode == 0, result.stderr.decode()
    done = {Path(line["input"]).name: line for line in lines(result) if line.get("type") != "summary"}
    assert done["clip.mp4"]["status"] == "ok" and done["clip.mp4"]["output"] == str(out / "clip.mp4")
    assert done["clip.mp4"]["out_size"] == [128, 96] and done["still.png"]["out_size"] == [48, 32]
    restored = frames_of(out / "clip.mp4")
    assert len(restored) == FRAMES and restored[0][0].shape == (96, 128, 3)
    assert packets_of(out / "clip.mp4", "audio") == packets_of(clip, "audio")


@pytest.mark.parametrize(("served", "said"), [
    ("fewer frames", "a video of 12 frames, not the 24 of its input"),
    ("another size", "a video of 64x48, not the 128x96 its status announced"),
    ("an HTML page", "does not decode as a video"),
    ("a list of the client's files", "does not decode as a video"),
])
def test_a_downloaded_video_that_is_not_the_one_announced_is_refused(tmp_path, served, said):
    """A (fake) server that sends a video cut short, of another size, no video at all, or a list naming a file of
    the client's (FFmpeg's concat demuxer would read the input itself, in the client's folder, as the video
    announced): the client says so for that video and writes nothing under its name."""
    from hostile.test_client import JOB, KEY, FakeServer, nothing_written, only_error, status_document
    from remote_cli import remote

    clip = make_video(tmp_path / "clip.mp4")
    sent = {"fewer frames": make_video(tmp_path / "short.mp4", frames=12).read_bytes(),
            "another size": clip.read_bytes(), "an HTML page": b"<html><body>Sign in</body></html>",
            "a list of the client's files": b"ffconcat version 1.0\nfile clip.mp4\n"}[served]
    size = [64, 48] if served in ("fewer frames", "a list of the client's files") else [128, 96]
    result_path = f"/processed/{JOB}/clip.mp4"
    out = tmp_path / "out"
    with FakeServer() as fake:
        fake.routes[("GET", f"/status/{JOB}")] = lambda handler: handler.send_json(status_document(
            original_filename="clip.mp4", url=result_path, in_size=[64, 48], out_size=size))
        fake.routes[("GET", result_path)] = lambda handler: handler.send(200, sent, "video/mp4")
        result = remote(clip, "-o", out, "--server", fake.url, "--json", key_env=KEY, timeout=120, cwd=tmp_path)
    error = only_error(result)
    assert error.startswith(f"{clip}: its result could not be downloaded: the server sent ") and said in error, error
    assert nothing_written(out)


def test_a_video_over_the_server_s_video_limit_is_refused_before_any_upload(tmp_path):
    """The client reads ``max_video_mb`` in ``/health``: a video over it is that video's error, and nothing is
    sent; the image limit does not apply to it."""
    from hostile.test_client import KEY, FakeServer, nothing_written, only_error
    from remote_cli import remote

    clip = make_video(tmp_path / "clip.mp4")  # about 13 KB
    out = tmp_path / "out"
    with FakeServer() as fake:
        fake.routes[("GET", "/health")] = lambda handler: handler.send_json({
            "status": "ok", "limits": {"max_files": 20, "max_file_mb": 10, "max_video_mb": 0.01}})
        result = remote(clip, "-o", out, "--server", fake.url, "--json", key_env=KEY, timeout=120)
        assert "/enhance" not in fake.paths()
    error = only_error(result)
    limit = f"{int(0.01 * 1048576) / 1048576:g}"  # the limit in bytes, said in MB
    assert error == f"{clip}: {clip.stat().st_size:,} bytes is over the server's limit of {limit} MB a video", error
    assert nothing_written(out)


def make_fast_clip(path: Path, frames: int, fps: int) -> Path:
    """A ``frames``-frame 16x16 H.264 clip at ``fps`` frames a second, no sound: many frames in few seconds."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), i % 256, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_video_over_the_frame_limit_is_refused_at_upload_and_one_whose_packets_lie_by_its_worker(
        tmp_path, make_model, monkeypatch):
    """``serve --max-video-frames``: a 1000 fps clip within the duration limit but over the frame limit is refused
    with 422 naming it, its frames and the limit, and nothing is kept; a file whose packets hold twice as many
    frames as they count passes the upload and is stopped by the worker, which counts the decoded frames: that
    file's error, no output for it, and the job's other file restored; so is an animated GIF of many 1x1 frames
    (an image by its name, within the image limit, which no upload check counts). ``/health`` states the limit."""
    from PIL import Image

    from fastapi.testclient import TestClient

    from restorecli.cli.options import DEFAULTS
    from restorecli.server.app import create_app
    from restorecli.server.config import load_config

    monkeypatch.delenv("API_KEY", raising=False)
    config = load_config({**DEFAULTS, "model": str(make_model(2)), "max_video_frames": 15, "precision": "fp32",
                          "backend": "torch"},
                         queue=str(tmp_path / "queue"), dotenv=tmp_path / "none.env")
    fast = make_fast_clip(tmp_path / "fast.mp4", frames=40, fps=1000)  # 0.04 s
    lying = make_superframe_webm(tmp_path / "lying.webm")  # 10 packets, 20 frames
    pictures = [Image.new("RGB", (1, 1), (i * 6, 0, 0)) for i in range(40)]
    pictures[0].save(tmp_path / "many.gif", save_all=True, append_images=pictures[1:], duration=20, loop=0)
    with TestClient(create_app(config), base_url="http://localhost") as client:
        assert client.get("/health").json()["limits"]["max_video_frames"] == 15
        refused = upload(client, ("fast clip.mp4", fast.read_bytes()))
        assert (refused.status_code, refused.json()) == (
            422, {"detail": "fast clip.mp4: 40 frames, over the limit of 15 frames a video"})
        assert leftovers(config) == []
        accepted = upload(client, ("lying.webm", lying.read_bytes()), ("still.png", small_png(24, 16)),
                          ("many.gif", (tmp_path / "many.gif").read_bytes()))
        assert accepted.status_code == 202, accepted.text
        work(config)
        status = client.get(f"/status/{accepted.json()['job_id']}").json()
    assert status["status"] == "completed", status
    video, still, animation = status["results"]
    assert still["status"] == "ok" and still["out_size"] == [48, 32]
    assert (video["status"], video["url"]) == ("error", None)
    assert video["error"] == "lying.webm: more than 15 frames, over the limit of 15 frames a video " \
                             "(--max-video-frames)"
    assert animation["error"] == "many.gif: 40 frames, over the limit of 15 frames an animation (--max-video-frames)"
    assert not [path for path in leftovers(config) if path.endswith((".webm", ".gif")) and "/inputs/" not in path]


def test_hostile_videos_through_the_server_end_as_their_own_errors_and_the_server_stays_up(
        tmp_path, make_model, monkeypatch):
    """Uploaded in one job: an ffconcat list naming itself as it is stored (001.mp4), a header stating 60000x60000,
    frames that grow mid-stream, a video stream without frames, a Matroska file cut short, and a file whose
    thumbnail comes before its film. Each broken one is that file's error naming it (never a crash or a hang of the
    worker or the server; the list is not followed), the film is restored whole; an upload whose body is cut
    inside its video is refused with 400 and leaves nothing; the server answers after all of it."""
    from fastapi.testclient import TestClient

    from restorecli.cli.options import DEFAULTS
    from restorecli.server.app import create_app
    from restorecli.server.config import load_config

    monkeypatch.delenv("API_KEY", raising=False)
    folder = tmp_path / "hostile"
    folder.mkdir()
    said = hostile_videos(folder, tmp_path / "scratch")
    whole = make_video(tmp_path / "whole.mkv", frames=12, audio=None).read_bytes()
    said["cut.mkv"] = "cut.mkv: truncated or damaged: its frames end at"
    sent = [("list.mp4", b"ffconcat version 1.0\nfile 001.mp4\n")]  # the upload's first file is stored as 001
    sent += [(name, (folder / name).read_bytes()) for name in said if name != "cut.mkv"]
    said["list.mp4"] = "list.mp4: not a readable video (Invalid argument: a header FFmpeg refuses, or a list of " \
                       "other files or a playlist, which restorecli does not follow)"
    sent += [("cut.mkv", whole[: len(whole) * 2 // 3]),
             ("film.mkv", make_thumbnail_first(tmp_path / "film.mkv").read_bytes())]
    config = load_config({**DEFAULTS, "model": str(make_model(2)), "precision": "fp32", "backend": "torch"},
                         queue=str(tmp_path / "queue"), dotenv=tmp_path / "none.env")  # nothing probed or converted
    with TestClient(create_app(config), base_url="http://localhost") as client:
        boundary = "cut-here"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"cut.mkv\"\r\n"
                "Content-Type: video/x-matroska\r\n\r\n").encode() + whole[: len(whole) // 2]
        refused = client.post("/enhance", content=body,
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert (refused.status_code, refused.json()) == (
            400, {"detail": "malformed multipart body: it ends before its closing boundary"})
        assert leftovers(config) == []
        accepted = upload(client, *sent)
        assert accepted.status_code == 202, accepted.text
        work(config)
        status = client.get(f"/status/{accepted.json()['job_id']}").json()
        assert status["status"] == "completed", status
        results = {result["original_filename"]: result for result in status["results"]}
        film = results.pop("film.mkv")
        assert film["status"] == "ok" and film["out_size"] == [128, 96], film
        (tmp_path / "got.mkv").write_bytes(client.get(film["url"]).content)
        health = client.get("/health")  # 503 here only says that no worker runs (the test ran the job)
        assert health.status_code in (200, 503) and health.json()["queue"]["failed"] == 0, health.text
    assert {name: (result["status"], result["url"]) for name, result in results.items()} == {
        name: ("error", None) for name in said}
    for name, text in said.items():
        assert results[name]["error"].startswith(text), results[name]["error"]
    assert len(frames_of(tmp_path / "got.mkv")) == FILM_FRAMES
