"""The container smoke test: the project's Dockerfile built with podman on a local Debian base, run with an API
key, and used over HTTP as a client would. Deselected from the default run (pyproject's addopts); run it with
``nox -s container`` (.ci/run does). Where podman cannot run containers, every test here is skipped and says why.

Only the standard library, pytest and Pillow on the host: the container does the restoring.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

import container_build as build

pytestmark = pytest.mark.container

ROCKET = build.ROOT / "test_inputs" / "rocket.jpg"  # 96x64: the embedded realesrgan-x4plus on the CPU, in seconds


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> build.Podman:
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    problem = build.podman_problem(conf)
    if problem:
        pytest.skip(problem)
    return build.Podman(conf)


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    try:
        base = build.ensure_base_image(podman, work)
    except FileNotFoundError as exc:  # no debootstrap: no base image can be made here
        pytest.skip(str(exc))
    print(f"\nbase image {base} ready in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    tag = build.build_image(podman, base, work, work / "build.log")
    print(f"\nimage {tag} built in {time.monotonic() - started:.0f} s")
    return tag


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A running container of the image: its name, volumes, key and published address."""

    def __init__(self, podman: build.Podman, image: str):
        self.podman = podman
        token = secrets.token_hex(4)
        self.name = f"restorecli-smoke-{token}"
        self.volumes = {"queue": f"{self.name}-queue", "weights": f"{self.name}-weights"}
        self.key = secrets.token_hex(16)
        self.port = free_port()
        podman.run("run", "-d", "--name", self.name, "-e", f"API_KEY={self.key}",
                   "-p", f"127.0.0.1:{self.port}:8001",
                   "-v", f"{self.volumes['queue']}:/data/queue", "-v", f"{self.volumes['weights']}:/data/weights",
                   image, timeout=120)

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None,
                key: bool = True) -> tuple[int, bytes, Message]:
        headers = {**({"X-API-Key": self.key} if key else {}), **(headers or {})}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def json(self, path: str) -> dict:
        status, body, _ = self.request(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def health(self) -> str:
        shown = self.podman.run("inspect", "--format", "{{.State.Health.Status}}", self.name, check=False)
        return shown.stdout.strip()

    def wait_healthy(self, seconds: float = 180) -> float:
        """Run the image's HEALTHCHECK until it passes (podman's own timer needs systemd, which containers here
        lack); returns the seconds it took. Fails with the container's log if it stops or never passes."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            state = self.podman.run("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            if state != "running":
                pytest.fail(f"container {state}:\n{self.logs()}")
            if self.podman.run("healthcheck", "run", self.name, check=False).returncode == 0:
                assert self.health() == "healthy"
                return time.monotonic() - started
            time.sleep(1)
        pytest.fail(f"no healthy HEALTHCHECK within {seconds} s:\n{self.logs()}")

    def logs(self) -> str:
        shown = self.podman.run("logs", self.name, check=False)
        return (shown.stdout + shown.stderr)[-4000:]

    def remove(self) -> None:
        self.podman.run("rm", "-f", "-t", "10", self.name, check=False)
        for volume in self.volumes.values():
            self.podman.run("volume", "rm", "-f", volume, check=False)


@pytest.fixture(scope="module")
def served(podman, image):
    container = Served(podman, image)
    try:
        seconds = container.wait_healthy()
        print(f"\nhealthy after {seconds:.1f} s")
        yield container
    finally:
        container.remove()


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = f"restorecli-{secrets.token_hex(8)}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_the_image_runs_as_non_root_with_its_volumes_port_and_healthcheck(podman, image, served):
    inspected = json.loads(podman.run("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert set(config["Volumes"]) == {"/data/queue", "/data/weights"}
    assert "8001/tcp" in config["ExposedPorts"]
    assert "/health" in " ".join(inspected["Healthcheck"]["Test"])  # kept: built in docker format
    assert config["Cmd"] == ["restorecli", "serve", "--host", "0.0.0.0"]
    uid = podman.run("exec", served.name, "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0
    # the named volumes started owned by that user, so the server could create its queue in them
    owners = podman.run("exec", served.name, "stat", "-c", "%u", "/data/queue", "/data/weights").stdout.split()
    assert owners == [uid, uid]
    health = served.json("/health")
    assert health["status"] == "ok" and health["auth_required"] is True and health["worker_alive"] is True


def test_without_a_key_serve_refuses_to_listen_beyond_the_container(podman, image):
    done = podman.run("run", "--rm", image, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "API_KEY" in done.stderr and "--no-auth" in done.stderr


def test_a_photo_is_restored_4x_kept_on_the_queue_volume_and_served_after_a_restart(podman, served):
    from PIL import Image

    data = ROCKET.read_bytes()
    payload, content_type = multipart("files", "rocket.jpg", data, "image/jpeg")
    status, body, _ = served.request("/enhance", payload, {"Content-Type": content_type}, key=False)
    assert status == 401, body
    status, body, _ = served.request("/enhance", payload, {"Content-Type": content_type})
    assert status == 202, body
    job_id = json.loads(body)["job_id"]

    deadline = time.monotonic() + 600  # the first job converts the embedded model into the weights volume
    document = served.json(f"/status/{job_id}")
    while document["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(1)
        document = served.json(f"/status/{job_id}")
    assert document["status"] == "completed", (document, served.logs())
    (result,) = document["results"]
    assert result["status"] == "ok" and result["in_size"] == [96, 64] and result["out_size"] == [384, 256]

    status, restored, headers = served.request(result["url"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(restored)) as picture:
        picture.load()
        assert picture.size == (384, 256) and picture.mode == "RGB"

    # the file is on the queue volume (its mount point on the host), byte for byte what was served
    mountpoint = Path(podman.run("volume", "inspect", "--format", "{{.Mountpoint}}",
                                 served.volumes["queue"]).stdout.strip())
    on_volume = list((mountpoint / "jobs" / job_id / "outputs").iterdir())
    assert [p.read_bytes() for p in on_volume] == [restored]
    weights = Path(podman.run("volume", "inspect", "--format", "{{.Mountpoint}}",
                              served.volumes["weights"]).stdout.strip())
    assert (weights / "realesrgan-x4plus.safetensors").is_file()  # converted once, kept for the next start

    podman.run("stop", "-t", "30", served.name, timeout=90)
    # stopped by SIGTERM within the grace period (serve and its workers exit cleanly), not killed
    state = podman.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", served.name).stdout.split()
    assert state == ["exited", "0"], served.logs()
    podman.run("start", served.name)
    served.wait_healthy()
    after = served.json(f"/status/{job_id}")
    assert after["status"] == "completed" and after["results"][0]["url"] == result["url"]
    status, again, _ = served.request(result["url"])
    assert status == 200 and again == restored


def test_compose_yaml_loads_in_podman_compose(tmp_path):
    """podman-compose (installed by the nox session) resolves compose.yaml, taking API_KEY from the .env file
    it is given, and refuses without one."""
    # on PATH, or beside this Python (a virtual environment's bin/ that is not activated)
    compose = shutil.which("podman-compose") or shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if compose is None:
        pytest.skip("podman-compose is not installed (nox -s container installs it)")
    import yaml  # podman-compose's own dependency

    env = {k: v for k, v in os.environ.items() if k != "API_KEY"}
    dotenv = tmp_path / ".env"

    def config(*args: str) -> subprocess.CompletedProcess[str]:
        # --dry-run: podman-compose otherwise asks podman its version first, and this check needs no podman
        command = [compose, "--dry-run", "-f", str(build.ROOT / "compose.yaml"), "--env-file", str(dotenv), *args,
                   "config"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    dotenv.write_text("API_KEY=k-from-dotenv\n")
    shown = config()
    assert shown.returncode == 0, shown.stderr
    server = yaml.safe_load(shown.stdout)["services"]["restorecli"]
    assert server["environment"]["API_KEY"] == "k-from-dotenv"
    assert server["restart"] == "unless-stopped" and server["deploy"]["resources"]["limits"]["memory"] == "6g"
    assert sorted(server["volumes"]) == ["queue:/data/queue", "weights:/data/weights"]
    tools = yaml.safe_load(config("--profile", "tools").stdout)["services"]
    assert "download-weights" in tools and "download-weights" not in yaml.safe_load(shown.stdout)["services"]
    assert tools["download-weights"]["volumes"] == ["weights:/data/weights"]

    dotenv.write_text("# no key\n")
    refused = config()
    assert refused.returncode != 0 and "API_KEY" in refused.stderr
