"""A real `restorecli serve` left running, as an operator and its users would meet it: work it cannot do refused at
the door or failed alone, outputs bounded, running jobs cancelled, SIGTERM with work in hand, workers that die,
the queue database removed under it, the janitor during a download, and a full disk. Every server here is started
by its test on 127.0.0.1 through tests/worker_harness.py (HARNESS_SLOW keeps a worker mid-job)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from conftest import TEST_INPUTS, tiny_compact_state
from helpers.cli import invoke
from helpers.processes import alive, children
from helpers.wait import wait_until
from live_server import HARNESS, LiveServer
from restorecli.jobs.store import JobStore

PHOTO = (TEST_INPUTS / "rocket.jpg").read_bytes()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-x2.safetensors"
    save_file(tiny_compact_state(2), str(path))
    return path


def post(server: LiveServer, *files: tuple[str, bytes], **fields) -> httpx.Response:
    return httpx.post(server.url + "/enhance", files=[("files", f) for f in files], data=fields, timeout=60)


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return out.getvalue()


# ----------------------------------------------------------------------------- work it cannot do


def test_work_the_server_cannot_do_is_refused_at_the_door_and_said_at_start(tmp_path, model_file):
    weights = tmp_path / "weights"  # holds no face weights, and no realesrgan-x2plus
    weights.mkdir()
    with LiveServer(tmp_path, "--model", str(model_file), "--allow-model", "realesrgan-x2plus", "--weights-dir",
                    str(weights), workers=0) as server:
        assert "warning:  realesrgan-x2plus is not installed; jobs asking for it are refused (422) until: " \
               "restorecli download-weights realesrgan-x2plus" in server.output()
        models = httpx.get(server.url + "/models").json()["models"]
        assert [(m["name"], m["runnable"]) for m in models] == [(model_file.name, True), ("realesrgan-x2plus", False)]
        faces = post(server, ("rocket.jpg", PHOTO), face_enhance="true")
        assert faces.status_code == 422
        assert "restorecli download-weights gfpgan-1.4 retinaface-resnet50" in faces.json()["detail"]
        missing = post(server, ("rocket.jpg", PHOTO), model="realesrgan-x2plus")
        assert missing.status_code == 422
        assert "restorecli download-weights realesrgan-x2plus" in missing.json()["detail"]
        assert os.listdir(server.queue / "jobs") == [] and os.listdir(server.queue / "incoming") == []


def test_a_poison_job_fails_alone_and_the_job_behind_it_completes(tmp_path, model_file):
    """A job whose model goes missing after it was queued: failed with the reason; the worker stays up (no restart)
    and the next job completes."""
    doomed = tmp_path / "doomed.safetensors"
    doomed.write_bytes(model_file.read_bytes())
    args = ("--model", str(model_file), "--allow-model", str(doomed))
    with LiveServer(tmp_path, *args, workers=0) as server:  # queued while the file is there
        first = post(server, ("rocket.jpg", PHOTO), model=doomed.name).json()["job_id"]
        second = post(server, ("rocket.jpg", PHOTO)).json()["job_id"]
    doomed.unlink()
    with LiveServer(tmp_path, *args[:2], queue=server.queue) as server:
        failed = server.wait_for(first)
        assert failed["status"] == "failed" and "doomed.safetensors" in failed["error"]
        assert server.wait_for(second)["status"] == "completed"
        health = httpx.get(server.url + "/health").json()
        assert health["workers"]["restarts"] == 0 and health["workers"]["alive"] == 1


# ----------------------------------------------------------------------------- bounded output


def test_outscale_and_output_pixels_are_bounded_with_the_limit_named(tmp_path, model_file):
    with LiveServer(tmp_path, "--model", str(model_file), "--max-output-pixels", "100000") as server:
        huge = post(server, ("rocket.jpg", PHOTO), outscale="1e7")
        assert huge.status_code == 422 and "outscale" in huge.json()["detail"] and "at most 16" in huge.json()["detail"]
        over = post(server, ("big.png", png(400, 300)), outscale="2")  # 800x600: 0.48 MP over 0.1 MP
        assert over.status_code == 422
        assert over.json()["detail"] == ("big.png: its output would be 800x600 pixels (0.5 megapixels), over the "
                                         "limit of 0.1 megapixels (--max-output-pixels 100000); ask for a smaller "
                                         "outscale")
        assert os.listdir(server.queue / "jobs") == []
        # the model's own scale (a checkpoint's) is known to the worker only: it refuses that image alone, in words
        job = post(server, ("big.png", png(400, 300)), ("small.png", png(60, 40))).json()["job_id"]
        done = server.wait_for(job)
        assert done["status"] == "completed"
        big, small = done["results"]
        assert big["status"] == "error" and "over the limit of 0.1 megapixels" in big["error"]
        assert "Error" not in big["error"] and small["status"] == "ok"


def test_the_queue_bounds_outputs_by_default_and_submit_refuses_beyond(tmp_path, model_file):
    image = tmp_path / "wide.png"
    image.write_bytes(png(2100, 1000))
    queue = tmp_path / "queue"
    refused = invoke("submit", image, "--queue", queue, "--model", model_file,
                     "--outscale", "4")  # 8400x4000 = 33.6 MP: within 64 MP
    assert refused.exit_code == 0, refused.output
    refused = invoke("submit", image, "--queue", queue, "--model", model_file,
                     "--outscale", "6")  # 12600x6000 = 75.6 MP
    assert refused.exit_code == 2
    assert "over the limit of 64.0 megapixels (--max-output-pixels 64000000)" in refused.output
    raised = invoke("submit", image, "--queue", queue, "--model", model_file, "--outscale", "6",
                    "--max-output-pixels", "80000000")
    assert raised.exit_code == 0, raised.output


# ----------------------------------------------------------------------------- cancelling


def test_delete_stops_a_running_job_keeps_nothing_and_the_worker_goes_on(tmp_path, model_file):
    with LiveServer(tmp_path, "--model", str(model_file), env={"HARNESS_SLOW": "1.5"}) as server:
        job = post(server, *[(f"{n}.png", png(64, 48, n)) for n in range(6)]).json()["job_id"]
        wait_until(lambda: httpx.get(f"{server.url}/status/{job}").json()["status"] == "processing", "processing")
        answer = httpx.delete(f"{server.url}/jobs/{job}", timeout=30)
        # 200 once the worker dropped it; 202 where it had not within the server's wait (a loaded machine)
        assert answer.status_code in (200, 202), answer.text
        assert answer.json() == {"job_id": job, "deleted": answer.status_code == 200, "was": "processing"}
        wait_until(lambda: httpx.get(f"{server.url}/status/{job}").status_code == 404, "the job to be dropped")
        progress = JobStore(server.queue)
        assert progress.get(job) is None and progress.counts()["processing"] == 0
        # the worker deletes the record, then the folder: the folder goes a moment after the status says 404
        wait_until(lambda: not (server.queue / "jobs" / job).exists(), "the job's folder to be removed")
        after = post(server, ("rocket.jpg", PHOTO)).json()["job_id"]
        assert server.wait_for(after)["status"] == "completed"


def test_cancel_command_stops_a_running_job_in_the_folder(tmp_path, model_file):
    queue = tmp_path / "queue"
    images = []
    for n in range(5):
        images.append(tmp_path / f"{n}.png")
        images[-1].write_bytes(png(64, 48, n))
    submitted = invoke("submit", *images, "--queue", queue, "--model", model_file, "--json")
    job = json.loads(submitted.stdout)["job_id"]
    worker = subprocess.Popen([sys.executable, str(HARNESS), "worker", "--queue", str(queue), "--poll", "0.2"],
                              env={**os.environ, "HARNESS_SLOW": "1.5"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        store = JobStore(queue)
        wait_until(lambda: store.get(job).status == "processing", "the worker to take the job")
        result = invoke("cancel", job, "--queue", queue, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"job_id": job, "was": "processing", "deleted": True}
        assert store.get(job) is None and not (queue / "jobs" / job).exists()
        assert worker.poll() is None  # the worker lives on
        finished = invoke("cancel", job, "--queue", queue)
        assert finished.exit_code == 2 and f"no job '{job}'" in finished.output
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.stderr.read()


# ----------------------------------------------------------------------------- stopping


@pytest.mark.slow  # 17-19 s on 2 cores: a server, its worker and a job taken down mid-image
def test_sigterm_lets_the_running_job_finish_refuses_uploads_meanwhile_and_leaves_no_process(tmp_path, model_file):
    server = LiveServer(tmp_path, "--model", str(model_file), "--grace", "60", env={"HARNESS_SLOW": "1"}).start()
    job = post(server, *[(f"{n}.png", png(32, 24, n)) for n in range(10)]).json()["job_id"]
    wait_until(lambda: httpx.get(f"{server.url}/status/{job}").json()["status"] == "processing", "processing")
    workers = children(server.process.pid)
    assert workers
    server.process.send_signal(signal.SIGTERM)
    health = wait_until(lambda: httpx.get(server.url + "/health").json()["status"] == "stopping", "stopping")
    assert health
    refused = post(server, ("rocket.jpg", PHOTO))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
    assert server.process.wait(90) == 0, server.output()
    store = JobStore(server.queue)
    assert store.get(job).status == "completed"
    assert store.counts()["queued"] == 0  # the refused upload left no job
    assert not any(alive(pid) for pid in workers), server.output()
    assert "restorecli serve: stopped" in server.output()


@pytest.mark.slow  # 14-19 s on 2 cores: a server, its worker and a job taken down mid-image
def test_sigterm_past_the_grace_period_queues_the_job_again_resumable(tmp_path, model_file):
    server = LiveServer(tmp_path, "--model", str(model_file), "--grace", "1", env={"HARNESS_SLOW": "2"}).start()
    job = post(server, *[(f"{n}.png", png(32, 24, n)) for n in range(6)]).json()["job_id"]
    wait_until(lambda: httpx.get(f"{server.url}/status/{job}").json()["status"] == "processing", "processing")
    workers = children(server.process.pid)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(90) == 0, server.output()
    assert not any(alive(pid) for pid in workers)
    queued = JobStore(server.queue).get(job)
    assert queued.status == "queued" and queued.attempts == 0  # given back, not counted against the job
    assert "still busy after the grace period" in server.output()
    again = LiveServer(tmp_path, "--model", str(model_file), queue=server.queue).start()  # the restart finishes it
    try:
        assert again.wait_for(job)["status"] == "completed"
    finally:
        assert again.stop() == 0


@pytest.mark.slow  # 17-19 s on 2 cores: a server, its worker and a job taken down mid-image
def test_a_worker_that_dies_has_its_job_queued_again_at_once(tmp_path, model_file):
    """A worker killed on an image (a crash no Python code catches): its job is taken up again within seconds, not
    after the 60 s lease, and fails, naming the image, once its attempts are spent."""
    with LiveServer(tmp_path, "--model", str(model_file), env={"HARNESS_CRASH_ON": "001.png"}) as server:  # the server stores it so
        job = post(server, ("poison.png", png(32, 24))).json()["job_id"]
        failed = server.wait_for(job, timeout=150)
        assert failed["status"] == "failed"
        # the supervisor's words, not the lease's ("the worker stopped responding", after 3 x 60 s)
        assert "gave up after 3 attempts: its worker process exited with code -11" in failed["error"]
        assert "poison.png" in failed["error"]


# ----------------------------------------------------------------------------- the queue's files


def test_the_queue_database_deleted_under_the_server_is_a_503_and_an_exit(tmp_path, model_file):
    server = LiveServer(tmp_path, "--model", str(model_file), workers=0).start()
    job = post(server, ("rocket.jpg", PHOTO)).json()["job_id"]
    (server.queue / "queue.db").unlink()
    answer = httpx.get(f"{server.url}/status/{job}")
    assert answer.status_code == 503 and "queue.db was deleted while the server ran" in answer.json()["detail"]
    assert server.process.wait(30) == 3, server.output()
    assert "queue.db was deleted while the server ran" in server.output()


@pytest.mark.slow  # 12-17 s on 2 cores: nox -s slow runs it
def test_the_janitor_never_removes_a_job_while_its_zip_is_downloading(tmp_path, model_file):
    with LiveServer(tmp_path, "--model", str(model_file), "--retention", "3s", "--prune-every", "1s") as server:
        # 4 outputs of 1024x1024 noise, 12 MB: more than the sockets between here and the server hold
        other, held = [post(server, *[(f"{n}.png", png(512, 512, n)) for n in range(4)]).json()["job_id"]
                       for _ in range(2)]
        server.wait_for(held)  # the later one: its files are held before its 3 s run out
        with httpx.stream("GET", f"{server.url}/jobs/{held}/download", timeout=60) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()
            body = bytearray(next(chunks))
            # the janitor passes meanwhile: it removes the other job, but not the one being sent
            wait_until(lambda: httpx.get(f"{server.url}/status/{other}").status_code == 404, "a janitor pass")
            wait_until(lambda: "janitor: removed" in server.output(), "the janitor's word")
            assert httpx.get(f"{server.url}/status/{held}").status_code == 200
            for chunk in chunks:
                body.extend(chunk)
        archive = zipfile.ZipFile(io.BytesIO(bytes(body)))
        assert archive.testzip() is None and len(archive.namelist()) == 4
        wait_until(lambda: httpx.get(f"{server.url}/status/{held}").status_code == 404, "the janitor, after")


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a disk that fills (needs root and mount)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (a full disk): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def chunked_upload(name: str, data: bytes):
    """A multipart body of one file, sent chunked (no Content-Length: nothing to refuse it by before it is read)."""
    boundary = "restorecli-test-boundary"
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]
    yield f"\r\n--{boundary}--\r\n".encode()


def test_a_full_disk_is_507_leaves_nothing_and_health_says_degraded(tmp_path, model_file, small_disk):
    queue = small_disk / "queue"
    with LiveServer(tmp_path, "--model", str(model_file), "--max-file-mb", "8", "--min-free-mb", "0",
                    queue=queue, workers=0) as server:
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (3 * 1024 * 1024 + 512 * 1024))  # about 0.4 MB left
        # over the free space by a little, sent chunked: the disk fills mid-upload
        answer = httpx.post(server.url + "/enhance", content=chunked_upload("big.png", os.urandom(600 * 1024)),
                            headers={"Content-Type": "multipart/form-data; boundary=restorecli-test-boundary"},
                            timeout=60)
        assert answer.status_code == 507, answer.text
        assert "cannot store the upload now" in answer.json()["detail"]
        assert os.listdir(queue / "incoming") == [] and os.listdir(queue / "jobs") == []
        assert httpx.get(server.url + "/health").status_code == 200  # no floor asked for
        # with its length declared, it is refused before a byte is stored
        answer = post(server, ("big.png", os.urandom(600 * 1024)))
        assert answer.status_code == 507 and "nearly full" in answer.json()["detail"]
    with LiveServer(tmp_path, "--model", str(model_file), "--min-free-mb", "1", queue=queue, workers=0) as server:
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert "under the 1 MB the server keeps (--min-free-mb)" in health.json()["problems"][0]
        answer = post(server, ("rocket.jpg", PHOTO))
        assert answer.status_code == 507 and "nearly full" in answer.json()["detail"]
        assert os.listdir(queue / "incoming") == []
