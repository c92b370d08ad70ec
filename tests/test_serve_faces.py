"""The face models a server offers (issue 32): ``serve --allow-face-model``, the ``face_model`` and
``face_fidelity`` fields of ``POST /enhance`` checked as the command line checks them, ``GET /models``'s face
models with their licences, the form's schema, and a face image restored through a live server as a local run
restores it."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TEST_INPUTS
from helpers.cli import invoke, items_of
from live_server import LiveServer
from remote_cli import remote
from restorecli.cli.options import DEFAULTS
from restorecli.errors import UsageError, WeightsNotFound
from restorecli.jobs.store import JobStore
from restorecli.models.registry import REGISTRY
from restorecli.server.config import load_config

with warnings.catch_warnings():  # Starlette suggests httpx2 for its test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

    from restorecli.server.app import create_app

ROCKET = (TEST_INPUTS / "rocket.jpg").read_bytes()


@pytest.fixture
def weights(tmp_path) -> Path:
    """A weights folder holding CodeFormer's file, RestoreFormer's and the default detector's (their content is the
    worker's to check: the server only looks that they are there), and no GFPGAN."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("codeformer", "restoreformer", "retinaface-resnet50"):
        (folder / REGISTRY[name].filename).write_bytes(b"weights")
    return folder


def face_config(tmp_path: Path, model: str, weights: Path, *allowed: str, **restore):
    return load_config({**DEFAULTS, "model": model, "weights_dir": str(weights), **restore},
                       queue=str(tmp_path / "queue"), dotenv=tmp_path / "none.env", allow_face_model=list(allowed))


@pytest.fixture
def server(tmp_path, make_model, weights, monkeypatch):
    """(client, config): a server whose default face model is gfpgan-1.4 (not installed) that also offers
    CodeFormer, RestoreFormer and gfpgan-1.3 (not installed either)."""
    monkeypatch.delenv("API_KEY", raising=False)
    config = face_config(tmp_path, str(make_model(2)), weights, "codeformer", "restoreformer", "gfpgan-1.3")
    with TestClient(create_app(config), base_url="http://localhost") as client:
        yield client, config


def upload(client, **fields):
    return client.post("/enhance", files=[("files", ("rocket.jpg", ROCKET))], data=fields)


def test_models_lists_the_offered_face_models_with_licence_fidelity_and_state(server):
    client, _ = server
    faces = client.get("/models").json()["faces"]
    listed = {face["name"]: face for face in faces["models"]}
    assert list(listed) == ["gfpgan-1.4", "codeformer", "restoreformer", "gfpgan-1.3"]  # the default first
    assert faces["model"] == "gfpgan-1.4" and faces["available"] is False and faces["detector_installed"] is True
    codeformer = listed["codeformer"]
    assert codeformer["licence"] == "S-Lab License 1.0 (non-commercial use only)" and codeformer["non_commercial"]
    assert codeformer["fidelity"] is True and codeformer["runnable"] is True and codeformer["reason"] is None
    assert listed["restoreformer"]["fidelity"] is False and listed["restoreformer"]["non_commercial"] is False
    assert listed["restoreformer"]["licence"] == "Apache-2.0"
    for name in ("gfpgan-1.4", "gfpgan-1.3"):
        assert listed[name]["runnable"] is False and listed[name]["status"] == "missing"
        assert f"restorecli download-weights {name}" in listed[name]["reason"]


def test_the_form_schema_offers_the_runnable_face_models_and_fidelity_s_range(server):
    client, _ = server
    form = client.get("/openapi.json").json()["paths"]["/enhance"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    assert form["face_model"]["enum"] == ["codeformer", "restoreformer", ""]  # "": the default
    assert (form["face_fidelity"]["type"], form["face_fidelity"]["minimum"], form["face_fidelity"]["maximum"]) == (
        "number", 0, 1)


def test_a_named_face_model_and_fidelity_reach_the_job(server):
    client, config = server
    answer = upload(client, face_enhance="true", face_model="codeformer", face_fidelity="0.8")
    assert answer.status_code == 202, answer.text
    options = JobStore(config.queue).get(answer.json()["job_id"]).options
    assert (options["face_enhance"], options["face_model"], options["face_fidelity"]) == (True, "codeformer", 0.8)
    left = JobStore(config.queue).get(upload(client, face_model="restoreformer").json()["job_id"]).options
    assert (left["face_model"], left["face_fidelity"], left["face_enhance"]) == ("restoreformer", 0.5, False)


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"face_model": "gfpgan-2"}, "face_model 'gfpgan-2' is not offered by this server (an unknown name); it offers: "
                                 "gfpgan-1.4, codeformer, restoreformer, gfpgan-1.3"),
    ({"face_model": "realesrgan-x4plus"}, "face_model 'realesrgan-x4plus' is not offered by this server (an unknown"),
    ({"face_model": "gfpgan-1.3"}, "face model gfpgan-1.3 is not installed on this server (restorecli "
                                   "download-weights gfpgan-1.3)"),
    ({"face_fidelity": "1.5"}, "face_fidelity 1.5: must be at most 1"),
    ({"face_fidelity": "-0.1"}, "face_fidelity -0.1: must be at least 0"),
    ({"face_fidelity": "high"}, "face_fidelity 'high' is not a number"),
])
def test_a_face_model_or_fidelity_the_server_cannot_take_is_422_with_the_reason(server, fields, fragment):
    client, config = server
    answer = upload(client, **fields)
    assert answer.status_code == 422
    assert fragment in answer.json()["detail"]
    assert JobStore(config.queue).counts()["queued"] == 0


def test_a_face_model_not_allowed_is_refused_though_the_registry_knows_it(tmp_path, make_model, weights,
                                                                           monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    config = face_config(tmp_path, str(make_model(2)), weights)  # offers its default alone
    with TestClient(create_app(config), base_url="http://localhost") as client:
        answer = upload(client, face_model="codeformer")
        assert answer.status_code == 422
        assert answer.json()["detail"] == ("face_model 'codeformer' is not offered by this server; it offers: "
                                           "gfpgan-1.4")


def test_codeformer_without_its_extra_is_refused_naming_the_extra(server, monkeypatch):
    import restorecli.models.loading as loading

    client, _ = server
    monkeypatch.setattr(loading, "extra_arches_installed", lambda: False)
    answer = upload(client, face_model="codeformer", face_enhance="true")
    assert answer.status_code == 422
    assert "needs the optional package spandrel-extra-arches: pip install 'restorecli[codeformer]'" in \
        answer.json()["detail"]
    codeformer = client.get("/models").json()["faces"]["models"][1]
    assert codeformer["runnable"] is False and "restorecli[codeformer]" in codeformer["reason"]


def test_allow_face_model_takes_face_models_only(tmp_path, make_model, weights):
    model = str(make_model(2))
    with pytest.raises(UsageError, match="'realesrgan-x4plus' is a sr model, not one of the face models"):
        face_config(tmp_path, model, weights, "realesrgan-x4plus")
    with pytest.raises(UsageError, match="unknown model 'codeformr'.*did you mean codeformer"):
        face_config(tmp_path, model, weights, "codeformr")
    with pytest.raises(WeightsNotFound, match="neither a file nor a known face model"):
        face_config(tmp_path, model, weights, str(tmp_path / "nowhere" / "face.pth"))


def test_serve_refuses_an_unknown_face_model_before_it_listens(tmp_path, make_model):
    result = invoke("serve", "--queue", tmp_path / "q", "--model", make_model(2), "--allow-face-model", "codeformr",
                    "--port", "0")
    assert result.exit_code == 2
    assert "unknown model 'codeformr'" in result.stderr and "did you mean codeformer?" in result.stderr


def test_the_server_s_fidelity_architectures_are_the_engine_s():
    """views keeps its own copy (the API process imports no torch): the two must say the same."""
    from restorecli.engine.faces.enhance import FIDELITY_KEYWORDS
    from restorecli.server.views import FIDELITY_ARCHITECTURES

    assert FIDELITY_ARCHITECTURES == set(FIDELITY_KEYWORDS)


# ----------------------------------------------------------------------------- a face through a live server


@pytest.mark.slow  # GFPGAN's 512-pixel face twice (here, then in the server's worker): 111 s on 2 loaded cores
def test_a_face_restored_through_the_live_server_is_the_local_restore(tmp_path, make_model, face_files):
    """The operator offers a face model by its path (random weights in GFPGAN's official layout); restore --server
    names it by its file name, and writes the local run's pixels, the server's job having found the one face."""
    weights, detector = face_files
    face_model = tmp_path / "operator" / "my-gfpgan.pth"
    face_model.parent.mkdir()
    shutil.copy(weights / "GFPGANv1.3.pth", face_model)
    model = str(make_model(2))
    folder = tmp_path / "faces"
    folder.mkdir()
    framed = np.full((192, 160, 3), 128, np.uint8)  # the face with room around it, as the detector finds it
    framed[32:160, 16:144] = cv2.imread(str(TEST_INPUTS / "astronaut_face.jpg"))
    cv2.imwrite(str(folder / "face.png"), framed)
    # torch in fp32 on both sides: auto could choose another back-end on each, whose results differ in the last bit
    fixed = ("--device", "cpu", "--precision", "fp32", "--backend", "torch", "--tile", "0", "--face-detector",
             detector)
    local = invoke("restore", folder / "face.png", "-o", tmp_path / "local", "--model", model, *fixed,
                   "--face-enhance", "--face-model", face_model, "--json")
    assert local.exit_code == 0, local.stderr
    assert items_of(local)[0]["faces"] == 1
    with LiveServer(tmp_path, "--model", model, *map(str, fixed), "--allow-face-model", str(face_model),
                    env={"API_KEY": None}) as server:
        assert "requests may also ask for my-gfpgan.pth" in server.output()
        with server.client() as client:
            offered = client.get("/models").json()["faces"]["models"]
            assert [face["name"] for face in offered] == ["gfpgan-1.4", "my-gfpgan.pth"]
            assert offered[1]["runnable"] is True and offered[1]["fidelity"] is None
            # through the client, which names the face model as the server offers it
            sent = remote(folder / "face.png", "-o", tmp_path / "remote", "--server", server.url, "--face-enhance",
                          "--face-model", "my-gfpgan.pth")
            assert sent.returncode == 0, sent.stderr.decode()
            store = JobStore(server.queue)
            try:
                (job,) = store.jobs()
            finally:
                store.close()
            assert (job.options["face_model"], job.options["face_enhance"]) == (str(face_model), True)
            result = client.get(f"/status/{job.id}").json()["results"][0]
            assert (result["status"], result["faces"]) == ("ok", 1), result
    expected = cv2.imread(str(tmp_path / "local" / "face.png"))
    got = cv2.imread(str(tmp_path / "remote" / "face.png"))
    assert got.shape == expected.shape and np.array_equal(got, expected)
