"""The ``preset`` and ``colorize`` fields of ``POST /enhance`` (issue 32): a preset only where the server offers
each of its models, colourising only where the server's DDColor weights and package are there; ``GET /models``
and the form's schema say which."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from conftest import TEST_INPUTS
from restorecli.cli.options import DEFAULTS
from restorecli.jobs.store import JobStore
from restorecli.models.registry import REGISTRY
from restorecli.server.config import load_config

with warnings.catch_warnings():  # Starlette suggests httpx2 for its test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

    from restorecli.server.app import create_app

ROCKET = (TEST_INPUTS / "rocket.jpg").read_bytes()
# Files the server looks for (their content is the worker's to check): the models of four presets, the face stage
INSTALLED = ("scunet-color-real-psnr", "realesrgan-x4plus", "realesrgan-x4plus-anime", "gfpgan-1.4",
             "retinaface-resnet50")


def serve(tmp_path: Path, model: str, *installed: str, **flags) -> TestClient:
    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    for name in installed:
        (weights / REGISTRY[name].filename).write_bytes(b"weights")
    config = load_config({**DEFAULTS, "model": model, "weights_dir": str(weights)}, queue=str(tmp_path / "queue"),
                         dotenv=tmp_path / "none.env", **flags)
    return TestClient(create_app(config), base_url="http://localhost")


@pytest.fixture
def server(tmp_path, make_model, monkeypatch):
    """(client, queue): a server offering SCUNet, x4plus and the anime x4plus besides its tiny default model,
    their weights and the face stage's installed, and no DDColor."""
    monkeypatch.delenv("API_KEY", raising=False)
    allowed = ["scunet-color-real-psnr", "realesrgan-x4plus", "realesrgan-x4plus-anime"]
    with serve(tmp_path, str(make_model(2)), *INSTALLED, allow_model=allowed) as client:
        yield client, tmp_path / "queue"


def upload(client, **fields):
    return client.post("/enhance", files=[("files", ("rocket.jpg", ROCKET))], data=fields)


def options_of(queue: Path, answer) -> dict:
    assert answer.status_code == 202, answer.text
    store = JobStore(queue)
    try:
        return store.get(answer.json()["job_id"]).options
    finally:
        store.close()


def test_models_lists_the_presets_whose_models_the_server_offers(server):
    client, _ = server
    document = client.get("/models").json()
    assert [p["name"] for p in document["presets"]] == ["old-photo", "portrait", "denoise", "anime"]  # no FBCNN
    old_photo = document["presets"][0]
    assert old_photo["models"] == ["scunet-color-real-psnr", "realesrgan-x4plus"] and old_photo["face_enhance"]
    form = client.get("/openapi.json").json()["paths"]["/enhance"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    assert form["preset"]["enum"] == ["old-photo", "portrait", "denoise", "anime", ""]  # "": none
    assert form["colorize"]["enum"] == ["never", ""]  # no DDColor here; "": the server's default


def test_a_preset_runs_its_chain_and_face_stage(server):
    client, queue = server
    old_photo = options_of(queue, upload(client, preset="old-photo"))
    assert (old_photo["preset"], old_photo["model"], old_photo["face_enhance"]) == (
        "old-photo", "scunet-color-real-psnr,realesrgan-x4plus", True)
    denoise = options_of(queue, upload(client, preset="denoise", outscale="2"))
    assert (denoise["model"], denoise["face_enhance"], denoise["outscale"]) == ("scunet-color-real-psnr", False, 2.0)


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"preset": "jpeg-photo"}, "preset 'jpeg-photo' runs fbcnn-color, realesrgan-x4plus, and this server does not "
                               "offer fbcnn-color (--allow-model); its presets: old-photo, portrait, denoise, anime"),
    ({"preset": "vintage"}, "preset 'vintage' is not one of old-photo, jpeg-photo, portrait, denoise, anime"),
    ({"preset": "denoise", "model": "realesrgan-x4plus"}, "preset 'denoise' runs its own models "
                                                          "(scunet-color-real-psnr); the model field chooses others"),
    ({"colorize": "auto"}, "colorize auto: colorize model ddcolor is not installed on this server (restorecli "
                           "download-weights ddcolor)"),
    ({"colorize": "sometimes"}, "colorize 'sometimes' is not one of never, auto, always"),
])
def test_a_preset_or_colorize_the_server_cannot_run_is_422_with_the_reason(server, fields, fragment):
    client, queue = server
    answer = upload(client, **fields)
    assert answer.status_code == 422
    assert fragment in answer.json()["detail"]
    assert JobStore(queue).counts()["queued"] == 0


def test_a_preset_whose_models_are_offered_but_not_installed_is_refused(tmp_path, make_model, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    with serve(tmp_path, str(make_model(2)), allow_model=["scunet-color-real-psnr"]) as client:
        answer = upload(client, preset="denoise")
        assert answer.status_code == 422
        assert "model scunet-color-real-psnr is not installed on this server (restorecli download-weights " \
               "scunet-color-real-psnr)" in answer.json()["detail"]


def test_colorize_where_ddcolor_is_installed_and_not_without_its_package(tmp_path, make_model, monkeypatch):
    import restorecli.models.loading as loading

    monkeypatch.delenv("API_KEY", raising=False)
    with serve(tmp_path, str(make_model(2)), "ddcolor") as client:
        offered = client.get("/models").json()["colorize"]
        assert offered == {"available": True, "model": "ddcolor", "reason": None}
        assert options_of(tmp_path / "queue", upload(client, colorize="always"))["colorize"] == "always"
        monkeypatch.setattr(loading, "extra_arches_installed", lambda: False)
        answer = upload(client, colorize="auto")
        assert answer.status_code == 422
        assert "colorize auto: colorize model ddcolor cannot run on this server" in answer.json()["detail"]
        assert "pip install 'restorecli[colorize]'" in answer.json()["detail"]
        assert client.get("/models").json()["colorize"]["available"] is False
