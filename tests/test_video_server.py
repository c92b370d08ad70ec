"""Videos through the HTTP API (issue 33): `POST /enhance` takes a video as it takes an image, a worker restores it
in its container, and its result is downloaded whole."""

from __future__ import annotations

import pytest

from test_serve import make_config, upload, work
from test_video import FRAMES, frames_of, make_video, packets_of

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


def test_a_live_server_limits_videos_by_their_own_size_and_length_and_says_so(tmp_path, make_model, monkeypatch):
    """``--max-video-mb`` is a video's upload limit (413), apart from the image limit; ``--max-video-seconds`` is
    read from the container's header (422); each refusal names the file and the limit, leaves nothing behind,
    and ``/health`` and the OpenAPI document state the limits."""
    from live_server import LiveServer
    from test_serve import small_png

    monkeypatch.delenv("API_KEY", raising=False)
    clips = {frames: make_video(tmp_path / f"clip{frames}.mp4", frames=frames).read_bytes() for frames in (12, 16, 48)}
    image_mb, video_mb = (f"{int(mb * 1048576) / 1048576:g}" for mb in (0.005, 0.02))  # as bytes, then MB
    assert len(clips[12]) > 0.005 * 1048576 and len(clips[48]) > 0.02 * 1048576 > len(clips[16])
    with LiveServer(tmp_path, "--model", str(make_model(2)), "--max-file-mb", "0.005", "--max-video-mb", "0.02",
                    "--max-video-seconds", "0.6", workers=0) as live, live.client() as client:
        assert client.get("/health").json()["limits"] == pytest.approx(
            {"max_file_mb": 0.005, "max_files": 20, "max_video_mb": 0.02, "max_video_seconds": 0.6}, rel=1e-3)
        files = client.get("/openapi.json").json()["paths"]["/enhance"]["post"]["requestBody"]["content"][
            "multipart/form-data"]["schema"]["properties"]["files"]["description"]
        assert f"an image at most {image_mb} MB" in files and f"at most {video_mb} MB and 0.6 seconds long" in files
        accepted = upload(client, ("half a second.mp4", clips[12]))  # over the image limit, within the video's
        assert accepted.status_code == 202, accepted.text
        refusals = [
            (upload(client, ("two seconds.mp4", clips[48])), 413,
             f"two seconds.mp4: over the limit of {video_mb} MB a video"),
            (upload(client, ("long.mp4", clips[16])), 422,
             "long.mp4: 0.7 seconds long, over the limit of 0.6 seconds a video"),
            (upload(client, ("clip.png", clips[12])), 413, f"clip.png: over the limit of {image_mb} MB a file"),
            (upload(client, ("picture.mp4", small_png(64, 48))), 413,  # an image named as a video
             f"picture.mp4: over the limit of {image_mb} MB a file"),
        ]
        for response, status, detail in refusals:
            assert (response.status_code, response.json()) == (status, {"detail": detail})
        # up, with the one accepted job waiting (this server runs no worker)
        assert client.get("/health").json()["problems"] == ["1 job(s) wait and no worker is alive to take them"]
        assert live.process.poll() is None
    assert not list((live.queue / "incoming").iterdir())
    assert len(list((live.queue / "jobs").iterdir())) == 1
