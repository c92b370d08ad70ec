"""`restorecli restore --server URL` against a hostile server: a fake `restorecli serve` on 127.0.0.1, started by
each test, that speaks the API's happy path except where the test makes it lie, redirect elsewhere, send HTML
for an image, send more than anyone should read, send broken JSON, ask the client to wait, or stall. The client
runs as a process of its own (tests/remote_cli.py); each attack must end in a clear message and exit code, with
nothing under an output's final name that is not the image asked for, and the API key sent nowhere else."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from conftest import TEST_INPUTS
from remote_cli import lines, remote

KEY = {"API_KEY": "the-key"}
PHOTO = TEST_INPUTS / "rocket.jpg"  # 96x64; the fake server gives it back as its own result
JOB = "20260101-000000-" + "ab" * 16
RESULT_PATH = f"/processed/{JOB}/rocket.jpg"
MB = 1 << 20


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


Route = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _any(self) -> None:
        fake = self.server.fake
        if self.command == "POST":
            self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake.seen.append(Seen(self.command, self.path, dict(self.headers), time.monotonic()))
        route = fake.routes.get((self.command, self.path)) or fake.default
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):  # the client hung up, as it should on a hostile answer
            self.close_connection = True

    do_GET = do_POST = do_DELETE = _any

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, document: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(document).encode(), headers=headers)

    def stream(self, content_type: str, head: bytes, total: int, declared: int | None = None) -> None:
        """``head`` then zeros up to ``total`` bytes, a megabyte a write, with ``declared`` as its Content-Length
        (None: none, the body ends when the connection closes); counts in ``fake.sent`` what the client took."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if declared is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        fake, chunk, sent = self.server.fake, head + bytes(MB - len(head)), 0
        while sent < total:
            self.wfile.write(chunk)
            sent += len(chunk)
            fake.sent = sent
            chunk = bytes(MB)
        self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeServer"


class FakeServer:
    """The API's happy path on a free loopback port: one job of one file (``PHOTO``), completed at once, whose
    result is ``PHOTO`` itself. ``routes[(method, path)]`` replaces an answer; ``seen`` lists every request."""

    def __init__(self):
        self.seen: list[Seen] = []
        self.sent = 0
        self.release = threading.Event()  # set at the end: a stalling route returns
        self.routes: dict[tuple[str, str], Route] = {}
        self.http = _HTTPServer(("127.0.0.1", 0), Handler)
        self.http.fake = self
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(10)

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    def default(self, handler: Handler) -> None:
        method, path = handler.command, handler.path
        if (method, path) == ("GET", "/health"):
            handler.send_json({"status": "ok", "queue": {}, "auth_required": True, "worker_alive": True,
                               "limits": {"max_files": 20, "max_file_mb": 10}})
        elif (method, path) == ("GET", "/models"):
            handler.send_json({"models": [{"name": "realesrgan-x4plus", "scale": 4, "status": "installed"}],
                               "defaults": {}, "faces": {"available": False}})
        elif (method, path) == ("POST", "/enhance"):
            handler.send_json({"job_id": JOB, "status": "queued", "queue_position": 1}, status=202)
        elif (method, path) == ("GET", f"/status/{JOB}"):
            handler.send_json(status_document())
        elif (method, path) == ("GET", RESULT_PATH):
            handler.send(200, PHOTO.read_bytes(), "image/jpeg")
        else:
            handler.send_json({"detail": "Not Found"}, status=404)


def status_document(**result) -> dict:
    with Image.open(PHOTO) as image:
        size = list(image.size)
    entry = {"index": 0, "original_filename": "rocket.jpg", "url": RESULT_PATH, "input_url": f"/jobs/{JOB}/inputs/0",
             "status": "ok", "error": None, "in_size": size, "out_size": size, **result}
    return {"job_id": JOB, "status": "completed", "queue_position": None, "progress": {"done": 1, "total": 1},
            "error": None, "created": 0.0, "finished": 1.0, "results": [entry], "download_url": None}


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "rocket.jpg")
    return folder


def run(fake: FakeServer, photos: Path, out: Path, *extra):
    return remote(photos / "rocket.jpg", "-o", out, "--server", fake.url, "--json", *extra, key_env=KEY, timeout=120)


def only_error(result) -> str:
    """The one input's error, after checking the run reported it as such (exit 1, no traceback)."""
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    (line, summary) = lines(result)
    assert line["status"] == "error" and summary["type"] == "summary"
    return line["error"]


def nothing_written(out: Path) -> bool:
    """No file under the output's final name, and no temporary file left beside it."""
    return not out.exists() or list(out.iterdir()) == []


def test_the_fake_server_s_happy_path_is_downloaded(fake, photos, tmp_path):
    """The harness itself: without an attack, the client takes the fake server's answers."""
    result = run(fake, photos, tmp_path / "o")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "o" / "rocket.jpg").read_bytes() == PHOTO.read_bytes()
    assert fake.paths() == ["/models", "/health", "/enhance", f"/status/{JOB}", RESULT_PATH]
    assert all(seen.headers.get("X-API-Key") == "the-key" for seen in fake.seen)


@pytest.mark.parametrize("where", ["/models", RESULT_PATH])
def test_a_redirect_to_another_port_is_not_followed_and_gets_no_key(fake, photos, tmp_path, where):
    with FakeServer() as elsewhere:
        fake.routes[("GET", where)] = lambda h: h.send(302, b"", headers={"Location": elsewhere.url + where})
        result = run(fake, photos, tmp_path / "o")
        stderr = result.stderr.decode()
        assert elsewhere.seen == []  # not followed, so nothing, and no key, reached the other port
    message = f"redirected GET {where} to {elsewhere.url}, another address: not followed"
    if where == "/models":  # before anything is sent: the run stops
        assert result.returncode == 3 and message in stderr and "Traceback" not in stderr
    else:  # that file's error
        assert message in only_error(result)
    assert nothing_written(tmp_path / "o")


def test_a_redirect_on_the_same_address_is_followed_with_the_key(fake, photos, tmp_path):
    moved = f"/moved/{JOB}/rocket.jpg"
    fake.routes[("GET", RESULT_PATH)] = lambda h: h.send(307, b"", headers={"Location": moved})
    fake.routes[("GET", moved)] = lambda h: h.send(200, PHOTO.read_bytes(), "image/jpeg")
    result = run(fake, photos, tmp_path / "o")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "o" / "rocket.jpg").read_bytes() == PHOTO.read_bytes()
    assert fake.paths()[-2:] == [RESULT_PATH, moved] and fake.seen[-1].headers.get("X-API-Key") == "the-key"


def test_a_download_address_on_another_host_is_never_asked(fake, photos, tmp_path):
    with FakeServer() as elsewhere:
        fake.routes[("GET", f"/status/{JOB}")] = lambda h: h.send_json(status_document(url=elsewhere.url + "/x.jpg"))
        error = only_error(run(fake, photos, tmp_path / "o"))
        assert elsewhere.seen == []
    assert "not a path on the server itself" in error
    assert nothing_written(tmp_path / "o")


PNG = (TEST_INPUTS / "cameraman_gray.png").read_bytes()
HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.mark.parametrize(("content_type", "body", "says"), [
    ("text/html; charset=utf-8", HTML, "the server sent text/html, not the image/jpeg asked for"),
    ("image/jpeg", HTML, "the server sent an HTML page, not the JPG image asked for"),
    ("image/jpeg", PNG, "the server sent a PNG file, not the JPG image asked for"),
    ("image/jpeg", PHOTO.read_bytes()[:2000], "does not decode"),  # cut short, yet framed as whole
    ("image/jpeg", (TEST_INPUTS / "astronaut_face.jpg").read_bytes(), "not the jpg of 96x64 its status announced"),
])
def test_what_is_not_the_image_asked_for_is_an_error_and_never_written(fake, photos, tmp_path, content_type, body,
                                                                         says):
    fake.routes[("GET", RESULT_PATH)] = lambda h: h.send(200, body, content_type)
    error = only_error(run(fake, photos, tmp_path / "o"))
    assert error.startswith(f"{photos / 'rocket.jpg'}: its result could not be downloaded: ")
    assert says in error
    assert nothing_written(tmp_path / "o")


@pytest.mark.parametrize("declared", [None, 200 * MB], ids=["no-length", "declared"])
def test_200_mb_of_zeros_for_an_image_is_refused_unread(fake, photos, tmp_path, declared):
    # a JPEG's first bytes, so that only the size limit can stop it
    fake.routes[("GET", RESULT_PATH)] = lambda h: h.stream("image/jpeg", b"\xff\xd8\xff\xe0", 200 * MB, declared)
    error = only_error(run(fake, photos, tmp_path / "o"))
    assert "restorecli takes for it" in error
    assert fake.sent < 50 * MB  # the client hung up: it read a little of it at most
    assert nothing_written(tmp_path / "o")


@pytest.mark.parametrize("declared", [None, 300 * MB], ids=["no-length", "declared"])
def test_a_300_mb_health_answer_is_refused_not_read_into_memory(fake, photos, tmp_path, declared):
    fake.routes[("GET", "/health")] = lambda h: h.stream("application/json", b'{"status": "', 300 * MB, declared)
    result = run(fake, photos, tmp_path / "o")
    stderr = result.stderr.decode()
    assert result.returncode == 3 and "Traceback" not in stderr
    assert f"the server at {fake.url} sent GET /health of " in stderr and "restorecli takes for it" in stderr
    assert fake.sent < 50 * MB
    assert "/enhance" not in fake.paths()


@pytest.mark.parametrize(("body", "says"), [
    (b'{"job_id": "' + JOB.encode() + b'", "status": "compl', "no JSON"),
    (b'["completed"]', "JSON that is not an object"),
    (json.dumps({"job_id": JOB, "status": "completed"}).encode(), "it has no results"),
    (json.dumps({**status_document(), "status": "done?"}).encode(), 'its status is "done?"'),
    (json.dumps(status_document(index=7)).encode(), "a result's index is 7"),
    (json.dumps({**status_document(), "results": []}).encode(), "0 result(s) for the 1 file(s) sent"),
    (json.dumps(status_document(out_size="big")).encode(), "is not [width, height]"),
    (json.dumps(status_document(url=["/x"])).encode(), "is not text"),
])
def test_a_malformed_status_is_each_file_s_error_not_a_traceback(fake, photos, tmp_path, body, says):
    fake.routes[("GET", f"/status/{JOB}")] = lambda h: h.send(200, body)
    error = only_error(run(fake, photos, tmp_path / "o"))
    assert says in error and JOB in error and "left to the server" in error
    assert RESULT_PATH not in fake.paths() and nothing_written(tmp_path / "o")


@pytest.mark.parametrize(("path", "body", "says"), [
    ("/health", b"<html>hello</html>", "answered GET /health with no JSON: is it restorecli serve?"),
    ("/health", json.dumps({"limits": {"max_files": "many"}}).encode(), "gave limits restorecli cannot read"),
    ("/models", json.dumps({"models": "all"}).encode(), "answered GET /models with a document restorecli cannot"),
    ("/enhance", json.dumps({"status": "queued"}).encode(), "took the upload but gave no job id"),
    ("/enhance", json.dumps({"job_id": "../../x"}).encode(), "took the upload but gave no job id"),
])
def test_a_malformed_document_before_the_jobs_is_a_setup_error(fake, photos, tmp_path, path, body, says):
    fake.routes[("POST" if path == "/enhance" else "GET", path)] = lambda h: h.send(200, body)
    result = run(fake, photos, tmp_path / "o")
    stderr = result.stderr.decode()
    assert result.returncode == 3 and says in stderr and "Traceback" not in stderr
    assert nothing_written(tmp_path / "o")


def test_503_and_429_with_retry_after_are_waited_for_then_the_run_succeeds(fake, photos, tmp_path):
    busy = {"/enhance": 1, f"/status/{JOB}": 2}

    def busy_then_fine(handler: Handler) -> None:
        if busy[handler.path]:
            busy[handler.path] -= 1
            status = 503 if handler.path == "/enhance" else 429
            handler.send_json({"detail": "busy"}, status=status, headers={"Retry-After": "1"})
        else:
            fake.default(handler)

    fake.routes[("POST", "/enhance")] = fake.routes[("GET", f"/status/{JOB}")] = busy_then_fine
    result = run(fake, photos, tmp_path / "o")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "o" / "rocket.jpg").read_bytes() == PHOTO.read_bytes()
    for path, tries in (("/enhance", 2), (f"/status/{JOB}", 3)):
        times = [seen.at for seen in fake.seen if seen.path == path]
        assert len(times) == tries and all(b - a >= 0.95 for a, b in zip(times, times[1:]))  # Retry-After kept
    uploads = [seen for seen in fake.seen if seen.path == "/enhance"]
    assert uploads[0].headers["Content-Length"] == uploads[1].headers["Content-Length"]  # the body sent whole again


def test_a_retry_after_longer_than_the_client_waits_is_an_error_at_once(fake, photos, tmp_path):
    fake.routes[("GET", "/models")] = lambda h: h.send_json({"detail": "down for maintenance"}, status=503,
                                                            headers={"Retry-After": "86400"})
    started = time.monotonic()
    result = run(fake, photos, tmp_path / "o")
    stderr = result.stderr.decode()
    assert result.returncode == 3 and "answered 503 to GET /models: down for maintenance" in stderr
    assert fake.paths() == ["/models"] and time.monotonic() - started < 60


def test_a_server_that_never_answers_is_a_timeout_with_a_clear_message(fake, photos, tmp_path):
    fake.routes[("GET", "/models")] = lambda h: fake.release.wait(60)  # headers never come
    result = run(fake, photos, tmp_path / "o", "--timeout", "1")
    stderr = result.stderr.decode()
    assert result.returncode == 3 and "Traceback" not in stderr
    assert f"the server at {fake.url} took longer than 1 s to answer (GET /models)" in stderr


def test_a_download_that_stalls_midway_is_that_file_s_error(fake, photos, tmp_path):
    def stall(handler: Handler) -> None:
        data = PHOTO.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:1000])
        fake.release.wait(60)

    fake.routes[("GET", RESULT_PATH)] = stall
    error = only_error(run(fake, photos, tmp_path / "o", "--timeout", "1"))
    assert "stopped sending the image for longer than the timeout" in error
    assert nothing_written(tmp_path / "o")
