"""HTTP hygiene of a real `restorecli serve` process, attacked as a hostile page or client would: cross-site
requests and foreign Host names (CSRF, DNS rebinding), broken multipart framing, slow clients, too many uploads at
once, conditional and range requests, HEAD, the docs page with no internet, and settings that cannot work refused
at start-up. Every server here is started by its test on 127.0.0.1, with no workers (nothing is restored)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import save_file

from conftest import TEST_INPUTS, tiny_compact_state
from helpers.wait import wait_until
from live_server import LiveServer

KEY = "the-key"
AUTH = {"X-API-Key": KEY}
APP_ORIGIN = "https://app.example.com"
OTHER_NAME = "restore.example.net"
PHOTO = (TEST_INPUTS / "rocket.jpg").read_bytes()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-x2.safetensors"
    save_file(tiny_compact_state(2), str(path))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory, model_file):
    """One server for the tests that change nothing about it: a key, one CORS origin, one more Host name,
    one upload at a time, a 2 s read timeout, uploads of at most 2 files of 50 KB."""
    folder = tmp_path_factory.mktemp("serve")
    with LiveServer(folder, "--model", str(model_file), "--cors-origin", APP_ORIGIN, "--allowed-host", OTHER_NAME,
                    "--max-uploads", "1", "--read-timeout", "2", "--max-files", "2", "--max-file-mb", "0.05",
                    env={"API_KEY": KEY}, workers=0) as server:
        yield server


@pytest.fixture(scope="module")
def job(live) -> str:
    """A queued job: its input is the file the conditional and range requests ask for."""
    response = httpx.post(live.url + "/enhance", headers=AUTH, files=[("files", ("rocket.jpg", PHOTO))], timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    """The answer is ``status`` with a JSON ``{"detail": "..."}`` naming each of ``words``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert isinstance(detail, str) and all(word in detail for word in words), detail


def raw_request(live: LiveServer, data: bytes) -> socket.socket:
    """A connection to the server that has sent ``data`` and nothing more."""
    host, port = live.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def multipart(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


# ----------------------------------------------------------------------------- cross-site requests, Host names


def test_a_cross_site_post_or_delete_is_refused_and_a_same_origin_one_accepted(live, job):
    files = [("files", ("rocket.jpg", PHOTO))]
    with live.client(headers=AUTH) as client:
        attacks = [{"Origin": "http://evil.example"}, {"Origin": "null"},
                   {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                   {"Origin": live.url.replace("127.0.0.1", "localhost")},  # another origin, though the same machine
                   {"Origin": live.url.rsplit(":", 1)[0] + ":1"}]  # another port of this host
        for headers in attacks:  # a no-cors form post from another page would carry these
            assert_error(client.post("/enhance", files=files, headers=headers), 403, "other sites", "--cors-origin")
            assert_error(client.delete(f"/jobs/{job}", headers=headers), 403)
        assert client.get(f"/status/{job}").json()["status"] == "queued"  # the DELETEs did nothing
        assert client.get(f"/status/{job}", headers={"Origin": "http://evil.example"}).status_code == 200  # reads pass
        same = {"Origin": live.url, "Sec-Fetch-Site": "same-origin"}  # what the dashboard's fetch() sends
        assert client.post("/enhance", files=files, headers=same).status_code == 202
        allowed = client.post("/enhance", files=files, headers={"Origin": APP_ORIGIN, "Sec-Fetch-Site": "cross-site"})
        assert allowed.status_code == 202 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
        assert client.post("/enhance", files=files).status_code == 202  # curl and the CLI send neither header


def test_a_foreign_host_is_refused_and_the_configured_names_answer(live):
    port = live.url.rsplit(":", 1)[1]
    with live.client(headers=AUTH) as client:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
            assert_error(client.get("/openapi.json", headers={"Host": host}), 400, "--allowed-host")
            assert_error(client.post("/enhance", headers={"Host": host}, files=[("files", ("a.jpg", PHOTO))]), 400)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"{OTHER_NAME}:{port}", OTHER_NAME.upper()):
            assert client.get("/openapi.json", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize(("bind", "allowed", "answered", "refused"), [
    ("127.0.0.1", (), ["127.0.0.1:8001", "localhost", "[::1]:8001", "127.0.0.2"], ["evil.example", "192.0.2.10"]),
    ("::1", (), ["[::1]:8001", "localhost:8001"], ["evil.example:8001", "[2001:db8::1]"]),
    ("192.0.2.10", ("gpu-box",), ["192.0.2.10:8001", "gpu-box:8001", "localhost"], ["evil.example", "192.0.2.11"]),
    # bound to every address: any IP (no DNS rebinding yields one); any name until --allowed-host names some
    ("0.0.0.0", (), ["203.0.113.5:8001", "gpu-box", "anything.example"], []),
    ("0.0.0.0", ("gpu-box",), ["203.0.113.5:8001", "[2001:db8::1]:80", "gpu-box"], ["evil.example", "gpu-box.evil"]),
])
def test_the_host_names_a_server_answers_to_follow_its_bind_address(bind, allowed, answered, refused):
    """The rule behind the live test above, for the bind addresses a test must not open (every address, another
    machine's): which Host headers pass."""
    from restorecli.server.guards import HostPolicy

    policy = HostPolicy(bind, allowed)
    assert [host for host in answered if policy.refusal(host) is not None] == []
    assert [host for host in refused if policy.refusal(host) is None] == []
    assert policy.refusal(None) is not None and policy.refusal("gpu-box:port") is not None


# ----------------------------------------------------------------------------- multipart framing and size


def test_a_boundary_over_70_characters_or_broken_framing_is_400_never_500(live):
    photo = ("files", "rocket.jpg", PHOTO)
    with live.client(headers=AUTH) as client:
        def post(boundary: str, body: bytes) -> httpx.Response:
            return client.post("/enhance", content=body,
                               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

        assert post("b" * 70, multipart("b" * 70, photo)).status_code == 202  # RFC 2046's longest
        for length in (71, 200, 5000):
            assert_error(post("b" * length, multipart("b" * length, photo)), 400, "boundary", "70")
        assert_error(post("bad\x7fboundary", multipart("bad\x7fboundary", photo)), 400, "boundary")
        broken = [multipart("xyz", photo).replace(b"\r\n\r\n", b"\r\n", 1),  # headers never end
                  multipart("xyz", photo)[:-12],  # no closing boundary
                  b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n",  # a part without a name
                  b"--xyz\r\n" + b"X-Filler: " + b"a" * 9000 + b"\r\n\r\n--xyz--\r\n",  # one huge part header
                  b"garbage before any boundary"]
        for body in broken:
            assert_error(post("xyz", body), 400, "multipart")


def test_a_chunked_body_has_a_total_cap(live):
    """A body sent without Content-Length is cut off at the limits' total even where no file is over its limit:
    here a valid form followed by an epilogue the parser would otherwise read (and drop) for ever."""
    def chunks():
        yield multipart("xyz", ("files", "rocket.jpg", PHOTO[:1000]))
        for _ in range(100):
            yield b"e" * 10_000  # 1 MB of epilogue, over the 2 x 50 KB limits' total

    with live.client(headers=AUTH) as client:
        response = client.post("/enhance", content=chunks(),
                               headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert_error(response, 413, "request body over")


# ----------------------------------------------------------------------------- slow clients, busy server


def test_a_client_slow_with_its_headers_is_disconnected(live):
    started = time.monotonic()
    sock = raw_request(live, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and then nothing more
    with sock:
        assert read_until_closed(sock) == b""  # closed by the server, not by the socket's 30 s timeout
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n",  # and headers that never end, over 16 KB:
                                           b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000])
def test_a_request_that_is_not_http_or_has_huge_headers_gets_400_json(live, request_bytes):
    with raw_request(live, request_bytes) as sock:
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), answer[:300]
    assert b"not a valid HTTP/1.1 request" in body


def test_a_client_slow_with_its_body_gets_408_and_frees_its_upload_slot(live):
    head = (f"POST /enhance HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nContent-Length: 50000\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n").encode()
    started = time.monotonic()
    with raw_request(live, head + b"--xyz\r\n") as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"application/json" in answer and b"the upload arrived too slowly" in answer
    assert time.monotonic() - started < 15
    assert httpx.post(live.url + "/enhance", headers=AUTH, files=[("files", ("a.jpg", PHOTO))]).status_code == 202


def test_uploads_beyond_the_limit_at_once_get_503_with_retry_after(live):
    head = (f"POST /enhance HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nContent-Length: 50000\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n--xyz\r\n"
            'Content-Disposition: form-data; name="files"; filename="slow.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    with raw_request(live, head) as slow:  # holds the server's one upload slot while it sends
        def refused():
            slow.sendall(b"\xff")  # a byte of the file before each try: the slot stays held on a busy machine
            busy = httpx.post(live.url + "/enhance", headers=AUTH, files=[("files", ("a.jpg", PHOTO))])
            return busy if busy.status_code == 503 else None

        busy = wait_until(refused, "the slow upload to be read", timeout=10, every=0)
        assert busy is not None
        assert_error(busy, 503, "try again")
        assert busy.headers["retry-after"].isdigit()
        assert read_until_closed(slow).startswith(b"HTTP/1.1 408 ")  # once it falls silent for the read timeout


# ----------------------------------------------------------------------------- HEAD, ETag, ranges


def test_head_answers_wherever_get_does_with_the_same_headers_and_no_body(live, job):
    with live.client(headers=AUTH) as client:
        for path in ("/health", "/models", f"/status/{job}", f"/jobs/{job}/inputs/0", "/", "/docs",
                     "/openapi.json", f"/events/{job}"):
            get = client.get(path) if path != f"/events/{job}" else None
            head = client.head(path)
            assert head.content == b"", path
            if get is None:
                assert head.status_code == 200
            else:  # /health is 200, or 503 while this server's jobs wait with no worker: the same for both
                assert head.status_code == get.status_code, path
                assert head.headers["content-type"] == get.headers["content-type"], path
                assert head.headers.get("content-length") == get.headers.get("content-length"), path
        assert head.headers["content-type"].startswith("text/event-stream")  # and it did not wait for the job
        missing = client.head("/status/" + "0" * 48)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
        assert client.head("/openapi.json", headers={"X-API-Key": ""}).status_code == 200
        assert client.head("/models", headers={"X-API-Key": "wrong"}).status_code == 401


def test_etag_and_if_none_match_answer_304_including_star(live, job):
    path = f"/jobs/{job}/inputs/0"
    with live.client(headers=AUTH) as client:
        first = client.get(path)
        etag = first.headers["etag"]
        assert first.status_code == 200 and first.content == PHOTO
        assert re.fullmatch(r'"[^"]+"', etag)  # a strong validator
        for given in (etag, f"W/{etag}", "*", f'"other", {etag}'):
            again = client.get(path, headers={"If-None-Match": given})
            assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag, given
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        assert client.head(path, headers={"If-None-Match": "*"}).status_code == 304


def test_range_requests_and_their_errors_are_json(live, job):
    path = f"/jobs/{job}/inputs/0"
    with live.client(headers=AUTH) as client:
        part = client.get(path, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == PHOTO[:100]
        outside = client.get(path, headers={"Range": f"bytes={len(PHOTO) + 10}-"})
        assert_error(outside, 416, "range", str(len(PHOTO)))
        assert outside.headers["content-range"] == f"bytes */{len(PHOTO)}"
        assert_error(client.get(path, headers={"Range": "bytes=abc"}), 400, "range")
        assert_error(client.get(path, headers={"Range": "pages=1-2"}), 400, "range")


# ----------------------------------------------------------------------------- the docs, with no internet


def test_docs_are_served_from_the_package_with_a_content_security_policy(live):
    with live.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "connect-src 'self'" in csp and "default-src 'none'" in csp
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(src.startswith("/docs/") for src in sources), sources
        assert "<script>" not in page.text  # no inline script: the policy allows none
        for src in sources:
            asset = client.get(src)
            assert asset.status_code == 200 and len(asset.content) > 0, src
        assert len(client.get("/docs/swagger-ui-bundle.js").content) > 500_000  # Swagger UI itself, not a stub
        assert_error(client.get("/docs/nothing.js"), 404, "no docs file")
        assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load its script from a CDN
        assert "content-security-policy" in client.get("/").headers


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_docs_render_in_a_browser_with_nothing_loaded_from_elsewhere(live):
    """Swagger UI draws every operation under the page's policy, requesting nothing outside the server."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            problems: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(live.url + "/docs")
            expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=60_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert any("/enhance" in path for path in paths) and any("/status" in path for path in paths), paths
        finally:
            browser.close()
    assert [url for url in requested if not url.startswith(live.url + "/")] == []
    assert problems == []  # no script refused by the policy, no error


# ----------------------------------------------------------------------------- the key, as the document says


def test_every_route_but_health_needs_the_key_as_the_document_declares(live, job):
    document = httpx.get(live.url + "/openapi.json").json()  # the document, like /docs, needs no key
    with live.client() as client:
        for path, item in document["paths"].items():
            for method, operation in item.items():
                url = path.replace("{job_id}", job).replace("{index}", "0").replace("{name}", "x.png")
                answer = client.request(method.upper(), url, headers={"Origin": live.url})
                if path == "/health":
                    # 503 (degraded): this server's job waits with no worker to take it, which /health says
                    assert "security" not in operation and answer.status_code in (200, 503) and answer.json()["queue"]
                else:
                    assert operation["security"] == [{"ApiKey": []}], path
                    assert_error(answer, 401, "X-API-Key")
                assert str(answer.status_code) in operation["responses"], (path, answer.status_code)
        assert client.get("/docs").status_code == 200 and client.get("/").status_code == 200


# ----------------------------------------------------------------------------- settings refused at start-up


def serve_once(tmp_path: Path, model_file: Path, *args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess:
    """``restorecli serve`` that is expected to refuse to start (exit at once)."""
    environment = {k: v for k, v in {**__import__("os").environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "restorecli", "serve", "--model", str(model_file), "--port", "0",
                           "--workers", "0", "--queue", str(tmp_path / "queue"), *args], env=environment,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("key", "says"), [
    ("", "set but empty"), ("   ", "set but blank"), (" padded", "white space"),
    ("clé-secrète", "not printable ASCII"), ("tab\tinside", "not printable ASCII")])
def test_an_api_key_that_cannot_work_is_refused_at_start_up(tmp_path, model_file, key, says):
    done = serve_once(tmp_path, model_file, env={"API_KEY": key})
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "API_KEY" in done.stderr and "listening" not in done.stderr
    assert not (tmp_path / "queue").exists()


def test_an_empty_api_key_in_dotenv_is_refused_too(tmp_path, model_file):
    (tmp_path / ".env").write_text("API_KEY=\n")
    done = serve_once(tmp_path, model_file, env={"API_KEY": None})
    assert done.returncode == 2 and "API_KEY in .env is set but empty" in done.stderr, done.stderr


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/path", "ftp://app.example.com",
                                    "https://user@app.example.com", "https://", "https://app.example.com:99999",
                                    "*"])
def test_a_cors_origin_that_is_not_an_origin_is_refused_at_start_up(tmp_path, model_file, origin):
    done = serve_once(tmp_path, model_file, "--cors-origin", origin, env={"API_KEY": None})
    assert done.returncode == 2, done.stderr
    assert "--cors-origin" in done.stderr and "not an origin" in done.stderr


def test_an_allowed_host_that_is_not_a_name_is_refused_at_start_up(tmp_path, model_file):
    done = serve_once(tmp_path, model_file, "--allowed-host", "https://gpu-box:8001", env={"API_KEY": None})
    assert done.returncode == 2 and "--allowed-host" in done.stderr, done.stderr
