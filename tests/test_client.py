"""`restorecli restore --server URL` against a real `restorecli serve` process: the outputs, JSON lines and exit
codes of a local run, skipping as a local run skips, the options the server decides, the API key, the server's
limits, a stop signal, and a client that imports neither torch nor the server's extra."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image
from safetensors.torch import save_file

from conftest import TEST_INPUTS, tiny_compact_state
from live_server import LiveServer
from restorecli.jobs.store import JobStore
from helpers.cli import invoke
from helpers.wait import wait_until
from remote_cli import FOLLOWING, client_command, lines, remote

JOB_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{32}")


def jobs_in(server: LiveServer) -> int:
    return sum(httpx.get(server.url + "/health", timeout=10).json()["queue"].values())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny-x2.safetensors"
    save_file(tiny_compact_state(2), str(path))
    return path


def _home(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("server-home")
    return {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    """An open server; its default model is the tiny one."""
    with LiveServer(tmp_path_factory.mktemp("serve"), "--model", str(model), env=_home(tmp_path_factory)) as live:
        yield live


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Path:
    """While this file exists, the ``guarded`` server's worker holds each image before decoding it."""
    return tmp_path_factory.mktemp("hold") / "hold"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, model, held):
    """A server with an API key, one file a request and 20 KB a file, whose worker takes a second an image, and
    holds it while ``held`` exists."""
    with LiveServer(tmp_path_factory.mktemp("serve-key"), "--model", str(model), "--max-files", "1",
                    "--max-file-mb", "0.02", env={**_home(tmp_path_factory), "API_KEY": "k",
                                                   "HARNESS_SLOW": "1", "HARNESS_HOLD": str(held)}) as live:
        yield live


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("rocket.jpg", "cameraman_gray.png"):
        shutil.copy(TEST_INPUTS / name, folder / name)
    return folder


def _shape(line: dict) -> tuple:
    return line["type"], sorted(line), line.get("status")


def test_a_remote_run_writes_what_a_local_run_writes(server, model, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    here, there = tmp_path / "local", tmp_path / "remote"
    local = invoke("restore", photos, "-o", here, "--model", model, "--json")
    result = remote(photos, "-o", there, "--server", server.url, "--json")
    assert (local.exit_code, result.returncode) == (1, 1), result.stderr.decode()
    assert sorted(p.name for p in there.iterdir()) == sorted(p.name for p in here.iterdir()) == [
        "cameraman_gray.png", "rocket.jpg"]
    for name in ("cameraman_gray.png", "rocket.jpg"):
        with Image.open(here / name) as a, Image.open(there / name) as b:
            assert (a.size, a.mode, a.format) == (b.size, b.mode, b.format)
    ours, theirs = lines(result), lines(local)
    assert [_shape(line) for line in ours] == [_shape(line) for line in theirs]
    for mine, local_line in zip(ours[:-1], theirs[:-1]):  # the same inputs, outputs, errors and sizes
        assert mine["input"] == local_line["input"]
        assert mine["output"] == local_line["output"].replace(str(here), str(there))
        assert (mine["error"], mine["in_size"], mine["out_size"]) == (
            local_line["error"], local_line["in_size"], local_line["out_size"])
    assert ours[0]["error"].startswith(f"{photos / 'broken.png'}: ")  # named by its local path
    assert ours[-1]["model"] == theirs[-1]["model"]
    assert ours[-1]["device"] == server.url


def test_a_rerun_skips_without_uploading_and_overwrite_redoes(server, photos, tmp_path):
    out = tmp_path / "o"
    assert remote(photos, "-o", out, "--server", server.url).returncode == 0
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    before = jobs_in(server)
    again = remote(photos, "-o", out, "--server", server.url, "--json")
    assert again.returncode == 0
    assert [(line["status"], line["error"]) for line in lines(again)[:-1]] == [("skipped", "output exists")] * 2
    assert jobs_in(server) == before  # nothing was sent
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written
    redo = remote(photos, "-o", out, "--server", server.url, "--overwrite", "--json")
    assert redo.returncode == 0 and [line["status"] for line in lines(redo)[:-1]] == ["ok", "ok"]
    assert jobs_in(server) == before + 1
    assert all(p.stat().st_mtime_ns != written[p.name] for p in out.iterdir())


def test_the_request_s_options_name_the_outputs_and_the_server_s_are_refused(server, photos, tmp_path):
    result = remote(photos / "rocket.jpg", "-o", tmp_path / "o", "--server", server.url, "--format", "png",
                    "--suffix", "_x", "--outscale", "1.5")
    assert result.returncode == 0, result.stderr.decode()
    with Image.open(tmp_path / "o" / "rocket_x.png") as image:
        assert (image.format, image.size) == ("PNG", (144, 96))
    refused = remote(photos, "-o", tmp_path / "p", "--server", server.url, "--tile", "64")
    assert refused.returncode == 2
    assert "--tile" in refused.stderr.decode() and "server decides" in refused.stderr.decode()
    assert not (tmp_path / "p").exists()


def test_what_the_server_cannot_do_is_refused_before_an_upload(server, photos, tmp_path):
    before = jobs_in(server)
    other = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--model", "realesr-animevideov3")
    assert other.returncode == 2 and "'realesr-animevideov3' is not offered by the server" in other.stderr.decode()
    faces = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--face-enhance")
    assert faces.returncode == 3 and "cannot restore faces" in faces.stderr.decode()
    assert jobs_in(server) == before and not (tmp_path / "o").exists()


def test_the_face_model_and_fidelity_are_sent_and_what_the_server_cannot_run_is_refused(server, photos, tmp_path):
    """Issue 32: --face-model and --face-fidelity are request fields; a face model the server does not offer, or
    offers without its weights, is refused before an upload, with the server's reason."""
    before = jobs_in(server)
    other = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--face-model", "codeformer")
    assert other.returncode == 2
    assert "face model 'codeformer' is not offered by the server" in other.stderr.decode()
    assert "it offers: gfpgan-1.4" in other.stderr.decode()
    absent = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--face-model", "gfpgan-1.4")
    assert absent.returncode == 3
    assert "restorecli download-weights gfpgan-1.4" in absent.stderr.decode()
    assert jobs_in(server) == before and not (tmp_path / "o").exists()
    sent = remote(photos / "rocket.jpg", "-o", tmp_path / "o", "--server", server.url, "--face-fidelity", "0.25")
    assert sent.returncode == 0, sent.stderr.decode()
    store = JobStore(server.queue)
    try:
        newest = max(store.jobs(), key=lambda job: job.created)
    finally:
        store.close()
    assert newest.options["face_fidelity"] == 0.25 and newest.options["face_enhance"] is False


def test_a_preset_or_colourising_the_server_cannot_run_is_refused_before_an_upload(server, photos, tmp_path):
    """Issue 32: --preset and --colorize are request fields; this server offers no preset's models and has no
    DDColor, and the client says so without sending anything."""
    before = jobs_in(server)
    preset = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--preset", "denoise")
    assert preset.returncode == 2, preset.stderr.decode()
    assert "preset 'denoise' is not offered by the server" in preset.stderr.decode()
    colour = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--colorize", "auto")
    assert colour.returncode == 3, colour.stderr.decode()
    assert "cannot colourise: colorize model ddcolor is not installed on this server" in colour.stderr.decode()
    assert jobs_in(server) == before and not (tmp_path / "o").exists()


def test_a_file_whose_name_and_content_disagree_is_written_as_its_name_says(server, photos, tmp_path):
    shutil.copy(photos / "rocket.jpg", photos / "jpeg.png")  # a local run writes a PNG: the name says so
    result = remote(photos, "-o", tmp_path / "o", "--server", server.url)
    assert result.returncode == 0, result.stderr.decode()
    for name, kind in (("jpeg.png", "PNG"), ("rocket.jpg", "JPEG"), ("cameraman_gray.png", "PNG")):
        with Image.open(tmp_path / "o" / name) as image:
            assert image.format == kind


def test_an_unreachable_server_is_a_setup_error_naming_it(photos, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = remote(photos, "-o", tmp_path / "o", "--server", url)
    assert result.returncode == 3
    assert f"cannot reach the server at {url}" in result.stderr.decode()


def test_the_api_key_comes_from_the_variable_named(guarded, photos, tmp_path):
    args = (photos / "rocket.jpg", "-o", tmp_path / "o", "--server", guarded.url)
    missing = remote(*args)
    assert missing.returncode == 3 and "API_KEY, which is not set in the environment or in .env" in (
        missing.stderr.decode())
    assert missing.stderr.decode().count("API key") == 1  # said once
    wrong = remote(*args, key_env={"API_KEY": "nope"})
    assert wrong.returncode == 3 and "refused the API key in the environment variable API_KEY" in wrong.stderr.decode()
    assert not (tmp_path / "o").exists()
    right = remote(*args, "--api-key-env", "MYKEY", "--json", key_env={"MYKEY": "k", "API_KEY": "nope"})
    assert right.returncode == 0, right.stderr.decode()
    assert (tmp_path / "o" / "rocket.jpg").is_file()


def test_the_api_key_is_read_from_dot_env_as_the_server_reads_it(guarded, photos, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = (photos / "rocket.jpg", "-o", tmp_path / "o", "--server", guarded.url)
    (work / ".env").write_text("# the client's settings\nexport API_KEY='nope'\n")
    wrong = remote(*args, cwd=work)
    assert wrong.returncode == 3
    assert "refused the API key in .env's API_KEY" in wrong.stderr.decode()
    assert wrong.stderr.decode().count("API key") == 1  # said once
    assert not (tmp_path / "o").exists()
    right = remote(*args, cwd=work, key_env={"API_KEY": "k"})  # the environment's comes first, as for the server
    assert right.returncode == 0, right.stderr.decode()
    (work / ".env").write_text("API_KEY=k\n")
    again = remote(*args, "--overwrite", cwd=work)
    assert again.returncode == 0, again.stderr.decode()
    (work / ".env").write_text("API_KEY k\n")
    broken = remote(*args, cwd=work)
    assert broken.returncode == 2 and ".env, line 1: not a KEY=VALUE line" in broken.stderr.decode()


def test_the_server_s_options_need_a_server(photos, tmp_path):
    for option, value in (("--api-key-env", "MYKEY"), ("--timeout", "5")):
        result = invoke("restore", photos, "-o", tmp_path / "o", option, value)
        assert result.exit_code == 2 and f"{option} is for a server: give --server URL too" in result.stderr
    assert not (tmp_path / "o").exists()


def test_uploads_keep_to_the_server_s_limits(guarded, photos, tmp_path):
    shutil.copy(TEST_INPUTS / "chelsea_16bit.png", photos)  # 53 KB: over the 20 KB a file
    before = jobs_in(guarded)
    result = remote(photos, "-o", tmp_path / "o", "--server", guarded.url, "--json", key_env={"API_KEY": "k"})
    assert result.returncode == 1
    by_name = {Path(line["input"]).name: line for line in lines(result)[:-1]}
    assert [by_name[n]["status"] for n in ("cameraman_gray.png", "chelsea_16bit.png", "rocket.jpg")] == [
        "ok", "error", "ok"]
    assert by_name["chelsea_16bit.png"]["error"].startswith(f"{photos / 'chelsea_16bit.png'}: 53,250 bytes is over")
    assert jobs_in(guarded) == before + 2  # one file a request
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["cameraman_gray.png", "rocket.jpg"]


def test_a_stop_signal_leaves_the_job_to_the_server(guarded, held, photos, tmp_path):
    before = jobs_in(guarded)
    env = {**{k: v for k, v in os.environ.items() if k != "MYKEY"}, "API_KEY": "k"}
    said = tmp_path / "client.err"
    held.touch()  # the worker holds the job's image until the client was stopped, however slow the machine
    try:
        with open(said, "wb") as stderr_file:
            client = subprocess.Popen(client_command(photos / "rocket.jpg", "-o", tmp_path / "o", "--server",
                                                     guarded.url, say_when_following=True), env=env,
                                      stdout=subprocess.PIPE, stderr=stderr_file)
        # the job is queued and its id reached the client, which now follows it
        wait_until(lambda: FOLLOWING in said.read_text() or client.poll() is not None,
                   what="the client to hold its job")
        assert jobs_in(guarded) == before + 1
        client.send_signal(signal.SIGINT)
        client.communicate(timeout=60)
    finally:
        held.unlink()
    stderr = said.read_text()
    assert client.returncode == 130, stderr
    left = JOB_ID.findall(stderr)
    assert len(left) == 1 and "left to the server" in stderr
    assert guarded.wait_for(left[0], headers={"X-API-Key": "k"})["status"] == "completed"  # nothing was cancelled
    assert not (tmp_path / "o" / "rocket.jpg").exists()


def test_stdin_to_stdout_through_the_server(server):
    result = remote("-", "-o", "-", "--server", server.url, stdin=(TEST_INPUTS / "rocket.jpg").read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    from io import BytesIO

    with Image.open(BytesIO(result.stdout)) as image:
        assert (image.format, image.size) == ("JPEG", (192, 128))


def test_a_dry_run_plans_with_the_server_s_defaults_and_sends_nothing(server, photos, tmp_path):
    before = jobs_in(server)
    result = remote(photos, "-o", tmp_path / "o", "--server", server.url, "--dry-run", "--json")
    assert result.returncode == 0
    assert [(line["status"], line["in_size"]) for line in lines(result)[:-1]] == [
        ("planned", [128, 128]), ("planned", [96, 64])]
    assert jobs_in(server) == before and not (tmp_path / "o").exists()
