"""What a user meets before any image: start-up cost, help text, usage errors, and a queue that does not exist yet."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from helpers.cli import invoke

HEAVY = ("torch", "torchvision", "spandrel", "cv2", "numpy", "PIL", "skimage")
COMMANDS = ["restore", "submit", "worker", "status", "cancel", "prune", "serve", "models", "download-weights",
            "evaluate", "devices"]

# Run in a fresh interpreter (this test process has torch loaded already), in-process through typer's runner:
# prints the exit code and which heavy modules the command left in sys.modules.
_PROBE = """
import json, os, sys
from typer.testing import CliRunner
from restorecli.cli.app import app
result = CliRunner().invoke(app, json.loads(sys.argv[1]), prog_name="restorecli", env=json.loads(sys.argv[2]))
heavy = sorted(m for m in json.loads(sys.argv[3]) if m in sys.modules)
print(json.dumps({"exit_code": result.exit_code, "heavy": heavy, "stdout": result.stdout}))
"""


def _probe(args: list[str], env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(env or {}), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["restore", "--help"], ["status"], ["status", "--json"],
    ["prune", "--older-than", "1d", "--dry-run"], ["models"], ["models", "--json"], ["worker", "--once"],
    ["serve", "--help"],
], ids=" ".join)
def test_commands_that_run_no_model_import_no_torch_opencv_or_numpy(tmp_path, args):
    """``--help``, ``--version``, ``status``, ``prune``, ``models`` and a worker on an empty queue load none of
    PyTorch, spandrel, OpenCV, Pillow or numpy (about 1.2 s and 600 MB before the fix)."""
    queue = tmp_path / "queue"
    extra = ["--queue", str(queue)] if args[0] in ("status", "prune", "worker") else []
    if args[0] == "models":
        extra = ["--weights-dir", str(tmp_path / "weights")]
    found = _probe(args + extra)
    assert found["exit_code"] == 0, found
    assert found["heavy"] == []


def test_shell_completion_imports_no_torch():
    """Each TAB of shell completion runs the program: it must not load PyTorch either."""
    found = _probe([], env={"_RESTORECLI_COMPLETE": "complete_bash", "COMP_WORDS": "restorecli res", "COMP_CWORD": "1"})
    assert "restore" in found["stdout"].split()
    assert found["heavy"] == []


def test_help_lists_restore_first_and_every_command():
    result = invoke("--help", terminal_width=120)
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_help_writes_metavars_as_the_readme_does(command):
    """No Python types (``<str>``, ``<list[str]>``, ``<float range>``) nor Typer's ``{inputs}...``."""
    result = invoke(command, "--help", terminal_width=200)
    assert result.exit_code == 0
    for shown in ("<str>", "<list", "range>", "<int>", "<float>", "<path>", "{"):
        assert shown not in result.stdout, f"{command} --help shows {shown}:\n{result.stdout}"


def test_restore_help_names_its_arguments_and_choices():
    text = invoke("restore", "--help", terminal_width=200).stdout
    assert "Usage: restorecli restore [OPTIONS] INPUT..." in text
    for metavar in ("--model, --chain NAME|PATH", "--tile auto|0|N", "--format same|png|jpg|webp|tiff",
                    "--precision auto|fp32|fp16|bf16", "-o, --output DIR|-"):
        assert metavar in text


@pytest.mark.parametrize(("args", "option", "choices"), [
    (["restore", "a.png", "--format", "gif"], "--format", "same, png, jpg, webp, tiff"),
    (["restore", "a.png", "--precision", "int8"], "--precision", "auto, fp32, fp16, bf16"),
    (["submit", "a.png", "--alpha", "drop"], "--alpha", "model, resize"),
    (["evaluate", "--degrade", "jpeg"], "--degrade", "bicubic, blur-noise-jpeg"),
])
def test_a_wrong_choice_is_a_usage_error_that_lists_the_choices(tmp_path, args, option, choices):
    result = invoke(*args, *(["--queue", str(tmp_path / "q")] if args[0] == "submit" else []))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {option} '{args[-1]}' is not one of {choices}")
    assert "Value error" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "q").exists()  # refused before anything is queued


def test_a_stop_before_the_first_image_counts_the_batch_like_a_later_one(monkeypatch, tmp_path):
    """SIGTERM while the model loads said 'after 0 images' where a later stop said 'after 1 of 3 images'."""
    import signal

    from restorecli.cli.exits import Interrupted
    from restorecli import pipeline

    inputs = []
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"not read: the stop comes first")
        inputs.append(str(tmp_path / name))

    def loading(options, notice=None):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(pipeline.Restorer, "from_options", staticmethod(loading))
    result = invoke("restore", *inputs, "-o", str(tmp_path / "out"))
    assert result.exit_code == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM after 0 of 3 images" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ a queue that does not exist yet


def test_a_worker_on_a_queue_folder_that_does_not_exist_yet_has_nothing_to_do(tmp_path):
    """A cron line running ``worker --once`` before the first job logged an error (exit 2) every minute."""
    queue = tmp_path / "not-yet"
    result = invoke("worker", "--once", "--queue", str(queue))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "" and not queue.exists()  # nothing created: the first submit makes the queue


def test_status_of_a_queue_that_does_not_exist_yet_is_an_empty_queue(tmp_path):
    queue = tmp_path / "not-yet"
    result = invoke("status", "--queue", str(queue), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["counts"] == {"queued": 0, "processing": 0, "completed": 0, "failed": 0} and data["running"] == []
    human = invoke("status", "--queue", str(queue))
    assert human.exit_code == 0 and "queued" in human.stderr
    one = invoke("status", "0123abcd", "--queue", str(queue))
    assert one.exit_code == 2 and "no job '0123abcd'" in one.stderr
    queue.mkdir()  # an empty folder is a queue nobody has submitted to either
    assert invoke("status", "--queue", str(queue)).exit_code == 0
    assert invoke("worker", "--once", "--queue", str(queue)).exit_code == 0


@pytest.mark.parametrize("command", [["worker", "--once"], ["status"]])
def test_a_folder_holding_something_else_is_still_not_a_queue(tmp_path, command):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"a photo, not a queue")
    result = invoke(*command, "--queue", str(folder))
    assert result.exit_code == 2
    assert "not a restorecli queue" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]
    file = tmp_path / "queue-file"
    file.write_text("x")
    assert invoke(*command, "--queue", str(file)).exit_code == 2


def test_a_waiting_worker_takes_the_first_job_once_the_queue_appears(tmp_path, make_model):
    """Without --once a worker started before the queue exists waits for it, then does its jobs."""
    from restorecli.jobs.worker import WorkerOptions, run_worker

    queue = tmp_path / "queue"
    model = make_model(2, "compact", "safetensors")
    photo = tmp_path / "a.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(photo), np.full((16, 16, 3), 128, np.uint8))
    stop = threading.Event()
    events: list[str] = []

    def emit(event: str, data: dict) -> None:
        events.append(event)
        if event == "finished":
            stop.set()

    worker = threading.Thread(target=run_worker, args=(queue, WorkerOptions(poll=0.1, max_seconds=120), stop, emit))
    worker.start()
    try:
        submitted = invoke("submit", str(photo), "--queue", str(queue), "--model", str(model), "--json")
        assert submitted.exit_code == 0, submitted.stderr
        worker.join(timeout=120)
    finally:
        stop.set()
        worker.join()
    assert events[0] == "claimed" and "finished" in events
    job_id = json.loads(submitted.stdout)["job_id"]
    status = json.loads(invoke("status", job_id, "--queue", str(queue), "--json").stdout)
    assert status["status"] == "completed"


def test_a_misspelt_model_is_refused_by_submit_with_a_suggestion(tmp_path):
    """As ``restore`` does: exit 2 naming what was probably meant, and nothing queued."""
    photo = tmp_path / "a.png"
    photo.write_bytes(b"never read: the name is refused first")
    result = invoke("submit", str(photo), "--queue", str(tmp_path / "q"), "--model", "realesrgan-x4")
    assert result.exit_code == 2
    assert "unknown model 'realesrgan-x4'" in result.stderr and "did you mean realesrgan-x4plus" in result.stderr
    assert not (tmp_path / "q").exists()
    gone = invoke("submit", str(photo), "--queue", str(tmp_path / "q"), "--model", "gone/x.pth")
    assert gone.exit_code == 3  # a checkpoint path that is not there: a set-up that lacks it


def test_a_job_whose_model_name_this_version_does_not_know_fails_alone(tmp_path, make_model):
    """A job queued by another version may name a model this registry lacks: that job fails with the reason,
    the worker goes on (it used to end with a traceback)."""
    import cv2
    import numpy as np

    from restorecli.jobs.store import JobStore

    queue = tmp_path / "queue"
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.full((16, 16, 3), 128, np.uint8))
    model = make_model(2, "compact", "safetensors")
    ids = []
    for _ in range(2):
        submitted = invoke("submit", str(photo), "--queue", str(queue), "--model", str(model), "--json")
        assert submitted.exit_code == 0, submitted.stderr
        ids.append(json.loads(submitted.stdout)["job_id"])
    store = JobStore(queue)
    options = store.get(ids[0]).options
    store.close()
    with sqlite3.connect(queue / "queue.db") as db:  # as a newer version would have queued it
        db.execute("UPDATE jobs SET options = ? WHERE id = ?", (json.dumps({**options, "model": "realesrgan-x5plus"}),
                                                                ids[0]))
    result = invoke("worker", "--once", "--queue", str(queue))
    assert result.exit_code == 0, result.stderr
    statuses = [json.loads(invoke("status", i, "--queue", str(queue), "--json").stdout) for i in ids]
    assert statuses[0]["status"] == "failed" and "unknown model 'realesrgan-x5plus'" in statuses[0]["error"]
    assert statuses[1]["status"] == "completed"


@pytest.mark.parametrize("args", [
    ["restore", "a.png", "--model", "realesrgan-x4"],
    ["evaluate", "--models", "realesrgan-x4"],
    ["download-weights", "realesrgan-x4"],
])
def test_a_stderr_that_is_no_terminal_gets_messages_and_no_progress_bar_leftovers(tmp_path, args):
    """A cron log got an empty line from every run (the stopped bar's), before the error it was looking for."""
    photo = tmp_path / "a.png"
    photo.write_bytes(b"never read: the model name is refused first")
    args = [str(photo) if a == "a.png" else a for a in args]
    result = invoke(*args, "--weights-dir", str(tmp_path / "w"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown model 'realesrgan-x4'"), repr(result.stderr)
