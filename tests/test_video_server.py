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
