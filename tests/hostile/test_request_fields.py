"""The request fields and uploads this round added to ``POST /enhance`` (``model`` and its chains, ``face_model``,
``face_fidelity``, ``preset``, ``colorize``; videos), attacked as a hostile client would: models named by a path on
the server's disk, a chain or preset that would slip past the allow-lists, an existence test through the error
text, odd strings and repeated fields, and videos that are not what they say. Every refusal is a 4xx with a JSON
sentence that queues nothing and leaves another user's job alone; a bad video is its own file's error, and the
worker goes on with the next job. The Modal app's endpoint applies the same allow-lists."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TEST_INPUTS
from restorecli.cli.options import DEFAULTS
from restorecli.jobs.store import JobStore
from restorecli.models.registry import REGISTRY
from restorecli.server.config import load_config
from test_deploy import modal_app, post, web, worker  # noqa: F401 (the Modal endpoint's fixtures)
from test_serve import work

with warnings.catch_warnings():  # Starlette suggests httpx2 for its test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

    from restorecli.server.app import create_app

ROCKET = (TEST_INPUTS / "rocket.jpg").read_bytes()
# Weights the server finds installed (their content is the worker's to check)
INSTALLED = ("scunet-color-real-psnr", "realesrgan-x4plus", "gfpgan-1.4", "codeformer", "retinaface-resnet50")

# Requests naming what the operator did not offer. In a value, {evil} is a checkpoint on the server's disk that
# nobody offered, {model} the offered checkpoint's full path, {name} its file name (how clients name it),
# {weights} the server's weights folder.
NOT_OFFERED = [
    {"model": "/etc/passwd"},
    {"model": "{evil}"},
    {"model": "{model}"},  # an offered file, but by its path on the server
    {"model": "../{name}"},
    {"model": "./{name}"},
    {"model": "{name}/."},
    {"model": "realesrgan-x4plus,{evil}"},  # a chain with a path in it
    {"model": "{evil},realesrgan-x4plus"},
    {"model": "realesrgan-x4plus,/etc/passwd"},
    {"model": "realesrgan-x4plus-anime"},  # the registry knows it; this server does not offer it
    {"model": "REALESRGAN-X4PLUS"},
    {"model": "realesrgan-x4plus\x00/etc/passwd"},
    {"model": "file://{evil}"},
    {"face_model": "../../x.pth"},
    {"face_model": "{evil}"},
    {"face_model": "{weights}/GFPGANv1.4.pth"},  # an offered face model's weights, by their path
    {"face_model": "GFPGANv1.4.pth"},  # ... and by their file name
    {"face_model": "gfpgan-1.3"},
    {"face_model": "codeformer,{evil}"},
    {"preset": "jpeg-photo"},  # FBCNN is not offered: its expansion may not pass the allow-list
    {"preset": "old-photo,anime"},
    {"preset": "../old-photo"},
    {"preset": "{evil}"},
    {"preset": "old-photo", "model": "{evil}"},
    {"preset": "old-photo", "face_model": "{evil}"},
    {"preset": "anime"},  # its model is not offered here
    {"colorize": "always"},  # no DDColor here
    {"colorize": "{evil}"},
]


@pytest.fixture
def operator(tmp_path, make_model, monkeypatch):
    """A server offering a tiny checkpoint by its path, SCUNet and x4plus; gfpgan-1.4 and CodeFormer as face models;
    their weights installed. Beside it, a checkpoint nobody offered. A bystander's job waits in its queue.
    Returns (client, config, paths for the templates, the bystander's job id)."""
    monkeypatch.delenv("API_KEY", raising=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in INSTALLED:
        (weights / REGISTRY[name].filename).write_bytes(b"weights")
    evil = tmp_path / "elsewhere" / "evil.pth"
    evil.parent.mkdir()
    evil.write_bytes(b"whatever the worker would unpickle")
    model = make_model(2)
    config = load_config({**DEFAULTS, "model": str(model), "weights_dir": str(weights)}, queue=str(tmp_path / "queue"),
                         dotenv=tmp_path / "none.env", allow_model=["scunet-color-real-psnr", "realesrgan-x4plus"],
                         allow_face_model=["codeformer"])
    paths = {"evil": str(evil), "model": str(model), "name": model.name, "weights": str(weights)}
    with TestClient(create_app(config), base_url="http://localhost") as client:
        bystander = upload(client, outscale="3")
        assert bystander.status_code == 202, bystander.text
        yield client, config, paths, bystander.json()["job_id"]


def upload(client, files=(("rocket.jpg", ROCKET),), **fields):
    return client.post("/enhance", files=[("files", f) for f in files], data=fields)


def filled(fields: dict, paths: dict) -> dict:
    return {key: value.format(**paths) for key, value in fields.items()}


def assert_refused(answer, status: int = 422) -> str:
    """A JSON sentence with ``status``, no traceback or Python repr in it; returns the sentence."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/json")
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail
    assert "Traceback" not in detail and "Error(" not in detail and "internal error" not in detail
    return detail


def queued_options(config, answer) -> dict:
    """The options the job ``answer`` accepted was queued with."""
    assert answer.status_code == 202, answer.text
    store = JobStore(config.queue)
    try:
        return store.get(answer.json()["job_id"]).options
    finally:
        store.close()


def assert_bystander_untouched(config, job_id: str) -> None:
    """The bystander's job still waits, alone in the queue, with its own options and input."""
    store = JobStore(config.queue)
    try:
        assert store.counts()["queued"] == 1
        job = store.get(job_id)
        assert job.status == "queued" and job.options["outscale"] == 3.0
        assert (store.job_dir(job_id) / "inputs" / job.inputs[0]["stored"]).read_bytes() == ROCKET
    finally:
        store.close()


@pytest.mark.parametrize("fields", NOT_OFFERED, ids=lambda f: ",".join(f"{k}={v[:30]}" for k, v in f.items()))
def test_a_model_face_model_or_preset_the_operator_did_not_offer_is_refused(operator, fields):
    client, config, paths, bystander = operator
    sent = filled(fields, paths)
    detail = assert_refused(upload(client, **sent))
    for text in sent.values():  # what the client sent may come back; nothing else of the server's disk
        detail = detail.replace(text[:80], "")
    assert str(Path(paths["evil"]).parent) not in detail and paths["weights"] not in detail
    assert paths["model"] not in detail
    assert_bystander_untouched(config, bystander)


@pytest.mark.parametrize("field", ["model", "face_model", "preset"])
def test_whether_a_file_exists_on_the_server_cannot_be_read_from_the_refusal(operator, field):
    client, config, paths, bystander = operator
    missing = str(Path(paths["evil"]).with_name("nope.pth"))  # as long as evil.pth's path: quoted as far
    there = assert_refused(upload(client, **{field: paths["evil"]}))
    absent = assert_refused(upload(client, **{field: missing}))
    assert there.replace(paths["evil"][:80], "PATH") == absent.replace(missing[:80], "PATH")
    for name in ("/etc/passwd", "/etc/no-such-file"):  # a file any server has, and one it has not
        assert_refused(upload(client, **{field: f"realesrgan-x4plus,{name}"}))
    assert_bystander_untouched(config, bystander)


@pytest.mark.parametrize(("fields", "status", "fragment"), [
    ({"model": "\x00"}, 422, "is not offered"),
    ({"face_model": "codeformer\x00"}, 422, "is not offered"),
    ({"preset": "old-photo\x00"}, 422, "is not one of"),
    ({"preset": "\u202eotohp-dlo"}, 422, "is not one of"),  # a right-to-left override
    ({"colorize": "\ufeffauto"}, 422, "is not one of"),
    ({"format": "p\u0301ng"}, 422, "is not one of"),
    ({"face_fidelity": "0.5\x00"}, 422, "is not a number"),
    ({"face_fidelity": "\u00bd"}, 422, "is not a number"),
    ({"face_fidelity": "1e999"}, 422, "is not a finite number"),
    ({"face_fidelity": "nan"}, 422, "is not a finite number"),
    ({"face_enhance": "yes\x00"}, 422, "is not true or false"),
    ({"model": "m" * 1024}, 422, "is not offered"),  # the longest a field may be: refused, quoted in part
    ({"model": "m" * 1025}, 413, "over 1024 bytes"),
    ({"face_model": "\u00e9" * 513}, 413, "over 1024 bytes"),  # 513 characters, 1026 bytes
])
def test_odd_strings_in_the_new_fields_are_refused_in_words(operator, fields, status, fragment):
    client, config, _, bystander = operator
    detail = assert_refused(upload(client, **fields), status)
    assert fragment in detail and len(detail) < 600
    assert_bystander_untouched(config, bystander)


@pytest.mark.parametrize("name", ["weights_dir", "save_faces", "face_detector", "colorize_model", "device",
                                  "max_pixels", "max_output_pixels", "output_dir", "Model", "model "])
def test_the_server_s_own_options_cannot_be_set_by_a_request(operator, name):
    """The paths and limits a job runs with are the operator's: a field naming one is refused, whatever its value."""
    client, config, paths, bystander = operator
    detail = assert_refused(upload(client, **{name: paths["evil"]}))
    assert detail.startswith("unknown field '") and "; the fields are files, face_enhance" in detail
    assert_bystander_untouched(config, bystander)


def test_invalid_utf8_and_repeated_new_fields_are_refused(operator):
    client, config, _, bystander = operator
    for name in ("model", "face_model", "preset", "colorize"):
        bad = client.post("/enhance", files=[("files", ("a.jpg", ROCKET)), (name, (None, b"\xff\xfe\x80"))])
        assert_refused(bad)
        twice = client.post("/enhance", files=[("files", ("a.jpg", ROCKET))], data={name: ["", "realesrgan-x4plus"]})
        assert "given twice" in assert_refused(twice)
    assert_bystander_untouched(config, bystander)


def test_empty_or_blank_new_fields_take_the_server_s_defaults(operator):
    client, config, _, _ = operator
    options = queued_options(config, upload(client, model="", face_model=" ", preset="\t", colorize="",
                                            face_fidelity=""))
    assert (options["model"], options["face_model"], options["preset"], options["colorize"]) == (
        config.defaults["model"], "gfpgan-1.4", None, "never")


def test_an_offered_preset_and_face_model_together_reach_the_job_and_nothing_more(operator):
    client, config, _, _ = operator
    options = queued_options(config, upload(client, preset="old-photo", face_model="codeformer", face_fidelity="0.7"))
    assert (options["model"], options["face_enhance"], options["face_model"], options["face_fidelity"]) == (
        "scunet-color-real-psnr,realesrgan-x4plus", True, "codeformer", 0.7)
    assert options["face_detector"] == config.defaults["face_detector"]  # never the client's


# ----------------------------------------------------------------------------- the Modal endpoint


MODAL_NOT_OFFERED = [
    {"model": "/etc/passwd"},
    {"model": "{evil}"},
    {"model": "realesr-animevideov3,{evil}"},
    {"face_model": "{evil}"},
    {"face_model": "../../x.pth"},
    {"preset": "old-photo"},  # its models are not offered there
    {"preset": "{evil}"},
]


@pytest.mark.parametrize("fields", MODAL_NOT_OFFERED, ids=lambda f: ",".join(f"{k}={v[:30]}" for k, v in f.items()))
def test_the_modal_endpoint_applies_the_same_allow_lists(web, tmp_path, fields):
    client, backend, calls = web
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"not offered")
    detail = assert_refused(post(client, ("a.jpg", ROCKET), **filled(fields, {"evil": str(evil)})))
    assert "not offered" in detail or "is not one of" in detail or "does not offer" in detail
    assert backend.records == {} and calls.started == []


# ----------------------------------------------------------------------------- videos that are not what they say


def av_module():
    return pytest.importorskip("av", reason="PyAV (restorecli[video]) is not installed: the video tests need it")


def mjpeg_video(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """A Matroska MJPEG video with one frame of each of ``sizes`` (w, h): its stream states the first size only,
    and FFmpeg decodes each JPEG at its own."""
    av = av_module()
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=24)
        stream.width, stream.height, stream.pix_fmt = *sizes[0], "yuvj420p"
        stream.time_base = Fraction(1, 24)
        for index, (width, height) in enumerate(sizes):
            frame = cv2.imencode(".jpg", rng.integers(0, 255, (height, width, 3), np.uint8))[1].tobytes()
            packet = av.Packet(frame)
            packet.stream, packet.pts, packet.dts, packet.duration = stream, index, index, 1
            packet.time_base = Fraction(1, 24)
            out.mux(packet)
    return path


@pytest.fixture
def video_server(tmp_path, make_model, monkeypatch):
    """(client, config): a server with no workers of its own (``work`` runs its queue here) whose jobs refuse frames
    over 10,000 pixels (serve's --max-pixels)."""
    monkeypatch.delenv("API_KEY", raising=False)
    config = load_config({**DEFAULTS, "model": str(make_model(2)), "max_pixels": 10_000},
                         queue=str(tmp_path / "queue"), dotenv=tmp_path / "none.env")
    with TestClient(create_app(config), base_url="http://localhost") as client:
        yield client, config


def test_a_video_whose_later_frames_outgrow_its_stated_size_is_that_file_s_error(video_server, tmp_path):
    """--max-pixels is checked against the size a video's stream states; an MJPEG frame (or a new H.264 SPS) may
    be far larger. The frame is refused by size before it is converted or restored, and the next job runs."""
    client, config = video_server
    growing = mjpeg_video(tmp_path / "growing.mkv", [(64, 48), (400, 300), (400, 300)])
    steady = mjpeg_video(tmp_path / "steady.mkv", [(64, 48)] * 3)
    hostile = upload(client, files=[("growing.mkv", growing.read_bytes()), ("rocket-as.mkv", ROCKET)])
    after = upload(client, files=[("steady.mkv", steady.read_bytes())])
    work(config)
    first = client.get(f"/status/{hostile.json()['job_id']}").json()
    assert first["status"] == "completed", first  # the JPEG (told by its content) was restored
    grown, jpeg = first["results"]
    assert grown["status"] == "error" and grown["url"] is None
    assert grown["error"] == ("growing.mkv: frame 1 is 400x300 pixels where the video's frames are 64x48; "
                              "restorecli restores videos whose frames keep one size")
    assert jpeg["status"] == "ok" and jpeg["url"].endswith(".jpg")
    second = client.get(f"/status/{after.json()['job_id']}").json()
    assert second["status"] == "completed" and second["results"][0]["out_size"] == [128, 96], second


def test_videos_that_are_not_what_their_names_say_fail_alone_in_words(video_server, tmp_path):
    client, config = video_server
    steady = mjpeg_video(tmp_path / "steady.mkv", [(64, 48)] * 2).read_bytes()
    large = mjpeg_video(tmp_path / "large.mkv", [(128, 96)] * 2).read_bytes()  # 12,288 pixels a frame: over 10,000
    files = [("notes.mp4", b"not a video, only words " * 20), ("empty.webm", b""), ("half.mkv", steady[:300]),
             ("large.mkv", large), ("clip.jpg", steady), ("../../../etc/cron.d/x.mkv", steady),
             ("a\\b/..\\c.webm.png", steady)]
    answer = upload(client, files=files)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    stored = sorted(p.name for p in (config.queue / "jobs" / job_id / "inputs").iterdir())
    assert stored == ["001.mp4", "002.webm", "003.mkv", "004.mkv", "005.jpg", "006.mkv", "007.png"]  # the server's
    work(config)
    status = client.get(f"/status/{job_id}").json()
    assert status["status"] == "completed", status
    errors = {r["original_filename"]: r["error"] for r in status["results"]}
    assert errors["notes.mp4"].startswith("notes.mp4: not a readable video")
    assert errors["empty.webm"].startswith("empty.webm: not a readable video")
    assert errors["half.mkv"].startswith("half.mkv: ")
    assert errors["large.mkv"] == "large.mkv: its frames are 128x96 pixels, over the limit of 10,000 (--max-pixels)"
    assert errors["clip.jpg"] == "clip.jpg: not an image (unrecognised format)"
    assert errors["a\\b/..\\c.webm.png"] == "a\\b/..\\c.webm.png: not an image (unrecognised format)"
    assert errors["../../../etc/cron.d/x.mkv"] is None  # a name is display text: restored in the job's folder
    served = {r["original_filename"]: r["url"] for r in status["results"] if r["url"]}
    got = client.get(served["../../../etc/cron.d/x.mkv"])
    assert got.status_code == 200 and got.headers["content-type"] == "video/x-matroska"
    assert got.headers["content-disposition"] == 'inline; filename="x.mkv"'
    assert not (tmp_path / "etc").exists()
    for result in status["results"]:
        assert "Traceback" not in (result["error"] or "") and "Error(" not in (result["error"] or "")


# ----------------------------------------------------------------------------- a server whose own model is a chain


def test_a_server_s_own_preset_is_listed_runnable_and_gives_way_to_a_model_a_request_names(tmp_path, make_model,
                                                                                         monkeypatch):
    """serve --preset old-photo: /models listed its chain as a missing checkpoint file (not runnable, no scale),
    and a request naming an offered model got the preset's chain instead, silently (or, for a checkpoint, a 422
    about --preset and --model, flags the client never gave)."""
    monkeypatch.delenv("API_KEY", raising=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("scunet-color-real-psnr", "realesrgan-x4plus", "gfpgan-1.4", "retinaface-resnet50"):
        (weights / REGISTRY[name].filename).write_bytes(b"weights")
    tiny = make_model(2)
    config = load_config({**DEFAULTS, "preset": "old-photo", "weights_dir": str(weights)},
                         queue=str(tmp_path / "queue"), dotenv=tmp_path / "none.env",
                         allow_model=["realesrgan-x4plus", str(tiny)])
    chain = "scunet-color-real-psnr,realesrgan-x4plus"
    with TestClient(create_app(config), base_url="http://localhost") as client:
        document = client.get("/models").json()
        assert document["default"] == chain
        assert document["models"][0] == {
            "name": chain, "scale": 4, "status": "installed", "runnable": True,
            "description": "models run one after another: scunet-color-real-psnr, realesrgan-x4plus"}
        form = client.get("/openapi.json").json()["paths"]["/enhance"]["post"]["requestBody"]["content"][
            "multipart/form-data"]["schema"]["properties"]
        assert form["model"]["enum"][0] == chain
        chosen = {}
        for fields in ({}, {"model": chain}, {"model": "realesrgan-x4plus"}, {"model": tiny.name}):
            options = queued_options(config, upload(client, **fields))
            chosen[fields.get("model")] = (options["model"], options["preset"], options["face_enhance"])
        assert chosen == {None: (chain, "old-photo", True), chain: (chain, None, True),
                          "realesrgan-x4plus": ("realesrgan-x4plus", None, True), tiny.name: (str(tiny), None, True)}
        (weights / REGISTRY["scunet-color-real-psnr"].filename).unlink()
        assert client.get("/models").json()["models"][0]["runnable"] is False
        assert "model scunet-color-real-psnr is not installed on this server" in assert_refused(upload(client))


def test_a_chain_of_checkpoints_is_offered_by_all_its_file_names_not_its_last(tmp_path, make_model, monkeypatch):
    """serve --model /x/a.safetensors,/x/b.safetensors was offered as 'b.safetensors' (the file name of the whole
    text), so a request naming b alone got the chain, and --allow-model b was refused as sharing its name."""
    monkeypatch.delenv("API_KEY", raising=False)
    first, second = make_model(2, seed=0), make_model(2, seed=1)
    config = load_config({**DEFAULTS, "model": f"{first},{second}"}, queue=str(tmp_path / "queue"),
                         dotenv=tmp_path / "none.env", allow_model=[str(second)])
    with TestClient(create_app(config), base_url="http://localhost") as client:
        listed = [model["name"] for model in client.get("/models").json()["models"]]
        assert listed == [f"{first.name},{second.name}", second.name]
        assert queued_options(config, upload(client, model=second.name))["model"] == str(second)
        assert queued_options(config, upload(client, model=listed[0]))["model"] == f"{first},{second}"


def animated_gif(path: Path) -> Path:
    from PIL import Image

    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def frame_size(path: Path) -> list[int]:
    """The (w, h) of the first frame of the video or animation at ``path``."""
    if path.suffix == ".gif":
        from PIL import Image

        with Image.open(path) as image:
            return list(image.size)
    with av_module().open(str(path)) as container:
        frame = next(container.decode(video=0))
    return [frame.width, frame.height]


@pytest.mark.parametrize("suffix", [".mkv", ".gif"])
def test_one_user_s_outscale_never_reaches_another_user_s_video(video_server, tmp_path, suffix):
    """A worker keeps its loaded models for the next job that shares them; a video's (or an animation's) frames
    were restored with the options of the job that loaded them (its outscale, face weight, fidelity), not with
    their own job's."""
    client, config = video_server
    made = tmp_path / f"clip{suffix}"
    clip = (mjpeg_video(made, [(64, 48)] * 2) if suffix == ".mkv" else animated_gif(made)).read_bytes()
    first = upload(client, files=[(f"first{suffix}", clip)], outscale="3").json()["job_id"]
    second = upload(client, files=[(f"second{suffix}", clip)]).json()["job_id"]
    work(config)  # one worker, one loading of the model, both jobs
    sizes = {}
    for job_id in (first, second):
        result = client.get(f"/status/{job_id}").json()["results"][0]
        assert result["status"] == "ok", result
        got = tmp_path / f"{job_id}{suffix}"
        got.write_bytes(client.get(result["url"]).content)
        sizes[job_id] = (result["out_size"], frame_size(got))
    assert sizes == {first: ([192, 144], [192, 144]), second: ([128, 96], [128, 96])}
