"""``restorecli serve``: the REST API through an in-process client and through real server processes.

In-process tests run the FastAPI app with no worker processes and finish jobs with the worker loop itself; the
live tests start ``restorecli serve`` on a free loopback port (tests/live_server.py) and speak HTTP to it.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TEST_INPUTS
from helpers.cli import invoke
from helpers.processes import alive, children
from helpers.wait import wait_until
from live_server import LiveServer
from restorecli.cli.options import DEFAULTS
from restorecli.errors import UsageError
from restorecli.jobs.store import JobStore
from restorecli.jobs.worker import WorkerOptions, run_worker
from restorecli.server.config import check_exposure, load_config, read_dotenv
from restorecli.server.supervise import Janitor

with warnings.catch_warnings():  # Starlette suggests httpx2 for its test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

    from restorecli.server.app import create_app

ROCKET = (TEST_INPUTS / "rocket.jpg").read_bytes()
FACE = (TEST_INPUTS / "astronaut_face.jpg").read_bytes()
ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{32}")


def small_png(width: int = 24, height: int = 16, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def size_of(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image.shape[1], image.shape[0]


@pytest.fixture
def model(make_model):
    return str(make_model(2))


def make_config(tmp_path: Path, model: str, **flags):
    return load_config({**DEFAULTS, "model": model}, queue=str(tmp_path / "queue"), dotenv=tmp_path / "none.env",
                       **flags)


@pytest.fixture
def server(tmp_path, model, monkeypatch):
    """(client, config) for an app with no workers of its own; ``work()`` runs queued jobs in this process."""
    monkeypatch.delenv("API_KEY", raising=False)
    config = make_config(tmp_path, model, max_files=4, max_file_mb=0.5, max_video_mb=0.5)  # no larger videos
    with TestClient(create_app(config), base_url="http://localhost") as client:
        yield client, config


def work(config) -> None:
    run_worker(config.queue, WorkerOptions(once=True, poll=0.1), threading.Event())


def upload(client, *files: tuple[str, bytes], headers=None, **fields):
    return client.post("/enhance", files=[("files", f) for f in files], data=fields, headers=headers)


def leftovers(config) -> list[str]:
    """Every file under the queue's staging and job folders."""
    return sorted(str(p.relative_to(config.queue)) for folder in ("incoming", "jobs")
                  for p in (config.queue / folder).rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- the job's life


def test_enhance_queues_a_job_that_status_describes(server):
    client, config = server
    response = upload(client, ("rocket.jpg", ROCKET), ("face.jpg", FACE))
    assert response.status_code == 202
    accepted = response.json()
    assert ID.fullmatch(accepted["job_id"]) and accepted["status"] == "queued" and accepted["queue_position"] == 1
    second = upload(client, ("again.jpg", ROCKET)).json()
    assert second["queue_position"] == 2 and second["job_id"] != accepted["job_id"]
    status = client.get(f"/status/{accepted['job_id']}").json()
    assert status["status"] == "queued" and status["queue_position"] == 1
    assert status["progress"] == {"done": 0, "total": 2}
    assert [(r["original_filename"], r["status"], r["url"]) for r in status["results"]] == [
        ("rocket.jpg", "pending", None), ("face.jpg", "pending", None)]
    job = JobStore(config.queue).get(accepted["job_id"])
    assert job.options["face_enhance"] is False and job.options["model"] == config.allowed_models[0]
    before = client.get(status["results"][0]["input_url"])
    assert before.status_code == 200 and before.content == ROCKET and before.headers["content-type"] == "image/jpeg"


def test_a_finished_job_serves_its_results_files_and_zip(server):
    client, config = server
    job_id = upload(client, ("rocket.jpg", ROCKET), ("notes.png", b"this is not an image"),
                    ("face.jpg", FACE), format="png").json()["job_id"]
    work(config)
    status = client.get(f"/status/{job_id}").json()
    assert status["status"] == "completed" and status["progress"] == {"done": 3, "total": 3}
    assert status["setup"]["device"] == "cpu" and status["setup"]["precision"] in ("fp32", "bf16")
    rocket, notes, face = status["results"]
    assert notes["status"] == "error" and notes["url"] is None
    assert notes["error"].startswith("notes.png: ") and "not an image" in notes["error"]  # the client's name
    for result, data in ((rocket, ROCKET), (face, FACE)):
        assert result["status"] == "ok" and result["url"].startswith(f"/processed/{job_id}/")
        w, h = size_of(data)
        assert result["in_size"] == [w, h] and result["out_size"] == [2 * w, 2 * h]
        got = client.get(result["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert int(got.headers["content-length"]) == len(got.content) and size_of(got.content) == (2 * w, 2 * h)
        etag = got.headers["etag"]
        assert client.get(result["url"], headers={"If-None-Match": etag}).status_code == 304
    archive = client.get(status["download_url"])
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert z.namelist() == ["rocket.png", "face.png"]
        assert size_of(z.read("face.png")) == tuple(face["out_size"])


def test_download_names_stay_unique_and_safe(server):
    client, config = server
    job_id = upload(client, ("a/photo.jpg", ROCKET), ("b\\photo.JPG", ROCKET), ("con:*?.jpg", FACE)).json()["job_id"]
    work(config)
    status = client.get(f"/status/{job_id}").json()
    with zipfile.ZipFile(io.BytesIO(client.get(status["download_url"]).content)) as z:
        assert z.namelist() == ["photo.jpg", "photo (2).jpg", "con___.jpg"]


def test_a_job_that_is_not_finished_has_no_zip_yet(server):
    client, _ = server
    job_id = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    response = client.get(f"/jobs/{job_id}/download")
    assert response.status_code == 409 and "queued" in response.json()["detail"]


def test_a_job_whose_every_file_is_broken_fails_with_each_reason(server):
    client, config = server
    job_id = upload(client, ("empty.png", b""), ("truncated.jpg", ROCKET[:300])).json()["job_id"]
    work(config)
    status = client.get(f"/status/{job_id}").json()
    assert status["status"] == "failed"
    empty, truncated = status["results"]
    assert empty["status"] == truncated["status"] == "error"
    assert empty["error"].startswith("empty.png: ") and truncated["error"].startswith("truncated.jpg: ")
    assert client.get(f"/jobs/{job_id}/download").status_code == 404


def test_an_image_over_the_pixel_limit_is_that_file_s_error(tmp_path, model):
    config = load_config({**DEFAULTS, "model": model, "max_pixels": 1000}, queue=str(tmp_path / "queue"),
                         dotenv=tmp_path / "none.env")
    with TestClient(create_app(config), base_url="http://localhost") as client:
        job_id = upload(client, ("big.png", small_png(64, 64)), ("small.png", small_png(20, 20))).json()["job_id"]
        work(config)
        big, small = client.get(f"/status/{job_id}").json()["results"]
    assert big["status"] == "error" and "big.png" in big["error"] and "pixels" in big["error"]
    assert small["status"] == "ok"


# ----------------------------------------------------------------------------- fields


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"outscale": "abc"}, "outscale 'abc' is not a number"),
    ({"outscale": "0"}, "outscale 0: must be at least 0.01"),
    ({"outscale": "nan"}, "not a finite number"),
    ({"format": "gif"}, "format 'gif' is not one of same, png, jpg, webp, tiff"),
    ({"face_weight": "1.5"}, "face_weight 1.5: must be at most 1"),
    ({"face_enhance": "maybe"}, "face_enhance 'maybe' is not true or false"),
    ({"model": "realesrgan-x4plus"}, "model 'realesrgan-x4plus' is not offered by this server"),
    ({"tile": "64"}, "unknown field 'tile'"),
])
def test_fields_are_checked_as_the_command_line_checks_them(server, fields, fragment):
    client, config = server
    response = upload(client, ("rocket.jpg", ROCKET), **fields)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]
    assert leftovers(config) == []  # a refused request leaves nothing behind


def test_fields_set_the_job_s_options_and_empty_ones_keep_the_server_s(server):
    client, config = server
    job_id = upload(client, ("rocket.jpg", ROCKET), outscale="3", format="webp", face_weight="0.5",
                    face_enhance="false", model=Path(config.allowed_models[0]).name).json()["job_id"]
    options = JobStore(config.queue).get(job_id).options
    assert options["model"] == config.allowed_models[0]  # the name a client sends, the file the server holds
    assert (options["outscale"], options["format"], options["face_weight"], options["face_enhance"]) == (
        3.0, "webp", 0.5, False)
    default = upload(client, ("rocket.jpg", ROCKET), outscale="", format="").json()["job_id"]
    options = JobStore(config.queue).get(default).options
    assert options["outscale"] is None and options["format"] == "same"


# ----------------------------------------------------------------------------- hostile uploads


@pytest.mark.parametrize("name", ["../../escape.png", "/etc/passwd.png", "..\\..\\win.png", "a\x00b.png",
                                  "\u202egnp.exe", "名前.png", "x" * 400 + ".png", ".hidden.png"])
def test_a_client_file_name_is_display_text_only(server, name, tmp_path):
    client, config = server
    response = upload(client, (name, ROCKET))
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    stored = list((config.queue / "jobs" / job_id / "inputs").iterdir())
    assert [p.name for p in stored] == ["001.jpg"]  # the server's name; the content says JPEG
    shown = client.get(f"/status/{job_id}").json()["results"][0]["original_filename"]
    assert "\x00" not in shown and "\u202e" not in shown and 0 < len(shown) <= 255
    assert not (tmp_path / "escape.png").exists() and not Path("/etc/passwd.png").exists()


def test_a_file_over_the_size_limit_is_refused_with_413_and_leaves_nothing(server):
    client, config = server
    big = b"\x89PNG\r\n\x1a\n" + bytes(600 * 1024)
    response = upload(client, ("ok.jpg", ROCKET), ("big.png", big))
    assert response.status_code == 413 and "big.png" in response.json()["detail"]
    assert "0.5 MB" in response.json()["detail"]
    assert leftovers(config) == [] and client.get("/health").json()["queue"]["queued"] == 0


def test_more_files_than_allowed_is_413(server):
    client, config = server
    response = upload(client, *[(f"{i}.jpg", ROCKET) for i in range(5)])
    assert response.status_code == 413 and "more than 4 files" in response.json()["detail"]
    assert leftovers(config) == []


def test_the_upload_limits_come_to_the_route_as_a_dependency(server):
    """The route reads its limits from ``routes.deps.upload_limits``: overriding that dependency is all it takes."""
    from restorecli.server.routes.deps import upload_limits
    from restorecli.server.uploads import Limits

    client, config = server
    client.app.dependency_overrides[upload_limits] = lambda: Limits(1024, 1, ("model",))
    response = upload(client, ("ok.jpg", ROCKET))
    assert response.status_code == 413
    assert response.json() == {"detail": f"ok.jpg: over the limit of {1024 / 1048576:g} MB a file"}
    assert upload(client, ("ok.jpg", small_png(8, 8)), outscale="2").json() == {
        "detail": "unknown field 'outscale'; the fields are files, model"}
    del client.app.dependency_overrides[upload_limits]
    assert upload(client, ("ok.jpg", ROCKET)).status_code == 202 and leftovers(config) != []


def test_a_declared_length_over_the_limits_is_refused_before_reading(server):
    client, config = server
    response = client.post("/enhance", content=b"x" * 10, headers={
        "content-type": "multipart/form-data; boundary=b", "content-length": str(50 * 1024 * 1024)})
    assert response.status_code == 413


@pytest.mark.parametrize(("body", "content_type", "code", "fragment"), [
    (b"files=x", "application/x-www-form-urlencoded", 415, "multipart/form-data"),
    (b"--b\r\n", "multipart/form-data", 400, "boundary"),
    (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nabc",
     "multipart/form-data; boundary=b", 400, "ends before its closing boundary"),
    (b"--b\r\nContent-Disposition: form-data; name=\"face_enhance\"\r\n\r\ntrue\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 422, "no files"),
    (b"--b\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nabc\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 422, "sent as files"),
    (b"--b\r\nContent-Disposition: attachment\r\n\r\nabc\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 400, "without a form-data name"),
    (b"garbage without any boundary at all", "multipart/form-data; boundary=b", 400, "malformed"),
])
def test_malformed_bodies_get_their_error_and_the_server_stays_up(server, body, content_type, code, fragment):
    client, config = server
    response = client.post("/enhance", content=body, headers={"content-type": content_type})
    assert response.status_code == code and fragment in response.json()["detail"]
    assert leftovers(config) == []
    assert client.get("/health").status_code == 200


# ----------------------------------------------------------------------------- what can be read


def test_an_upload_the_disk_refuses_is_507_and_queues_nothing(server, disk_fills):
    client, config = server
    disk_fills(1)
    response = upload(client, ("rocket.jpg", ROCKET))
    assert response.status_code == 507 and "cannot store the upload" in response.json()["detail"]
    assert leftovers(config) == [] and client.get("/health").json()["queue"]["queued"] == 0


def test_an_upload_whose_staging_folder_is_pruned_meanwhile_is_not_queued_partial(server, monkeypatch):
    client, config = server
    from restorecli.server import uploads

    real_end = uploads.MultipartUpload._part_end

    def pruned_after_first(self):  # as `prune --older-than 0s` run by hand would, between two files
        real_end(self)
        if len(self.files) == 1:
            import shutil
            shutil.rmtree(self.inputs)

    monkeypatch.setattr(uploads.MultipartUpload, "_part_end", pruned_after_first)
    response = upload(client, ("a.jpg", ROCKET), ("b.jpg", FACE))
    assert response.status_code == 503 and "vanished" in response.json()["detail"]
    assert leftovers(config) == [] and client.get("/health").json()["queue"]["queued"] == 0


def test_processed_serves_only_the_results_of_existing_jobs(server):
    client, config = server
    job_id = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    work(config)
    url = client.get(f"/status/{job_id}").json()["results"][0]["url"]
    assert client.get(url).status_code == 200
    other = upload(client, ("face.jpg", FACE)).json()["job_id"]
    name = url.rsplit("/", 1)[1]
    near = job_id[:-1] + ("1" if job_id.endswith("0") else "0")  # an id one digit away (1 in 16 ids end in 0)
    for path in (f"/processed/{job_id}/../../queue.db", f"/processed/{job_id}/..%2F..%2Fqueue.db",
                 f"/processed/{job_id}/%2e%2e/result.json", f"/processed/{job_id}/../inputs/001.jpg",
                 f"/processed/{job_id}/result.json", f"/processed/{other}/{name}",
                 f"/processed/{near}/{name}", f"/processed/{job_id[:24]}/{name}",
                 f"/processed/{job_id}/%00", "/processed/..%2F..%2Fetc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "detail" in response.json()


def test_a_result_replaced_by_a_symlink_is_not_served(server, tmp_path):
    client, config = server
    job_id = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    work(config)
    url = client.get(f"/status/{job_id}").json()["results"][0]["url"]
    output = config.queue / "jobs" / job_id / "outputs" / url.rsplit("/", 1)[1]
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    output.unlink()
    output.symlink_to(secret)
    assert client.get(url).status_code == 404


def test_unknown_jobs_are_404_everywhere(server):
    client, _ = server
    missing = "20260101-000000-" + "0" * 32
    for method, path in (("GET", f"/status/{missing}"), ("GET", f"/events/{missing}"),
                         ("GET", f"/jobs/{missing}/download"), ("DELETE", f"/jobs/{missing}"),
                         ("GET", f"/jobs/{missing}/inputs/0"), ("GET", "/status/not-an-id")):
        response = client.request(method, path)
        assert response.status_code == 404 and "no job" in response.json()["detail"], path


def test_responses_carry_safety_headers_and_the_page_its_policy(server):
    client, _ = server
    for path in ("/", "/health", "/status/nope"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


def test_every_error_is_json_with_a_sentence(server):
    client, _ = server
    for response, code in ((client.get("/no/such/route"), 404), (client.put("/enhance"), 405),
                           (client.get("/jobs/20260101-000000-" + "0" * 32 + "/inputs/first"), 422)):
        assert response.status_code == code
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_delete_cancels_a_queued_or_running_job_and_removes_a_finished_one(server, monkeypatch):
    client, config = server
    queued = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    assert client.delete(f"/jobs/{queued}").json() == {"job_id": queued, "deleted": True, "was": "queued"}
    assert client.get(f"/status/{queued}").status_code == 404 and not (config.queue / "jobs" / queued).exists()
    running = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    store = JobStore(config.queue)
    lease = store.claim(60, 3, "test-worker")
    assert lease.job.id == running
    monkeypatch.setattr("restorecli.server.service.CANCEL_WAIT", 0.3)
    response = client.delete(f"/jobs/{running}")  # its worker (this test) has not looked yet: asked, not done
    assert response.status_code == 202
    assert response.json() == {"job_id": running, "deleted": False, "was": "processing"}
    assert store.cancel_asked(running) and (config.queue / "jobs" / running).is_dir()
    assert store.drop_cancelled(lease)  # what a worker does at its next tile
    assert client.get(f"/status/{running}").status_code == 404 and not (config.queue / "jobs" / running).exists()
    finished = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    work(config)
    assert client.get(f"/status/{finished}").json()["status"] == "completed"
    assert client.delete(f"/jobs/{finished}").json()["was"] == "completed"
    assert not (config.queue / "jobs" / finished).exists() and client.get(f"/status/{finished}").status_code == 404


def test_status_reports_progress_and_per_file_state_while_a_job_runs(server):
    client, config = server
    job_id = upload(client, ("a.png", small_png(seed=1)), ("b.png", small_png(seed=2)),
                    ("c.png", small_png(seed=3))).json()["job_id"]
    store = JobStore(config.queue)
    lease = store.claim(60, 3, "test-worker")
    store.record(lease, [{"original_filename": "a.png", "status": "ok", "error": None, "in_size": [24, 16],
                          "out_size": [48, 32], "output": None}])
    status = client.get(f"/status/{job_id}").json()
    assert status["status"] == "processing" and status["queue_position"] is None
    assert status["progress"] == {"done": 1, "total": 3}
    assert [r["status"] for r in status["results"]] == ["ok", "processing", "pending"]
    assert status["results"][0]["url"] is None  # published with the whole job


# ----------------------------------------------------------------------------- keys, CORS, docs


def test_an_api_key_is_required_when_set_and_compared_exactly(tmp_path, model, monkeypatch):
    monkeypatch.setenv("API_KEY", "s3cret")
    config = make_config(tmp_path, model)
    assert config.api_key == "s3cret"
    with TestClient(create_app(config), base_url="http://localhost") as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret "}, {"X-API-Key": "s3cre"}):
            response = upload(client, ("rocket.jpg", ROCKET), headers=headers)
            assert response.status_code == 401 and response.json()["detail"], headers
            assert client.get("/models", headers=headers).status_code == 401
        assert "X-API-Key" in upload(client, ("rocket.jpg", ROCKET)).json()["detail"]
        good = {"X-API-Key": "s3cret"}
        job_id = upload(client, ("rocket.jpg", ROCKET), headers=good).json()["job_id"]
        for path in (f"/status/{job_id}", f"/jobs/{job_id}/inputs/0", f"/events/{job_id}"):
            assert client.get(path).status_code == 401
        assert client.get(f"/status/{job_id}", headers=good).status_code == 200
        health = client.get("/health").json()  # liveness needs no key, and says one is needed
        assert health["auth_required"] is True
        assert client.get("/").status_code == 200  # nor does the page, which asks for it


def test_openapi_schema_and_docs_declare_the_key_and_the_form(server):
    client, _ = server
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The server's API_KEY, where it has one."}
    enhance = schema["paths"]["/enhance"]["post"]
    assert enhance["security"] == [{"ApiKey": []}]
    form = enhance["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(form) == {"files", "face_enhance", "outscale", "format", "model", "face_weight", "face_fidelity",
                         "colorize"}  # no face_model or preset: none installed, nor any preset's models offered
    assert form["format"]["enum"] == ["same", "png", "jpg", "webp", "tiff", ""] and form["face_weight"]["maximum"] == 1
    assert {"202", "413", "422"} <= set(enhance["responses"])
    assert client.get("/docs").status_code == 200


def test_cors_is_off_unless_an_origin_is_given(tmp_path, model):
    origin = "https://app.example.com"
    with TestClient(create_app(make_config(tmp_path / "a", model)), base_url="http://localhost") as client:
        response = client.get("/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in response.headers
    config = make_config(tmp_path / "b", model, cors_origin=origin)
    with TestClient(create_app(config), base_url="http://localhost") as client:
        assert client.get("/health", headers={"Origin": origin}).headers["access-control-allow-origin"] == origin
        other = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_health_is_503_degraded_when_jobs_wait_and_nothing_works_them(server):
    client, config = server
    job_id = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    health = client.get("/health")  # no worker here, and none seen on the queue
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert health.json()["problems"] == ["1 job(s) wait and no worker is alive to take them"]
    store = JobStore(config.queue)
    lease = store.claim(0.01, 3, "stalled:1")  # a worker took it, then stopped renewing its lease
    store.beat("stalled:1", job_id, 30)
    wait_until(lambda: time.time() > lease.job.lease_until, what="the lease to run out")
    problems = client.get("/health").json()["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"job {job_id}: its worker stopped making progress")
    store.release(lease, config.queue / "jobs" / job_id / "work" / lease.token)
    work(config)
    assert client.get("/health").status_code == 200 and client.get("/health").json()["problems"] == []


def test_health_and_models_say_what_the_server_can_do(server, model):
    client, config = server
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["worker_alive"] is False and health["auth_required"] is False
    JobStore(config.queue).beat("elsewhere:1", None, 30)  # an external restorecli worker on the same queue
    health = client.get("/health").json()
    assert health["worker_alive"] is True and health["workers"]["seen"] == 1
    models = client.get("/models").json()
    name = Path(model).name  # a checkpoint is offered by its file name, not the server's path to it
    assert models["default"] == name and models["models"][0]["status"] == "installed"
    assert model not in json.dumps(models)
    assert models["faces"]["available"] is False  # no face weights on this machine
    assert models["defaults"] == {"model": name, "outscale": None, "format": "same", "face_enhance": False,
                                  "face_weight": 1.0, "face_model": "gfpgan-1.4", "face_fidelity": 0.5,
                                  "preset": None, "colorize": "never"}


# ----------------------------------------------------------------------------- configuration


def test_flags_win_over_the_environment_which_wins_over_dotenv(tmp_path, model, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# the service's settings\nexport API_KEY='from-dotenv'\nMAX_FILE_SIZE_MB=3  # MB\n"
                      "RESTORECLI_QUEUE=\"dotenv-queue\"\n\n")
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.delenv("MAX_FILE_SIZE_MB", raising=False)
    restore = {**DEFAULTS, "model": model}
    config = load_config(restore, dotenv=dotenv)
    assert (config.api_key, config.max_file_mb, config.queue.name) == ("from-dotenv", 3, "dotenv-queue")
    monkeypatch.setenv("API_KEY", "from-env")
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "5")
    monkeypatch.setenv("RESTORECLI_QUEUE", str(tmp_path / "env-queue"))
    config = load_config(restore, dotenv=dotenv)
    assert (config.api_key, config.max_file_mb, config.queue.name) == ("from-env", 5, "env-queue")
    config = load_config(restore, dotenv=dotenv, max_file_mb=7, queue=str(tmp_path / "flag-queue"))
    assert (config.max_file_mb, config.queue.name) == (7, "flag-queue")


def test_an_empty_variable_leaves_the_dotenv_value_and_the_file_reads_as_docker_compose_reads_it(tmp_path, model,
                                                                                                  monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text('MAX_FILE_SIZE_MB=3\n\n# a comment\n  export RESTORECLI_QUEUE="a queue"  \nAPI_KEY=\'k#1\'\n')
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "")
    monkeypatch.setenv("RESTORECLI_QUEUE", "")
    monkeypatch.delenv("API_KEY", raising=False)
    config = load_config({**DEFAULTS, "model": model}, dotenv=dotenv)
    assert (config.max_file_mb, config.queue.name, config.api_key) == (3, "a queue", "k#1")
    assert read_dotenv(dotenv) == {"MAX_FILE_SIZE_MB": "3", "RESTORECLI_QUEUE": "a queue", "API_KEY": "k#1"}
    dotenv.write_bytes(b"MAX_FILE_SIZE_MB=2\nNOTE=caf\xe9 ${HOME}\n")  # Latin-1 in another line; nothing interpolated
    assert load_config({**DEFAULTS, "model": model}, dotenv=dotenv).max_file_mb == 2
    assert read_dotenv(dotenv)["NOTE"] == "caf\ufffd ${HOME}"
    dotenv.write_text("MAX_FILE_SIZE_MB=3\n\n\nNO_VALUE\n")
    with pytest.raises(UsageError, match=r"\.env, line 4: not a KEY=VALUE line"):
        load_config({**DEFAULTS, "model": model}, dotenv=dotenv)


def test_a_broken_dotenv_or_setting_is_a_usage_error_naming_it(tmp_path, model, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("API_KEY=x\nthis line is wrong\n")
    with pytest.raises(UsageError, match=r"\.env, line 2: not a KEY=VALUE line"):
        read_dotenv(dotenv)
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "ten")
    with pytest.raises(UsageError, match="MAX_FILE_SIZE_MB 'ten' is not a number of megabytes"):
        load_config({**DEFAULTS, "model": model}, dotenv=tmp_path / "none")
    with pytest.raises(UsageError, match="--retention 'soon'"):
        load_config({**DEFAULTS, "model": model}, retention="soon", max_file_mb=1, dotenv=tmp_path / "none")


@pytest.mark.parametrize(("host", "key", "no_auth", "refused"), [
    ("127.0.0.1", None, False, False), ("localhost", None, False, False), ("::1", None, False, False),
    ("0.0.0.0", None, False, True), ("0.0.0.0", "k", False, False), ("0.0.0.0", None, True, False),
])
def test_only_loopback_may_be_served_without_a_key(tmp_path, model, monkeypatch, host, key, no_auth, refused):
    monkeypatch.delenv("API_KEY", raising=False)
    if key:
        monkeypatch.setenv("API_KEY", key)
    config = load_config({**DEFAULTS, "model": model}, host=host, dotenv=tmp_path / "none")
    if refused:
        with pytest.raises(UsageError, match="--no-auth"):
            check_exposure(config, no_auth)
    else:
        check_exposure(config, no_auth)


def test_serve_refuses_an_open_public_address_and_says_why(tmp_path, model, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    result = invoke("serve", "--host", "0.0.0.0", "--model", model, "--queue", tmp_path / "q")
    assert result.exit_code == 2
    assert "reachable from other machines" in result.stderr and "API_KEY" in result.stderr
    assert not (tmp_path / "q").exists()


def test_serve_without_its_extra_says_how_to_install_it(tmp_path, model, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as if the serve extra were not installed
    result = invoke("serve", "--model", model, "--queue", tmp_path / "q")
    assert result.exit_code == 3 and "pip install 'restorecli[serve]'" in result.stderr


def test_the_janitor_removes_finished_jobs_past_their_retention(server):
    client, config = server
    old = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    work(config)
    waiting = upload(client, ("face.jpg", FACE)).json()["job_id"]
    janitor = Janitor(config.queue, retention=0, every=3600, log=lambda line: None)
    janitor.sweep()
    assert client.get(f"/status/{old}").status_code == 404 and not (config.queue / "jobs" / old).exists()
    assert client.get(f"/status/{waiting}").json()["status"] == "queued"  # never a job still to run


def test_the_api_process_loads_no_model_code(tmp_path, model):
    """Serving uploads, status and files imports none of PyTorch, OpenCV or numpy: the server never runs a model.
    (It reads an upload's header with Pillow, to refuse an output over --max-output-pixels at the door.)"""
    probe = f"""
import sys, warnings
warnings.simplefilter("ignore")
from fastapi.testclient import TestClient
from restorecli.cli.options import DEFAULTS
from restorecli.server.app import create_app
from restorecli.server.config import load_config
config = load_config({{**DEFAULTS, "model": {model!r}}}, queue={str(tmp_path / "q")!r}, dotenv={str(tmp_path)!r})
client = TestClient(create_app(config), base_url="http://localhost")
job = client.post("/enhance", files=[("files", ("a.jpg", b"not really"))]).json()["job_id"]
assert client.get("/status/" + job).status_code == 200 and client.get("/models").status_code == 200
print(sorted(m for m in ("torch", "cv2", "numpy", "spandrel") if m in sys.modules))
"""
    done = __import__("subprocess").run([__import__("sys").executable, "-c", probe], capture_output=True, text=True,
                                        timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- real server processes


def test_a_live_server_says_what_it_will_do_and_runs_a_job(tmp_path, model, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    with LiveServer(tmp_path, "--model", model, "--retention", "2h", "--max-files", "5") as live:
        text = live.output()
        for line in (f"queue:    {tmp_path / 'queue'}", f"model:    {model} (installed)", "device:   auto",
                     "faces:    not available", "workers:  1 (restarted if one dies)",
                     "janitor:  every 30m, removes jobs finished more than 2h ago",
                     "uploads:  at most 5 files of 10 MB each", "API key:  none"):
            assert line in text, line
        with live.client() as client:
            job_id = upload(client, ("rocket.jpg", ROCKET), ("broken.png", b"broken")).json()["job_id"]
            status = live.wait_for(job_id)
            assert status["status"] == "completed"
            assert [r["status"] for r in status["results"]] == ["ok", "error"]
            assert client.get(status["results"][0]["url"]).status_code == 200
            health = client.get("/health").json()
            assert health["worker_alive"] and health["workers"]["alive"] == 1
            models = client.get("/models").json()
            assert models["default"] == Path(model).name and models["models"][0]["status"] == "installed"
            assert client.get("/openapi.json").json()["paths"]["/enhance"]["post"]["security"] == [{"ApiKey": []}]
            before = client.get(status["results"][0]["input_url"])
            assert before.status_code == 200 and before.content == ROCKET
            with zipfile.ZipFile(io.BytesIO(client.get(status["download_url"]).content)) as z:
                assert z.namelist() == ["rocket.jpg"]
            page = client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert client.delete(f"/jobs/{job_id}").json()["was"] == "completed"
            assert client.get(f"/status/{job_id}").status_code == 404


def test_events_stream_progress_until_the_job_completes(tmp_path, model):
    with LiveServer(tmp_path, "--model", model, env={"HARNESS_SLOW": "0.3"}) as live, live.client() as client:
        job_id = upload(client, *[(f"{i}.png", small_png(seed=i)) for i in range(3)]).json()["job_id"]
        events = []
        with client.stream("GET", f"/events/{job_id}") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
    names = [name for name, _ in events]
    assert names[-1] == "completed" and events[-1][1]["progress"] == {"done": 3, "total": 3}
    assert "processing" in names
    done = [doc["progress"]["done"] for name, doc in events if name == "processing"]
    assert done == sorted(done)  # progress only goes forward


def test_a_worker_that_dies_is_restarted(tmp_path, model):
    with LiveServer(tmp_path, "--model", model) as live, live.client() as client:
        workers = wait_until(lambda: children(live.process.pid), what="a worker process")
        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: client.get("/health").json()["workers"]["restarts"] >= 1, what="a restart")
        wait_until(lambda: client.get("/health").json()["workers"]["alive"] == 1, what="a live worker")
        job_id = upload(client, ("rocket.jpg", ROCKET)).json()["job_id"]
        assert live.wait_for(job_id)["status"] == "completed"
        assert "exited with code -9" in live.output()


@pytest.mark.slow  # 12-17 s on 2 cores: nox -s slow runs it
def test_a_server_killed_mid_job_loses_nothing_when_started_again(tmp_path, model):
    live = LiveServer(tmp_path, "--model", model, env={"HARNESS_SLOW": "1.0"}).start()
    try:
        client = live.client()
        job_id = upload(client, *[(f"{i}.png", small_png(seed=i)) for i in range(4)]).json()["job_id"]
        live.wait_for(job_id, statuses=("processing",))
        workers = children(live.process.pid)
        live.kill()  # SIGKILL: no shutdown code runs
        for pid in workers:  # its worker notices, finishes the image in hand, gives the job back and exits
            wait_until(lambda: not alive(pid), what=f"worker {pid} to exit")
    finally:
        live.stop()
    with LiveServer(tmp_path, "--model", model, queue=live.queue) as again, again.client() as client:
        status = again.wait_for(job_id)
        assert status["status"] == "completed" and [r["status"] for r in status["results"]] == ["ok"] * 4
        health = client.get("/health").json()
        assert health["queue"] == {"queued": 0, "processing": 0, "completed": 1, "failed": 0}  # no duplicate
    outputs = sorted(p.name for p in (live.queue / "jobs" / job_id / "outputs").iterdir())
    assert outputs == ["001.png", "002.png", "003.png", "004.png"]


def test_sixteen_clients_at_once_each_get_their_results_exactly_once(tmp_path, model):
    with LiveServer(tmp_path, "--model", model, workers=2) as live:
        def submit(i: int) -> tuple[int, str]:
            with live.client() as client:
                response = upload(client, (f"client{i}.png", small_png(16 + i, 12, seed=i)))
                assert response.status_code == 202
                return i, response.json()["job_id"]

        with ThreadPoolExecutor(16) as pool:
            jobs = dict(pool.map(submit, range(16)))
        assert len(set(jobs.values())) == 16
        with live.client() as client:
            for i, job_id in jobs.items():
                status = live.wait_for(job_id)
                assert status["status"] == "completed", status
                (result,) = status["results"]
                assert result["original_filename"] == f"client{i}.png"
                assert result["out_size"] == [2 * (16 + i), 24]
                assert size_of(client.get(result["url"]).content) == (2 * (16 + i), 24)
            health = client.get("/health").json()
    assert health["queue"]["completed"] == 16
    store = JobStore(live.queue)
    assert [store.get(job_id).attempts for job_id in jobs.values()] == [1] * 16  # each run once, by one worker
    written = [p for job_id in jobs.values() for p in (live.queue / "jobs" / job_id / "outputs").iterdir()]
    assert len(written) == 16


def test_hostile_requests_to_a_live_server_get_their_errors_and_it_stays_up(tmp_path, model, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    with LiveServer(tmp_path, "--model", model, "--max-file-mb", "1", "--max-files", "2", "--max-video-mb", "1",
                    env={"API_KEY": "key"}) as live, live.client() as client:
        key = {"X-API-Key": "key"}
        assert upload(client, ("rocket.jpg", ROCKET)).status_code == 401
        assert upload(client, ("rocket.jpg", ROCKET), headers={"X-API-Key": "nope"}).status_code == 401
        big = upload(client, ("big.png", b"\x89PNG\r\n\x1a\n" + os.urandom(1536 * 1024)), headers=key)
        assert big.status_code == 413 and "big.png: over the limit of 1 MB" in big.json()["detail"]
        huge = upload(client, ("huge.png", os.urandom(3 * 1024 * 1024)), headers=key)  # its length says it all
        assert huge.status_code == 413 and "over the most 2 files of 1 MB" in huge.json()["detail"]
        boundary = b"chunked"

        def chunked():  # no Content-Length: the limit holds while reading
            yield b"--chunked\r\nContent-Disposition: form-data; name=\"files\"; filename=\"stream.png\"\r\n\r\n"
            for _ in range(40):
                yield bytes(64 * 1024)
            yield b"\r\n--chunked--\r\n"

        streamed = client.post("/enhance", content=chunked(), headers={
            **key, "content-type": f"multipart/form-data; boundary={boundary.decode()}"})
        assert streamed.status_code == 413 and "stream.png" in streamed.json()["detail"]
        many = upload(client, *[(f"{i}.jpg", ROCKET) for i in range(3)], headers=key)
        assert many.status_code == 413
        broken = client.post("/enhance", content=b"--b\r\nnonsense", headers={
            **key, "content-type": "multipart/form-data; boundary=b"})
        assert broken.status_code == 400
        traversal = upload(client, ("../../../../tmp/owned.png", ROCKET), headers=key)
        assert traversal.status_code == 202
        job_id = traversal.json()["job_id"]
        assert client.get(f"/status/{job_id}/../../queue.db", headers=key).status_code == 404
        assert client.get("/status/20260101-000000-" + "f" * 32, headers=key).status_code == 404
        assert live.wait_for(job_id, headers=key)["status"] == "completed"
        assert client.get("/health").status_code == 200 and live.process.poll() is None
    assert leftovers_of(live.queue) == {job_id}


def leftovers_of(queue: Path) -> set[str]:
    """The job folders a queue holds, and nothing staged."""
    assert list((queue / "incoming").iterdir()) == []
    return {p.name for p in (queue / "jobs").iterdir()}
