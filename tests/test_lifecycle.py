"""One image lifecycle, whatever runs it: the same small batch (photos in three formats, among them a grey one, a
16-bit one and one with alpha, and a file that is no image) restored by the local batch (``restore``), the queue's
worker, the Ray pool, the client of a live server (``restore --server``) and the Modal function (its ``.local()``
path), with the same results (status, sizes, the error's words) and the same output pixels. An output already in
place is skipped alike by the runtimes that plan against a folder (the local batch and the client), and a Modal call
retried after its container died goes on where it stopped. A face image (GFPGAN with random weights) gives the local
batch's face count and pixels through the worker, the Ray pool and the Modal app (slow: ``nox -s slow``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TEST_INPUTS
from helpers.cli import invoke, json_lines
from live_server import LiveServer
from remote_cli import remote
from test_deploy import modal_app  # noqa: F401  (the fixture: deploy/modal_app.py imported as Modal does)

NAMES = ["rocket.jpg", "cameraman_gray.png", "coffee_alpha.png", "chelsea_16bit.png", "broken.png"]
RUNTIMES = ["local", "worker", "ray", "client", "modal"]
# bf16 (what auto runs on a CPU with bf16 units) rounds differently with the threads a runtime gives torch, and
# --backend auto may choose ncnn or OpenVINO in one runtime and torch in another (the tiny test model takes a
# millisecond or two on each, too close to tell apart), whose fp32 results differ in the last bit of a 16-bit
# output: the comparison is of the lifecycle, so every runtime runs the model with torch in fp32 on the CPU
FP32 = ("--device", "cpu", "--precision", "fp32", "--backend", "torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import tiny_compact_state
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("model") / "tiny-x2.safetensors"
    save_file(tiny_compact_state(2), str(path))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for name in NAMES[:-1]:
        shutil.copy(TEST_INPUTS / name, folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the rest of a PNG" * 8)
    return folder


def pixels(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def words(result: dict) -> str | None:
    """The error as a person reads it, less the way the runtime names the file (a path, the name sent)."""
    error = result.get("error")
    return error.split("broken.png", 1)[1] if error else None


def summary(results: list[dict], outputs: dict[str, bytes]) -> dict[str, tuple]:
    """Per input: (status, in_size, out_size, the error's words, the output's pixels' bytes)."""
    found = {}
    for result in results:
        name = Path(result.get("original_filename") or result["input"]).name
        sizes = tuple(result.get("in_size") or ()), tuple(result.get("out_size") or ())
        image = outputs.get(name)
        found[name] = (result["status"], *sizes, words(result), pixels(image).tobytes() if image else None)
    return found


def local_run(tmp_path: Path, model: Path, inputs: Path) -> dict:
    out = tmp_path / "out"
    result = invoke("restore", *sorted(inputs.iterdir()), "-o", out, "--model", model, *FP32, "--json")
    assert result.exit_code == 1, result.stderr  # one image failed
    return items_summary(json_lines(result))


def items_summary(lines: list[dict]) -> dict:
    items = [line for line in lines if "input" in line]
    return summary(items, {Path(i["input"]).name: Path(i["output"]).read_bytes() for i in items if i["status"] == "ok"})


def queued(tmp_path: Path, model: Path, inputs: Path, *worker: str) -> dict:
    queue = tmp_path / "queue"
    submitted = invoke("submit", *sorted(inputs.iterdir()), "--queue", queue, "--model", model, *FP32, "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}  # Ray keeps its token in ~/.ray
    ran = subprocess.run([sys.executable, "-m", "restorecli", "worker", "--queue", str(queue), "--once", *worker], capture_output=True, text=True, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr
    document = json.loads((queue / "jobs" / job_id / "result.json").read_text())
    outputs = {Path(r["original_filename"]).name: (queue / r["output"]).read_bytes()
               for r in document["results"] if r["status"] == "ok"}
    return summary(document["results"], outputs)


def serving(tmp_path: Path, model: Path) -> LiveServer:
    """A live server whose default model is ``model`` (the client names none), in a home of its own."""
    return LiveServer(tmp_path, "--model", str(model), *FP32, env={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)})


def client_run(tmp_path: Path, model: Path, inputs: Path) -> dict:
    with serving(tmp_path, model) as server:
        result = remote(*sorted(inputs.iterdir()), "-o", tmp_path / "out", "--server", server.url, "--json",
                        cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    return items_summary(json_lines(result))


def modal_run(tmp_path: Path, model: Path, inputs: Path, modal_app) -> dict:
    files = modal_app.JobFiles(tmp_path / "files")
    backend = modal_app.Backend({}, files, lambda job_id, options: "fc-1", lambda call: None)
    job_id = "20261207-010203-" + "a" * 32
    stored = []
    for number, path in enumerate(sorted(inputs.iterdir()), 1):
        name = f"{number:03d}{path.suffix}"
        files.write(job_id, {f"inputs/{name}": path.read_bytes()})
        stored.append({"original_filename": path.name, "stored": name})
    backend.records[job_id] = modal_app.new_record(job_id, {"model": str(model), "format": "same", "device": "cpu",
                                                                 "precision": "fp32"}, stored)
    restore = modal_app.Restore(model=str(model), precision="fp32", backend="torch")
    assert modal_app.process_job(backend, restore.restore_items, job_id) == "completed"
    results = backend.records[job_id]["results"]
    outputs = {r["original_filename"]: files.read(job_id, f"outputs/{r['output']}") for r in results
               if r["status"] == "ok"}
    return summary(results, outputs)


@pytest.fixture(scope="module")
def expected(tmp_path_factory, model, inputs) -> dict:
    """What the local batch makes of the batch: every runtime is held to it."""
    return local_run(tmp_path_factory.mktemp("local"), model, inputs)


def test_the_local_batch_restores_what_it_can_and_words_the_broken_file(expected):
    assert [expected[name][0] for name in NAMES] == ["ok"] * 4 + ["error"]
    assert expected["rocket.jpg"][1:3] == ((96, 64), (192, 128))
    assert expected["broken.png"][3]  # said why, not only that it failed


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
@pytest.mark.parametrize("runtime", RUNTIMES[1:])
def test_every_runtime_gives_the_local_batch_s_results_and_pixels(tmp_path, model, inputs, expected, runtime,
                                                                   request):
    if runtime == "ray":
        pytest.importorskip("ray", reason="Ray is not installed: pip install 'restorecli[ray]'")
    run = {"worker": lambda: queued(tmp_path, model, inputs),
           "ray": lambda: queued(tmp_path, model, inputs, "--ray", "local", "--actors", "1"),
           "client": lambda: client_run(tmp_path, model, inputs),
           "modal": lambda: modal_run(tmp_path, model, inputs, request.getfixturevalue("modal_app"))}[runtime]
    found = run()
    assert sorted(found) == sorted(expected)
    for name in NAMES:
        status, in_size, out_size, error, image = found[name]
        assert (status, in_size, out_size, error) == expected[name][:4], (runtime, name)
        assert image == expected[name][4], f"{runtime}: {name}'s output differs from the local batch's"


@pytest.mark.parametrize("runtime", ["local", "client"])
def test_an_output_already_in_place_is_skipped_alike(tmp_path, model, inputs, runtime):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rocket.png").write_bytes(b"an earlier run's output")  # rocket.jpg -> rocket.png with --format png
    args = [*map(str, sorted(inputs.iterdir())), "-o", str(out), "--format", "png", "--json"]
    if runtime == "local":
        result = invoke("restore", *args, "--model", model, *FP32)
        code = result.exit_code
    else:
        with serving(tmp_path, model) as server:
            result = remote(*args, "--server", server.url, cwd=tmp_path)
        code = result.returncode
    assert code == 1  # the broken file
    items = {Path(i["input"]).name: i for i in json_lines(result) if "input" in i}
    assert items["rocket.jpg"]["status"] == "skipped" and "exists" in items["rocket.jpg"]["error"]  # the reason
    assert (out / "rocket.png").read_bytes() == b"an earlier run's output"
    assert [items[name]["status"] for name in NAMES[1:]] == ["ok", "ok", "ok", "error"]


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_a_retried_modal_call_goes_on_where_the_last_one_stopped(tmp_path, model, inputs, modal_app):  # noqa: F811
    files = modal_app.JobFiles(tmp_path / "files")
    backend = modal_app.Backend({}, files, lambda job_id, options: "fc-1", lambda call: None)
    job_id, sent = "20261207-010203-" + "b" * 32, []
    names = ["rocket.jpg", "broken.png", "cameraman_gray.png"]
    stored = [{"original_filename": name, "stored": f"{n:03d}{Path(name).suffix}"} for n, name in enumerate(names, 1)]
    for entry in stored:
        files.write(job_id, {f"inputs/{entry['stored']}": (inputs / entry["original_filename"]).read_bytes()})
    backend.records[job_id] = modal_app.new_record(job_id, {"model": str(model), "format": "same", "device": "cpu",
                                                             "precision": "fp32"}, stored)
    restore = modal_app.Restore(model=str(model), precision="fp32", backend="torch")  # no probe to wait for

    def noting(dies_at: int | None):
        """The container's batch, each image's turn noted in ``sent``; the container dies at the ``dies_at``-th."""

        def restore_items(items, options, on_progress):
            def told(event, payload):
                if event == "item":
                    sent.append(Path(payload).name)
                    if len(sent) == dies_at:
                        raise SystemExit("the container died")  # as Modal sees a container lost mid-call
                on_progress(event, payload)

            return restore.restore_items(items, options, told)

        return restore_items

    with pytest.raises(SystemExit):
        modal_app.process_job(backend, noting(3), job_id)
    assert files.read(job_id, "outputs/001.jpg") is not None  # written as it finished, not at the job's end
    assert [r["status"] for r in backend.records[job_id]["progress"]] == ["ok", "error"]
    assert modal_app.process_job(backend, noting(None), job_id) == "completed"
    assert sent == ["001.jpg", "002.png", "003.png", "003.png"]  # neither earlier image was tried again
    record = backend.records[job_id]
    assert [r["status"] for r in record["results"]] == ["ok", "error", "ok"]
    assert [r["original_filename"] for r in record["results"]] == names
    assert record["results"][1]["error"].startswith("broken.png: ")  # the name the user sent, not the stored one


def test_a_re_run_with_every_output_in_place_loads_no_model(tmp_path, model, inputs, monkeypatch):
    """A finished batch run again (a cron job's second run) skips every image without loading the models: no
    weights read, no device touched; one output missing, and they are loaded for it. An animated GIF among them
    counts as done by its own output (a GIF), not by the PNG a still GIF would have."""
    from test_animated import make_animation

    from restorecli.pipeline import Restorer

    photos = [inputs / name for name in NAMES[:-1]] + [make_animation(tmp_path / "waves.gif", count=2)]
    first = invoke("restore", *photos, "-o", tmp_path / "out", "--model", model, *FP32, "--json")
    assert first.exit_code == 0, first.stderr
    real, loads = Restorer.from_options, []

    def loading(options, notice=None):
        loads.append(options.model)
        return real(options, notice)

    monkeypatch.setattr(Restorer, "from_options", staticmethod(loading))
    again = invoke("restore", *photos, "-o", tmp_path / "out", "--model", model, *FP32, "--json")
    assert again.exit_code == 0, again.stderr
    assert (tmp_path / "out" / "waves.gif").is_file() and not (tmp_path / "out" / "waves.png").exists()
    assert [i["status"] for i in json_lines(again) if i["type"] == "item"] == ["skipped"] * 5 and loads == []
    (tmp_path / "out" / "rocket.jpg").unlink()
    third = invoke("restore", *photos, "-o", tmp_path / "out", "--model", model, *FP32, "--json")
    assert [i["status"] for i in json_lines(third) if i["type"] == "item"] == ["ok"] + ["skipped"] * 4
    assert loads == [str(model)]


def test_an_image_s_seconds_are_its_own_work_not_its_wait_behind_the_image_before(tmp_path, model, inputs,
                                                                                  monkeypatch):
    """The second image is read ahead while the model has the first; the first's model run is held 3 s (the slow
    model under test, not a wait for something): the second's seconds count its reading and its own model run, not
    those 3 s, while the first's count them."""
    import threading

    from restorecli.pipeline import runner

    real, calls = runner.enhance_rows, []
    second_read = threading.Event()
    real_prepare = runner.Restorer.prepare

    def prepare(self, data, name, *args, **kwargs):
        prepared = real_prepare(self, data, name, *args, **kwargs)
        if name.endswith("rocket.jpg"):
            second_read.set()
        return prepared

    def model_run(model_, color, *args, **kwargs):
        calls.append(color.shape)
        if len(calls) == 1:
            assert second_read.wait(60)  # the second image is read ahead meanwhile
            threading.Event().wait(3.0)  # a model this slow on the first image
        return real(model_, color, *args, **kwargs)

    monkeypatch.setattr(runner.Restorer, "prepare", prepare)
    monkeypatch.setattr(runner, "enhance_rows", model_run)
    first, second = inputs / "cameraman_gray.png", inputs / "rocket.jpg"
    result = invoke("restore", first, second, "-o", tmp_path / "out", "--model", model, *FP32, "--format", "png",
                    "--json")
    assert result.exit_code == 0, result.stderr
    items = [line for line in json_lines(result) if line["type"] == "item"]
    assert [Path(i["input"]).name for i in items] == [first.name, second.name]
    assert items[0]["seconds"] >= 3.0
    assert items[1]["seconds"] < 2.0, items  # without the 3 s it waited
    summary = json_lines(result)[-1]
    assert summary["seconds"] >= items[0]["seconds"] and summary["images_per_second"] > 0


@pytest.mark.slow  # 14-22 s on 2 cores: GFPGAN's 512-pixel face in a worker process, or a Ray pool's
@pytest.mark.parametrize("runtime", ["worker", "ray"])
def test_a_face_image_is_restored_alike_by_the_local_batch_the_worker_and_the_ray_pool(tmp_path, model, face_files,
                                                                                       runtime):
    """The face stage (detection, GFPGAN in its official layout with random weights, paste-back) runs where the
    image does: the queue's worker and a Ray actor give the local batch's face count and pixels. (The Modal app,
    which loads only the registry's face models, is compared below under entries whose hashes the test sets.)"""
    if runtime == "ray":
        pytest.importorskip("ray", reason="Ray is not installed: pip install 'restorecli[ray]'")
    weights, detector = face_files
    photo = face_photo(tmp_path / "faces")
    faces = ("--face-enhance", "--face-model", weights / "GFPGANv1.3.pth", "--face-detector", detector)
    expected = local_faces(tmp_path / "out", model, photo, *faces)
    queue = tmp_path / "queue"
    submitted = invoke("submit", photo, "--queue", queue, "--model", model, *FP32, *faces, "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    extra = ["--ray", "local", "--actors", "1"] if runtime == "ray" else []
    ran = subprocess.run([sys.executable, "-m", "restorecli", "worker", "--queue", str(queue), "--once", *extra],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr
    [result] = json.loads((queue / "jobs" / job_id / "result.json").read_text())["results"]
    assert result["status"] == "ok" and result["faces"] == 1, result
    assert np.array_equal(pixels((queue / result["output"]).read_bytes()), expected)


def face_photo(folder: Path) -> Path:
    """``folder/face.png``: the test face (128 pixels) framed in grey, as a detector finds one face in it."""
    folder.mkdir()
    framed = np.full((192, 160, 3), 128, np.uint8)
    framed[32:160, 16:144] = cv2.cvtColor(cv2.imread(str(TEST_INPUTS / "astronaut_face.jpg")), cv2.COLOR_BGR2RGB)
    cv2.imwrite(str(folder / "face.png"), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR))
    return folder / "face.png"


def local_faces(out: Path, model: Path, photo: Path, *faces) -> np.ndarray:
    """The local batch's restore of ``photo`` with the face options ``faces``: one face found, the output's pixels."""
    local = invoke("restore", photo, "-o", out, "--model", model, *FP32, *faces, "--json")
    assert local.exit_code == 0, local.stderr
    [item] = [i for i in json_lines(local) if i["type"] == "item"]
    assert item["faces"] == 1
    return pixels((out / photo.name).read_bytes())


@pytest.fixture
def registered_faces(tmp_path, gfpgan_checkpoint, monkeypatch):
    """A weights folder, as the Modal app's weights volume holds one (``$RESTORECLI_WEIGHTS_DIR``), with the random
    GFPGAN v1.3 and the small test detector under their registry entries' file names; the two entries, gfpgan-1.3
    and retinaface-mobilenet0.25, hold those files' sha256 for this test (the published hash rightly refuses the
    random file, and nothing a user can reach lifts it). Returns the two files, and the entries' published hashes."""
    from conftest import DETECTOR

    from restorecli.models.integrity import sha256_of
    from restorecli.models.registry import REGISTRY

    if not DETECTOR.is_file():
        pytest.skip(f"{DETECTOR} is absent (the ../shared test data is not beside the clone)")
    weights = tmp_path / "weights"
    weights.mkdir()
    files, published = [], {}
    for name, source in (("gfpgan-1.3", gfpgan_checkpoint), ("retinaface-mobilenet0.25", DETECTOR)):
        entry = published[name] = REGISTRY[name]
        (weights / entry.filename).symlink_to(source)
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(entry, sha256=sha256_of(weights / entry.filename),
                                                                size=(weights / entry.filename).stat().st_size))
        files.append(weights / entry.filename)
    files[1].with_name(files[1].stem + ".anchors.json").write_text(
        json.dumps({"min_sizes": [[10, 20], [32, 64], [128, 256]], "steps": [8, 16, 32]}))
    monkeypatch.setenv("RESTORECLI_WEIGHTS_DIR", str(weights))
    return files, {name: entry.sha256 for name, entry in published.items()}


@pytest.mark.slow  # 13 s on 2 cores (GFPGAN's 512-pixel face twice); its fast sibling is the refusal below
@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_a_face_image_through_the_modal_app_equals_the_local_batch(tmp_path, model, registered_faces, modal_app,
                                                                   monkeypatch):  # noqa: F811
    """A face photo sent to the Modal app's web endpoint (serve's API over a dict, a folder and calls run in this
    process, as tests/test_deploy.py runs it) with face_enhance: the container it starts loads gfpgan-1.3 and the
    detector by name from its weights folder, hash-checked, and gives the local batch's face count and pixels."""
    from test_deploy import in_fp32, modal_endpoint, post, web_config

    (gfpgan, detector), _ = registered_faces
    photo = face_photo(tmp_path / "faces")
    expected = local_faces(tmp_path / "out", model, photo, "--face-enhance", "--face-model", gfpgan,
                           "--face-detector", detector)
    monkeypatch.setenv("RESTORECLI_FACE_MODEL", "gfpgan-1.3")
    monkeypatch.setenv("RESTORECLI_FACE_DETECTOR", "retinaface-mobilenet0.25")
    config = in_fp32(web_config(modal_app, str(model), tmp_path))
    with modal_endpoint(modal_app, config, tmp_path) as (client, _, calls):
        answer = post(client, ("face.png", photo.read_bytes()), face_enhance="true")
        assert answer.status_code == 202, answer.text
        assert modal_app.restore_parameters(calls.started[0][1])["face_detector"] == "retinaface-mobilenet0.25"
        assert calls.run() == ["completed"]
        [result] = client.get(f"/status/{answer.json()['job_id']}").json()["results"]
        assert result["status"] == "ok" and result["faces"] == 1, result
        assert np.array_equal(pixels(client.get(result["url"]).content), expected)


@pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")
def test_the_modal_container_refuses_a_face_model_that_fails_its_registry_hash(tmp_path, model, registered_faces,
                                                                              modal_app):  # noqa: F811
    """The same weights folder with gfpgan-1.3's published hash back in its entry: the container refuses the
    random file before loading it, naming the file and the hash (the call fails, and Modal retries it), so the test
    above loaded its faces through the registry's hash check, not around it."""
    from restorecli.errors import UnsupportedModel
    from restorecli.models.integrity import sha256_of
    from restorecli.models.registry import REGISTRY

    (gfpgan, _), hashes = registered_faces
    published = hashes["gfpgan-1.3"]
    assert published and published != sha256_of(gfpgan)
    REGISTRY["gfpgan-1.3"] = dataclasses.replace(REGISTRY["gfpgan-1.3"], sha256=published)  # undone by the fixture
    restore = modal_app.Restore(model=str(model), face_enhance=True, face_model="gfpgan-1.3",
                                face_detector="retinaface-mobilenet0.25", precision="fp32")
    with pytest.raises(UnsupportedModel, match=f"{gfpgan}: sha256 .* does not match the published {published}"):
        restore.restore.local((TEST_INPUTS / "rocket.jpg").read_bytes(), "001.jpg", {"device": "cpu"})
