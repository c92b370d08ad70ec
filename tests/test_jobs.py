"""The job folder: submit/worker/status/prune through the CLI, and the queue's guarantees under real
processes: concurrency, SIGKILL, poison inputs, a stale worker resumed after SIGSTOP, overlapping cron runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from conftest import TEST_INPUTS
from helpers.cli import invoke as cli
from helpers.wait import wait_until
from restorecli.jobs.prune import parse_age
from restorecli.errors import QueueUnavailable
from restorecli.jobs.store import JobStore

HARNESS = Path(__file__).with_name("worker_harness.py")


@pytest.fixture
def model(make_model):
    return make_model(2, "compact", "safetensors")


@pytest.fixture
def queue(tmp_path):
    return tmp_path / "queue"


def submit(queue, model, *files):
    result = cli("submit", *files, "--queue", queue, "--model", model, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def photos(tmp_path, names):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(TEST_INPUTS / "rocket.jpg", folder / name)
    return [folder / n for n in names]


def job(queue, job_id):
    store = JobStore(queue)
    try:
        return store.get(job_id)
    finally:
        store.close()


def spawn_worker(queue, *args, slow=0.0, crash_on=None, hold=None, hold_on=""):
    env = {**os.environ, "HARNESS_SLOW": str(slow), "HARNESS_CRASH_ON": crash_on or "", "HARNESS_HOLD": str(hold or ""),
           "HARNESS_HOLD_ON": hold_on}
    return subprocess.Popen([sys.executable, str(HARNESS), "worker", "--queue", str(queue), *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outputs_digest(queue, job_id):
    folder = queue / "jobs" / job_id / "outputs"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- the commands


def test_submit_work_status_round_trip(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg", "b.jpg"])
    first = submit(queue, model, *files)
    second = submit(queue, model, files[0])
    assert first["status"] == "queued" and first["queue_position"] == 1 and second["queue_position"] == 2
    for f in files:
        f.unlink()  # the job holds its own copies
    status = json.loads(cli("status", first["job_id"], "--queue", queue, "--json").stdout)
    assert status["status"] == "queued" and status["queue_position"] == 1
    assert [r["status"] for r in status["results"]] == ["pending", "pending"]

    worked = cli("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    status = json.loads(cli("status", first["job_id"], "--queue", queue, "--json").stdout)
    assert status["status"] == "completed" and status["queue_position"] is None
    assert status["setup"]["device"] == "cpu" and status["setup"]["model"] == Path(model).stem  # what ran
    for result in status["results"]:
        assert result["status"] == "ok" and result["error"] is None
        image = cv2.imread(str(queue / result["output"]))
        assert image.shape == (128, 192, 3)
    assert [r["original_filename"] for r in status["results"]] == [str(f) for f in files]
    overview = json.loads(cli("status", "--queue", queue, "--json").stdout)
    assert overview["counts"] == {"queued": 0, "processing": 0, "completed": 2, "failed": 0}
    result_file = json.loads((queue / "jobs" / first["job_id"] / "result.json").read_text())
    assert set(result_file["results"][0]) >= {"original_filename", "output", "status", "error", "in_size", "out_size",
                                               "seconds", "faces"}


def test_queue_defaults_to_the_environment_then_the_working_directory(tmp_path, model, monkeypatch):
    files = photos(tmp_path, ["a.jpg"])
    assert cli("submit", files[0], "--model", model).exit_code == 0
    assert (Path.cwd() / "restorecli-queue" / "queue.db").is_file()
    monkeypatch.setenv("RESTORECLI_QUEUE", str(tmp_path / "envq"))
    assert cli("submit", files[0], "--model", model).exit_code == 0
    assert (tmp_path / "envq" / "queue.db").is_file()


def test_submit_refuses_missing_inputs_and_queues_nothing(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    submit(queue, model, files[0])
    result = cli("submit", files[0], tmp_path / "missing.jpg", "--queue", queue, "--model", model)
    assert result.exit_code == 2 and "missing.jpg" in result.stderr
    assert len(list((queue / "jobs").iterdir())) == 1 and not list((queue / "incoming").iterdir())


def test_unknown_job_id_exits_2(queue, model, tmp_path):
    submit(queue, model, *photos(tmp_path, ["a.jpg"]))
    result = cli("status", "no-such-job", "--queue", queue)
    assert result.exit_code == 2 and "no job 'no-such-job'" in result.stderr


def test_a_job_with_broken_images_reports_them(tmp_path, queue, model):
    files = photos(tmp_path, ["good.jpg"])
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_text("not an image")
    job_id = submit(queue, model, files[0], bad)["job_id"]
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    status = json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "completed"
    assert [r["status"] for r in status["results"]] == ["ok", "error"]
    assert "not an image" in status["results"][1]["error"]


def test_missing_weights_fail_the_job_without_retrying(tmp_path, queue, model):
    job_id = submit(queue, model, *photos(tmp_path, ["a.jpg"]))["job_id"]
    model.unlink()
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    status = json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "failed" and "neither a file nor a known sr model" in status["error"]
    assert status["attempts"] == 1


# ----------------------------------------------------------------------------- guarantees


@pytest.mark.slow  # 12-17 s on 2 cores: nox -s slow runs it
def test_four_workers_forty_jobs_each_done_exactly_once(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    ids = [submit(queue, model, files[0])["job_id"] for _ in range(40)]
    workers = [spawn_worker(queue, "--once", "--lease", 30) for _ in range(4)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    claims = {}
    for job_id in ids:
        record = job(queue, job_id)
        assert record.status == "completed" and record.attempts == 1, (job_id, record)
        claims[job_id] = record.worker
        image = cv2.imread(str(queue / "jobs" / job_id / "outputs" / "a.jpg"))
        assert image is not None and image.shape == (128, 192, 3)
    assert len(set(claims.values())) > 1  # the work really was shared


def test_a_killed_worker_s_job_is_taken_over_after_its_lease(tmp_path, queue, model):
    job_id = submit(queue, model, *photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"]))["job_id"]
    hold = tmp_path / "hold"
    hold.touch()  # the second image waits in its reader: the worker is killed mid-job however slow the machine
    victim = spawn_worker(queue, "--once", "--lease", 3, hold=hold, hold_on="b.jpg")
    try:
        wait_until(lambda: (j := job(queue, job_id)) is not None and j.status == "processing" and j.current,
                   what="claim")
        # mid-job: one image written into the lease's private folder (work/<token>/), the next ones still to come
        wait_until(lambda: list((queue / "jobs" / job_id / "work").glob("*/a.jpg")), what="the first image written")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        hold.unlink()
    assert not (queue / "jobs" / job_id / "outputs").exists()  # nothing visible under a final name
    early = cli("worker", "--queue", queue, "--once")  # lease still valid: hands off
    assert early.exit_code == 0 and job(queue, job_id).status == "processing"
    wait_until(lambda: job(queue, job_id).lease_until < time.time(), what="lease expiry")
    late = cli("worker", "--queue", queue, "--once")
    assert late.exit_code == 0
    record = job(queue, job_id)
    assert record.status == "completed" and record.attempts == 2
    assert sorted(outputs_digest(queue, job_id)) == ["a.jpg", "b.jpg", "c.jpg"]


@pytest.mark.slow  # 17-19 s on 2 cores: four worker processes, each starting torch, three of them crashing
def test_poison_job_is_retried_at_most_max_attempts_then_failed(tmp_path, queue, model):
    poison = submit(queue, model, *photos(tmp_path, ["poison.jpg"]))["job_id"]
    good = [submit(queue, model, f)["job_id"] for f in photos(tmp_path, ["x.jpg", "y.jpg"])]
    crashes = 0
    for _ in range(8):
        w = spawn_worker(queue, "--once", "--lease", 1, "--max-attempts", 3, crash_on="poison.jpg")
        w.communicate(timeout=120)
        if w.returncode != 0:
            crashes += 1
            assert w.returncode == -signal.SIGSEGV
            wait_until(lambda: (job(queue, poison).lease_until or 0) < time.time(), what="the dead worker's lease")
            continue
        break
    assert crashes == 3
    record = job(queue, poison)
    assert record.status == "failed" and record.attempts == 3
    assert "poison.jpg" in record.last_error and "gave up after 3 attempts" in record.last_error
    assert all(job(queue, g).status == "completed" for g in good)
    status = json.loads(cli("status", poison, "--queue", queue, "--json").stdout)
    assert status["results"][0]["status"] == "error"


def test_a_stale_worker_cannot_publish_over_the_new_owner(tmp_path, queue, model):
    job_id = submit(queue, model, *photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"]))["job_id"]
    stale = spawn_worker(queue, "--once", "--lease", 2, slow=1.0)
    wait_until(lambda: (j := job(queue, job_id)) is not None and j.status == "processing" and j.current, what="claim")
    stale.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: job(queue, job_id).lease_until < time.time(), what="lease expiry")
        new_owner = cli("worker", "--queue", queue, "--once")
        assert new_owner.exit_code == 0
        record = job(queue, job_id)
        assert record.status == "completed" and record.attempts == 2
        published = outputs_digest(queue, job_id)
        result_file = (queue / "jobs" / job_id / "result.json").read_bytes()
    finally:
        stale.send_signal(signal.SIGCONT)
    out, err = stale.communicate(timeout=60)
    assert stale.returncode == 0
    assert f"job {job_id}: lost" in err
    assert outputs_digest(queue, job_id) == published
    assert (queue / "jobs" / job_id / "result.json").read_bytes() == result_file
    assert job(queue, job_id).status == "completed"


def test_overlapping_cron_runs_do_not_steal_in_flight_jobs(tmp_path, queue, model):
    slow_job = submit(queue, model, *photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"]))["job_id"]
    quick_job = submit(queue, model, tmp_path / "in" / "a.jpg")["job_id"]
    # the first run takes one job and holds it, mid-image, until the second run (started meanwhile) is done
    hold = tmp_path / "hold"
    hold.touch()
    first = spawn_worker(queue, "--once", "--max-jobs", 1, "--lease", 30, hold=hold)
    wait_until(lambda: job(queue, slow_job).status == "processing", what="first cron run to claim")
    second = spawn_worker(queue, "--once", "--lease", 30)
    try:
        out2, err2 = second.communicate(timeout=120)
    finally:
        hold.unlink()  # the first run goes on
    assert second.returncode == 0
    assert quick_job in err2 and slow_job not in err2
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0
    assert job(queue, slow_job).attempts == 1 and job(queue, quick_job).attempts == 1
    assert job(queue, slow_job).status == job(queue, quick_job).status == "completed"
    assert job(queue, quick_job).finished < job(queue, slow_job).finished  # the runs really overlapped


def test_status_never_names_the_image_read_ahead_as_the_one_in_hand():
    """The reader starts the second image as the model's thread takes the first, before that thread says "item":
    in that moment status said "b.jpg", as if the model had it (a SIGTERM sent then, on a loaded machine, found
    the first image in hand, not the second). The image read before is the one in hand."""
    from restorecli.jobs.worker import _BatchProgress

    class Run:
        def __init__(self):
            self.said: list[str] = []

        def original(self, name: str) -> str:
            return name

        def working_on(self, current: str, starting: str | None = None) -> None:
            self.said.append(current)

    run = Run()
    progress = _BatchProgress(run)  # type: ignore[arg-type]
    for event, name in (("reading", "a.jpg"), ("reading", "b.jpg"), ("item", "a.jpg"), ("item", "b.jpg"),
                        ("reading", "c.jpg"), ("item", "c.jpg")):
        progress(event, name)
    assert run.said == ["a.jpg", "a.jpg (reading b.jpg ahead)", "a.jpg (reading b.jpg ahead)", "b.jpg",
                        "b.jpg (reading c.jpg ahead)", "c.jpg"]


def test_sigterm_finishes_the_image_in_hand_and_leaves_the_job_resumable(tmp_path, queue, model):
    job_id = submit(queue, model, *photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"]))["job_id"]
    hold = tmp_path / "hold"
    hold.touch()  # the third image is held in its reader until the signal is sent: the second is the one in hand
    w = spawn_worker(queue, "--lease", 30, "--poll", 0.2, hold=hold, hold_on="c.jpg")
    try:
        # "b.jpg (reading c.jpg ahead)": the model has the second image, the third is read meanwhile
        wait_until(lambda: (job(queue, job_id).current or "").split(" (reading")[0].endswith("b.jpg"),
                   what="second image")
        w.send_signal(signal.SIGTERM)
    finally:
        hold.unlink()
    out, err = w.communicate(timeout=60)
    assert w.returncode == 0, err
    record = job(queue, job_id)
    assert record.status == "queued" and record.attempts == 0
    resume = queue / "jobs" / job_id / "work" / "resume"
    assert sorted(p.name for p in resume.iterdir()) == ["a.jpg", "b.jpg"]
    kept = (resume / "a.jpg").stat().st_mtime_ns
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    assert job(queue, job_id).status == "completed"
    outputs = queue / "jobs" / job_id / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert (outputs / "a.jpg").stat().st_mtime_ns == kept  # finished work was kept, not redone


# ----------------------------------------------------------------------------- prune


def test_parse_age():
    assert parse_age("30m") == 1800 and parse_age("1h") == 3600 and parse_age("7d") == 7 * 86400
    with pytest.raises(Exception, match="write an age like"):
        parse_age("soon")


def test_prune_queue_removes_old_finished_jobs_only(tmp_path, queue, model):
    done = submit(queue, model, *photos(tmp_path, ["a.jpg"]))["job_id"]
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    waiting = submit(queue, model, tmp_path / "in" / "a.jpg")["job_id"]
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("do not delete")
    os.symlink(outside, queue / "jobs" / done / "outputs" / "link-to-outside")

    young = cli("prune", "--queue", queue, "--older-than", "1h", "--json")
    assert young.exit_code == 0 and json.loads(young.stdout)["removed"] == []
    wait_until(lambda: job(queue, done).finished < time.time() - 1, what="the job to be over a second old")
    dry = cli("prune", "--queue", queue, "--older-than", "1s", "--dry-run", "--json")
    report = json.loads(dry.stdout)
    assert [r["job_id"] for r in report["removed"]] == [done] and report["bytes_freed"] > 0
    assert (queue / "jobs" / done).is_dir()

    real = cli("prune", "--queue", queue, "--older-than", "1s", "--json")
    assert real.exit_code == 0
    assert json.loads(real.stdout)["bytes_freed"] == report["bytes_freed"]
    assert not (queue / "jobs" / done).exists()
    assert (outside / "keep.txt").read_text() == "do not delete"  # the link went, its target stayed
    assert (queue / "jobs" / waiting).is_dir() and job(queue, waiting).status == "queued"
    assert cli("status", done, "--queue", queue).exit_code == 2


def test_prune_never_touches_a_running_job(tmp_path, queue, model):
    job_id = submit(queue, model, *photos(tmp_path, ["a.jpg", "b.jpg"]))["job_id"]
    w = spawn_worker(queue, "--once", "--lease", 30, slow=1.0)
    wait_until(lambda: job(queue, job_id).status == "processing", what="claim")
    result = cli("prune", "--queue", queue, "--older-than", "0s", "--json")
    assert json.loads(result.stdout)["removed"] == []
    w.communicate(timeout=60)
    assert job(queue, job_id).status == "completed"


def test_submit_carries_face_options_to_the_worker(tmp_path, queue, model):
    job_id = json.loads(cli("submit", *photos(tmp_path, ["a.jpg"]), "--queue", queue, "--model", model,
                            "--face-enhance", "--only-center-face", "--weights-dir", tmp_path / "nofaces",
                            "--json").stdout)["job_id"]
    options = job(queue, job_id).options
    assert options["face_enhance"] and options["only_center_face"]
    assert options["weights_dir"] == str((tmp_path / "nofaces").resolve())
    assert cli("worker", "--queue", queue, "--once").exit_code == 3  # this machine lacks the face weights
    status = json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "queued" and "download-weights gfpgan-1.4 retinaface-resnet50" in status["error"]


def test_a_worker_that_lacks_weights_gives_each_job_back_and_goes_on(tmp_path, queue, model, face_files):
    """Weights missing on the worker's machine stop neither the worker nor the queue: each such job is queued again
    (the attempt counted) for a worker that has them, the worker goes on with the next job and exits 3 at the end
    saying what to install, and once they are installed the next run does them."""
    weights, detector = face_files
    empty = tmp_path / "empty-weights"
    files = photos(tmp_path, ["a.jpg", "b.jpg"])
    common = ["--queue", queue, "--model", model, "--face-enhance", "--face-model", "gfpgan-1.3", "--face-detector",
              detector, "--weights-dir", empty, "--json"]
    ids = [json.loads(cli("submit", f, *common).stdout)["job_id"] for f in files]
    plain = submit(queue, model, files[0])["job_id"]  # behind them, a job this machine can run
    result = cli("worker", "--queue", queue, "--once")
    assert result.exit_code == 3
    assert f"download-weights gfpgan-1.3 --weights-dir {empty}" in result.stderr
    assert "queued again for a worker that can, and fails after 3 tries" in result.stderr
    assert [job(queue, i).status for i in ids] == ["queued", "queued"] and [job(queue, i).attempts for i in ids] == [1, 1]
    assert job(queue, plain).status == "completed"  # the queue went on
    shown = cli("status", ids[0], "--queue", queue)
    assert "queued, position 1" in shown.stderr and "last try: --face-enhance needs gfpgan-1.3" in shown.stderr
    events = [json.loads(line) for line in cli("worker", "--queue", queue, "--once", "--json").stdout.splitlines()]
    assert [e["type"] for e in events] == ["claimed", "setup_error", "finished"] * 2  # each tried once a run
    empty.mkdir()
    shutil.copy(weights / "GFPGANv1.3.pth", empty / "GFPGANv1.3.pth")  # the machine gets its weights
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    assert [job(queue, i).status for i in ids] == ["completed", "completed"]
    assert json.loads(cli("status", ids[0], "--queue", queue, "--json").stdout)["error"] is None


def test_a_job_no_worker_can_run_fails_after_its_attempts_saying_why(tmp_path, queue, model):
    """The poison job of a queue served by one worker that lacks its weights: tried --max-attempts times, then
    failed with the reason and what to install; the worker never exits on its account."""
    files = photos(tmp_path, ["a.jpg"])
    poison = json.loads(cli("submit", files[0], "--queue", queue, "--model", model, "--face-enhance",
                            "--weights-dir", tmp_path / "nofaces", "--json").stdout)["job_id"]
    result = cli("worker", "--queue", queue, "--once", "--max-attempts", 1, "--json")
    assert result.exit_code == 3
    failed = job(queue, poison)
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.last_error.startswith("could not be run by a worker once; last error: --face-enhance needs")
    assert "restorecli download-weights gfpgan-1.4 retinaface-resnet50" in failed.last_error
    assert [json.loads(line)["type"] for line in result.stdout.splitlines()] == ["claimed", "setup_error", "finished"]


def test_a_job_whose_own_model_cannot_load_fails_and_the_queue_goes_on(tmp_path, queue, model):
    broken = tmp_path / "broken.safetensors"
    shutil.copy(model, broken)
    files = photos(tmp_path, ["a.jpg"])
    first = json.loads(cli("submit", files[0], "--queue", queue, "--model", broken, "--json").stdout)["job_id"]
    second = submit(queue, model, files[0])["job_id"]
    broken.write_bytes(b"damaged after submission")
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    assert job(queue, first).status == "failed" and "not a readable safetensors file" in job(queue, first).last_error
    assert job(queue, second).status == "completed"


def test_max_jobs_and_max_seconds_bound_a_worker_run(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    ids = [submit(queue, model, files[0])["job_id"] for _ in range(3)]
    assert cli("worker", "--queue", queue, "--once", "--max-jobs", 2).exit_code == 0
    assert [job(queue, i).status for i in ids] == ["completed", "completed", "queued"]
    started = time.monotonic()
    result = cli("worker", "--queue", queue, "--max-seconds", 1, "--poll", 0.2)  # no --once: polls, then stops
    assert result.exit_code == 0 and time.monotonic() - started < 30
    assert job(queue, ids[2]).status == "completed"


def test_one_worker_keeps_separate_models_for_jobs_that_need_them(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    common = ["--queue", queue, "--model", model, "--weights-dir", tmp_path / "nofaces", "--json"]
    plain = json.loads(cli("submit", files[0], *common).stdout)["job_id"]
    faces = json.loads(cli("submit", files[0], "--face-enhance", *common).stdout)["job_id"]
    assert cli("worker", "--queue", queue, "--once").exit_code == 3  # no face weights on this machine
    assert job(queue, plain).status == "completed"
    assert job(queue, faces).status == "queued"  # it did not run on the first job's face-less models


def test_submit_from_stdin(queue, model):
    data = (TEST_INPUTS / "rocket.jpg").read_bytes()
    result = cli("submit", "-", "--queue", queue, "--model", model, "--json", input=data)
    assert result.exit_code == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    assert (queue / "jobs" / job_id / "inputs" / "stdin.jpg").read_bytes() == data
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    status = json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)
    assert status["results"][0]["original_filename"] == "-" and status["results"][0]["status"] == "ok"


def test_human_output_of_the_queue_commands(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    submitted = cli("submit", files[0], "--queue", queue, "--model", model)
    job_id = submitted.stdout.strip()
    assert submitted.exit_code == 0 and job(queue, job_id) is not None  # stdout is just the id
    assert "position 1" in submitted.stderr
    queued = cli("status", job_id, "--queue", queue)
    assert f"job {job_id}: queued, position 1" in queued.stderr and queued.stdout.startswith("pending\t")
    worked = cli("worker", "--queue", queue, "--once")
    assert f"job {job_id}: started (attempt 1)" in worked.stderr and f"job {job_id}: completed" in worked.stderr
    overview = cli("status", "--queue", queue)
    assert "completed" in overview.stderr and overview.stdout == ""  # nothing running
    done = cli("status", job_id, "--queue", queue)
    assert done.stdout.startswith(f"ok\t{files[0]}\tjobs/{job_id}/outputs/a.jpg")
    wait_until(lambda: job(queue, job_id).finished < time.time() - 1, what="the job to be over a second old")
    pruned = cli("prune", "--queue", queue, "--older-than", "1s")
    assert pruned.stdout.strip() == str(queue / "jobs" / job_id) and "removed 1 item(s)" in pruned.stderr


def test_an_unexpected_failure_is_retried_then_fails_the_job(tmp_path, queue, model, monkeypatch):

    def broken(*args, **kwargs):
        raise KeyError("an unforeseen bug")

    monkeypatch.setattr("restorecli.pipeline.restore_batch", broken)  # the worker imports it with its first job
    job_id = submit(queue, model, *photos(tmp_path, ["a.jpg"]))["job_id"]
    assert cli("worker", "--queue", queue, "--max-jobs", 1, "--max-attempts", 2).exit_code == 0
    record = job(queue, job_id)
    assert record.status == "queued" and "an unforeseen bug" in record.last_error and record.attempts == 1
    assert cli("worker", "--queue", queue, "--max-jobs", 1, "--max-attempts", 2).exit_code == 0
    status = json.loads(cli("status", job_id, "--queue", queue, "--json").stdout)
    assert status["status"] == "failed" and status["error"].startswith("failed 2 times; last error: KeyError")
    assert status["results"][0]["status"] == "error"


def test_a_full_disk_stops_the_worker_and_gives_the_job_back_resumable(tmp_path, queue, model, monkeypatch,
                                                                          disk_fills):
    """No space left: the job is queued again with the image it finished (the failed one is not an error of
    the job, and no attempt is counted), the worker takes no further job, and says why; with room again,
    the next worker finishes the job without redoing the finished image."""
    first = submit(queue, model, *photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"]))["job_id"]
    second = submit(queue, model, *photos(tmp_path, ["d.jpg"]))["job_id"]
    disk_fills(2)
    worked = cli("worker", "--queue", queue, "--once")
    assert worked.exit_code == 1
    assert "No space left on device" in worked.stderr and "queued again" in worked.stderr
    record = job(queue, first)
    assert record.status == "queued" and record.attempts == 0
    assert job(queue, second).status == "queued"  # not taken: it would have failed the same way
    disk_fills(None)
    import restorecli.pipeline.batch as batch

    real_restore, done = batch._restore_behind, []

    def counting(into, prepared, source, *args, **kwargs):
        done.append(source)
        return real_restore(into, prepared, source, *args, **kwargs)

    monkeypatch.setattr(batch, "_restore_behind", counting)
    assert cli("worker", "--queue", queue, "--once").exit_code == 0
    assert job(queue, first).status == "completed" and job(queue, second).status == "completed"
    assert len(done) == 3  # b and c of the first job, and the second job's image: a was kept


def test_submit_refuses_what_cannot_be_an_image_file(tmp_path, queue, model, named_pipe):
    files = photos(tmp_path, ["a.jpg"])
    result = cli("submit", files[0], named_pipe, "/dev/zero", "--queue", queue, "--model", model)
    assert result.exit_code == 2
    assert "pipe.png: is a named pipe, not an image file" in result.stderr
    assert "/dev/zero: is a character device" in result.stderr
    assert not (queue / "jobs").exists() or not list((queue / "jobs").iterdir())


def test_a_damaged_queue_database_is_a_setup_error_naming_it(tmp_path, queue, model):
    submit(queue, model, *photos(tmp_path, ["a.jpg"]))
    database = queue / "queue.db"
    for leftover in queue.glob("queue.db-*"):  # the WAL's files: a copy taken without them
        leftover.unlink()
    database.write_bytes(b"not a database, as after a half-finished copy" * 100)
    damaged = database.read_bytes()
    for command in (["status"], ["worker", "--once"], ["submit", photos(tmp_path, ["b.jpg"])[0], "--model", model],
                    ["prune", "--older-than", "1s"]):
        result = cli(*command, "--queue", queue)
        assert result.exit_code == 3, (command, result.stderr, result.exception)
        assert f"{database}: file is not a database; restore it from a backup, or move it aside" in result.stderr
    assert database.read_bytes() == damaged  # left as it was, for whoever repairs it
    with pytest.raises(QueueUnavailable, match="file is not a database"):
        JobStore(queue)


def test_prune_of_a_file_says_so(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    result = cli("prune", taken, "--older-than", "1s")
    assert result.exit_code == 2 and f"{taken}: is a file, not a folder" in result.stderr
    result = cli("prune", tmp_path / "absent", "--older-than", "1s")
    assert result.exit_code == 2 and "absent: no such folder" in result.stderr
    assert taken.read_text() == "keep me"


def test_a_job_for_a_device_this_machine_lacks_waits_for_a_worker_that_has_it(tmp_path, queue, model):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last CUDA device: absent on every machine
    job_id = json.loads(cli("submit", *photos(tmp_path, ["a.jpg"]), "--queue", queue, "--model", model, "--device",
                            missing, "--json").stdout)["job_id"]
    result = cli("worker", "--queue", queue, "--once")
    assert result.exit_code == 3 and f"--device {missing}: " in result.stderr
    assert "queued again for a worker that can" in result.stderr
    assert job(queue, job_id).status == "queued" and job(queue, job_id).attempts == 1
    assert cli("worker", "--queue", queue, "--once", "--device", "cpu").exit_code == 0  # a worker that has it
    assert job(queue, job_id).status == "completed"


def test_submit_copies_a_file_named_twice_once_and_refuses_names_that_clash(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    job_id = json.loads(cli("submit", files[0], files[0].parent, "--queue", queue, "--model", model,
                            "--json").stdout)["job_id"]
    assert [i["stored"] for i in job(queue, job_id).inputs] == ["a.jpg"]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(files[0], other / "A.JPG")  # one name on macOS's and Windows' file systems
    result = cli("submit", files[0], other / "A.JPG", "--queue", queue, "--model", model)
    assert result.exit_code == 2 and "have the same name in one job" in result.stderr


# ----------------------------------------------------------------------------- hostile folders (issue 20, point 2)


def _plant(queue, job_id, where: str, target: Path) -> None:
    """Replace (or add) ``where`` inside the job's folder with a symbolic link to ``target``."""
    path = queue / "jobs" / job_id / where
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize(("where", "reason"), [
    ("outputs", "outputs is a symbolic link"),
    ("work/resume", "work/resume is a symbolic link"),
    ("work", "work is a symbolic link"),
    ("inputs/a.jpg", "inputs/a.jpg is a symbolic link"),
])
def test_a_job_folder_with_a_planted_link_fails_alone_and_nothing_goes_through_it(tmp_path, queue, model, where,
                                                                                  reason):
    files = photos(tmp_path, ["a.jpg"])
    hostile = submit(queue, model, *files)["job_id"]
    sound = submit(queue, model, *files)["job_id"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    target = elsewhere / "keep.txt" if where.startswith("inputs/") else elsewhere
    _plant(queue, hostile, where, target)
    worked = cli("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    assert "Traceback" not in worked.stderr
    status = json.loads(cli("status", hostile, "--queue", queue, "--json").stdout)
    assert status["status"] == "failed" and reason in status["error"] and "not what restorecli made" in status["error"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]  # nothing written through the link
    assert (elsewhere / "keep.txt").read_text() == "mine"
    assert json.loads(cli("status", sound, "--queue", queue, "--json").stdout)["status"] == "completed"  # went on


def test_a_link_planted_as_outputs_during_a_run_is_replaced_not_followed(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg", "b.jpg"])
    job_id = submit(queue, model, *files)["job_id"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    worker = spawn_worker(queue, "--once", slow=1.5)
    # reading its first image: past the worker's check of the folder (a claim alone is not, on a loaded machine)
    wait_until(lambda: job(queue, job_id).current is not None, what="the job's first image")
    (queue / "jobs" / job_id / "outputs").symlink_to(elsewhere)  # after the worker checked the folder
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0 and "Traceback" not in err, err
    assert job(queue, job_id).status == "completed"
    outputs = queue / "jobs" / job_id / "outputs"
    assert not outputs.is_symlink() and sorted(p.name for p in outputs.iterdir()) == ["a.jpg", "b.jpg"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_prune_leaves_a_live_submission_s_staging_folder_alone(tmp_path, queue, model):
    files = photos(tmp_path, ["a.jpg"])
    submit(queue, model, *files)
    from restorecli.files import writer_tag

    live = queue / "incoming" / f"20260101-000000-{'a' * 32}.{writer_tag()}"  # this process: alive
    dead = queue / "incoming" / f"20260101-000000-{'b' * 32}.999999999@{writer_tag().split('@')[1]}"
    for folder in (live, dead):
        (folder / "inputs").mkdir(parents=True)
        (folder / "inputs" / "big.jpg").write_bytes(b"x" * 100)
        os.utime(folder, (0, 0))  # however old
    pruned = cli("prune", "--queue", queue, "--older-than", "0s", "--json")
    assert pruned.exit_code == 0, pruned.stderr
    removed = [r["path"] for r in json.loads(pruned.stdout)["removed"]]
    assert str(dead) in removed and str(live) not in removed
    assert live.is_dir() and not dead.exists()


def test_submit_whose_staging_folder_is_pruned_meanwhile_fails_loudly_and_queues_nothing(tmp_path, queue, model,
                                                                                      monkeypatch):
    files = photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    import restorecli.jobs.submit as submitting

    copies = []
    real_copy = shutil.copyfile

    def copy_then_prune(source, target):  # as a concurrent `prune --older-than 0s` did before the third copy
        copies.append(target)
        if len(copies) == 3:
            shutil.rmtree(Path(target).parent.parent)  # the staging folder, with the two files copied so far
            Path(target).parent.mkdir(parents=True)  # made again as submit's next copy makes its folder
        return real_copy(source, target)

    monkeypatch.setattr(submitting.shutil, "copyfile", copy_then_prune)
    result = cli("submit", *files, "--queue", queue, "--model", model)
    assert result.exit_code == 3 and "vanished" in result.stderr and "nothing was queued" in result.stderr
    overview = json.loads(cli("status", "--queue", queue, "--json").stdout)
    assert overview["counts"]["queued"] == 0
    assert list((queue / "incoming").iterdir()) == [] and list((queue / "jobs").iterdir()) == []


def test_a_worker_run_in_process_gives_back_the_signal_handlers_it_installed(tmp_path):
    def mine(signum, frame):
        pass

    saved = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        assert cli("worker", "--queue", tmp_path / "empty", "--once").exit_code == 0
        assert all(signal.getsignal(sig) is mine for sig in saved)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_lease_the_queue_can_no_longer_renew_is_lost_not_a_hung_worker(tmp_path, queue, model, monkeypatch):
    """The disk under the queue fills (or its database fails) while a job runs: the lease thread ends saying the
    job is no longer this worker's, instead of dying silently while the worker goes on forever."""
    from restorecli.jobs.run import LeaseRenewer

    submit(queue, model, *photos(tmp_path, ["a.jpg"]))
    store = JobStore(queue)
    lease = store.claim(60, 3, "w:1")

    def full(self, *args, **kwargs):
        raise QueueUnavailable(f"{queue / 'queue.db'}: database or disk is full")

    monkeypatch.setattr(JobStore, "renew", full)
    renewer = LeaseRenewer(queue, lease, 0.3)
    renewer.start()
    renewer.join(30)
    assert not renewer.is_alive() and renewer.lost.is_set() and renewer.gone
