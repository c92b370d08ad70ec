"""Long first-run steps show progress (issue 30): on a terminal a live line with the elapsed time and the time left,
then what the step found; on a pipe one line as a step starts and one as it ends; a second run none of it. The
estimate comes from the step's parts done so far or from the time recorded for its kind (``restorecli.progress``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import platformdirs
import pytest
import torch

from helpers.cli import invoke, step_events
from helpers.probes import fixed_probe
from restorecli.cli.render import step_end_line, step_line
from restorecli.engine import device
from restorecli.engine.backends.choice import Candidate, Measurement, choose_backend
from restorecli.engine.device import place_model
from restorecli.models.integrity import sha256_of
from restorecli.models.loading import load_model
from restorecli.progress import FIRST_RATES, Step, recorded_rate, reporting, time_left
from test_terminal import frames_of, run_on_a_terminal, screen_of

CPU = torch.device("cpu")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bf16_measured_anew():
    """The bf16 check runs again in this process (its finding is kept per process), and is forgotten after."""
    device.cpu_bf16_speedup.cache_clear()
    yield
    device.cpu_bf16_speedup.cache_clear()


# --- the estimate, library level --------------------------------------------------------------------------------


def test_time_left_comes_from_the_parts_done_else_from_the_expected_time():
    assert time_left(6.0, parts=4, done=2) == 6.0  # two parts took 6 s: two more take as long
    assert time_left(6.0, expected=20.0, parts=4, done=3) == 2.0  # parts done outweigh the expectation
    assert time_left(5.0, expected=20.0, parts=4, done=0) == 15.0
    assert time_left(25.0, expected=20.0) == 0.0 and time_left(3.0) is None


def test_a_conversion_is_estimated_from_the_rate_the_last_one_recorded(tmp_path):
    """The first conversion on a machine is estimated from the first guess per million parameters; it records its
    own rate as it ends, and the next (another model, another size) is estimated from that. A failed step records
    nothing. Times come from a fake clock."""
    clock = FakeClock()
    kind = "pnnx conversion"
    assert recorded_rate(kind) == FIRST_RATES[kind]
    with Step("converting a", kind=kind, size=2.0, clock=clock) as first:
        assert first.expected == pytest.approx(2.0 * FIRST_RATES[kind])
        clock.now += 10.0
    assert first.elapsed() == 10.0 and recorded_rate(kind) == pytest.approx(5.0)
    with Step("converting b", kind=kind, size=3.0, clock=clock) as second:
        clock.now += 4.0
        assert second.remaining() == pytest.approx(11.0)  # 3 M parameters at 5 s each, 4 s in
        assert step_line(second) == "converting b: 4 s elapsed, about 11 s left"
        clock.now += 20.0
        assert step_line(second) == "converting b: 24 s elapsed, taking longer than estimated"
        second.found = "converted b"
    assert step_end_line(second) == "converted b (24.0 s)" and recorded_rate(kind) == pytest.approx(8.0)
    with pytest.raises(RuntimeError), Step("converting c", kind=kind, size=1.0, clock=clock) as failed:
        clock.now += 1.0
        raise RuntimeError("pnnx died")
    assert failed.failed and step_end_line(failed) == "converting c: failed after 1.0 s"
    assert recorded_rate(kind) == pytest.approx(8.0)
    assert json.loads((platformdirs.user_cache_path("restorecli") / "step-seconds.json").read_text()) == {kind: 8.0}


def test_a_step_tells_the_installed_listener_else_its_notice():
    clock, heard, said = FakeClock(), [], []
    with reporting(lambda phase, step: heard.append((phase, step.text, step.done))):
        with Step("timing", parts=2, notice=said.append, clock=clock) as step:
            step.advance()
            step.advance()
    assert heard == [("start", "timing", 0), ("update", "timing", 1), ("update", "timing", 2), ("end", "timing", 2)]
    assert said == []  # the listener heard it: the notice is for callers that install none
    with Step("converting", notice=said.append, tell_end=True, clock=clock) as step:
        step.found = "converted"
    with Step("loading", notice=said.append, routine=True, clock=clock):
        pass
    assert said == ["converting", "converted"] and len(heard) == 4  # no listener after the block


def test_the_speed_probe_counts_its_candidates_as_parts(make_model):
    """The probe knows how many candidates it times: each one warmed moves its step on by a part, and the rounds
    that time them all together by the last."""
    model = place_model(load_model(str(make_model(2, "compact", "pth")), CPU), CPU, torch.float32)
    digest = sha256_of(model.spec.path)

    measure = fixed_probe(lambda candidate: Measurement({"ncnn": 0.5, "torch": 1.0}[candidate.backend], 60.0))

    heard = []
    with reporting(lambda phase, step: heard.append((phase, step.done, step.parts, step.found))):
        choose_backend("auto", "cpu", "fp32", model, CPU, torch.float32, object(), lambda: digest, measure=measure)
    steps = [entry for entry in heard if entry[2] is not None]  # the one step with parts: a candidate warmed each,
    # then the rounds timing them all
    assert [entry[:3] for entry in steps] == [("start", 0, 3), ("update", 1, 3), ("update", 2, 3), ("update", 3, 3),
                                              ("end", 3, 3)]
    assert steps[-1][3] == f"{model.spec.name} runs fastest with ncnn on cpu in fp32"


# --- through the CLI --------------------------------------------------------------------------------------------


def test_on_a_pipe_each_first_run_step_says_its_start_and_end_and_a_second_run_none(make_model, tmp_path,
                                                                                     monkeypatch, bf16_measured_anew):
    """stderr not a terminal (a pipe, a cron log): the bf16 check and the precision probe each print the line they
    start with and the line they end with, and no live line; the second run, their findings recorded, none."""
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: 2.0)  # bf16 fast here: auto probes the model
    tiny = make_model(2, "compact", "pth")
    photo = tmp_path / "in.png"
    photo.write_bytes(_png())
    common = ("--model", tiny, "--device", "cpu", "--backend", "torch")
    first = invoke("restore", photo, "-o", tmp_path / "a", *common)
    assert first.exit_code == 0, first.stderr
    lines = [" ".join(line.split()) for line in first.stderr.splitlines()]
    name = tiny.stem
    expected = [
        "checking whether this CPU runs bf16 faster than fp32 (once per machine)",
        "bf16 runs 2.00x as fast as fp32 on this CPU: --precision auto may use bf16",
        f"checking that {name} runs in bf16 on cpu:",
        (f"{name} runs in bf16", f"{name} stays in fp32: its bf16 result is"),
    ]
    found = [next((i for i, line in enumerate(lines) if line.startswith(start)), None) for start in expected]
    assert None not in found and found == sorted(found), first.stderr
    assert re.search(r"\(\d+\.\d s\)$", lines[found[1]]) and re.search(r"\(\d+\.\d s\)$", lines[found[3]])
    assert "elapsed" not in first.stderr  # no live line on a pipe
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: pytest.fail("measured again"))
    device.cpu_bf16_speedup.cache_clear()  # a new process: it reads the recorded finding
    second = invoke("restore", photo, "-o", tmp_path / "b", *common)
    assert second.exit_code == 0, second.stderr
    assert not any(word in second.stderr for word in ("checking", "bf16 runs", "once per", "elapsed"))


def test_on_a_terminal_a_step_shows_a_live_line_with_the_time_left_then_what_it_found(make_model, tmp_path):
    """A real process on a pseudo-terminal: the first run's bf16 check is drawn as a live line with its elapsed
    time and an estimate from the time recorded for its kind (here a recorded 10 minutes, so the estimate does
    not depend on this machine's speed), then leaves the line of what it found on the screen."""
    record = platformdirs.user_cache_path("restorecli") / "step-seconds.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"bf16 check": 600.0}))
    tiny = make_model(2, "compact", "pth")
    photo = tmp_path / "in.png"
    photo.write_bytes(_png())
    code, received, _ = run_on_a_terminal(["restore", str(photo), "-o", str(tmp_path / "out"), "--model", str(tiny),
                                           "--device", "cpu", "--backend", "torch"], tmp_path, columns=200)
    assert code == 0, received.decode(errors="replace")
    live = [frame.decode(errors="replace") for frame in frames_of(received)]
    pattern = re.compile(r"checking whether this CPU runs bf16 faster than fp32 \(once per machine\): "
                         r"(<1|\d+) s elapsed, about (10:00|9:\d\d) left")
    assert any(pattern.search(frame) for frame in live), live
    screen = "\n".join(screen_of(received, 200))
    assert re.search(r"bf16 runs \d+\.\d\dx as fast as fp32 on this CPU: --precision auto (may use bf16|keeps fp32) "
                     r"\(\d+\.\d s\)", screen), screen
    assert "elapsed" not in screen  # the live line is gone once its step ended


def _png() -> bytes:
    """A 20x16 RGB PNG: a few tiles of a tiny model, quick on any machine."""
    import cv2
    import numpy as np

    pixels = (np.arange(20 * 16 * 3).reshape(16, 20, 3) % 251).astype(np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def test_evaluate_says_its_first_run_steps_too(make_model, monkeypatch, bf16_measured_anew):
    """``evaluate`` loads models as ``restore`` does: its first run's bf16 check and precision probe are said on
    stderr as they start and end (not left silent behind the evaluation's bar), with ``--json`` as JSON lines
    there; a second run says neither."""
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: 2.0)  # bf16 fast here: auto probes the model
    tiny = make_model(2, "compact", "pth")
    args = ("evaluate", "test_inputs/rocket.jpg", "--models", tiny, "--device", "cpu", "--json")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    first = invoke(*args)
    assert first.exit_code == 0, first.stderr
    said = " ".join(first.stderr.split())
    assert "checking whether this CPU runs bf16 faster than fp32 (once per machine)" in said
    assert f"checking that {tiny.stem} runs in bf16 on cpu" in said and "bf16 runs 2.00x as fast" in said
    bf16, probe = "checking whether this CPU runs bf16 faster than fp32", f"checking that {tiny.stem} runs in bf16 on cpu"
    assert [(e["step"].startswith(bf16), e["step"].startswith(probe), e["state"]) for e in step_events(first.stderr)] \
        == [(True, False, "start"), (True, False, "end"), (False, True, "start"), (False, True, "end")], first.stderr
    assert {json.loads(line)["type"] for line in first.stdout.splitlines()} == {"row", "summary"}
    device.cpu_bf16_speedup.cache_clear()
    second = invoke(*args)
    assert second.exit_code == 0 and "checking" not in second.stderr, second.stderr


# --- machine-readable steps (--json) and the queue's worker ---------------------------------------------------


def test_restore_json_gives_each_step_as_json_lines_on_stderr_and_stdout_stays_one_result_a_line(
        make_model, tmp_path, monkeypatch, bf16_measured_anew):
    """``restore --json`` on a fresh cache: each first-run step is a JSON line on stderr as it starts (with its
    elapsed time and the estimate of the time left) and as it ends (its time, what it found); stdout keeps its
    one line per image and the summary line, nothing else."""
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: 2.0)
    tiny = make_model(2, "compact", "pth")
    photo = tmp_path / "in.png"
    photo.write_bytes(_png())
    done = invoke("restore", photo, "-o", tmp_path / "out", "--model", tiny, "--device", "cpu", "--backend", "torch",
                  "--json")
    assert done.exit_code == 0, done.stderr
    assert [json.loads(line)["type"] for line in done.stdout.splitlines()] == ["item", "summary"], done.stdout
    events = step_events(done.stderr)
    bf16 = [e for e in events if e["step"] == "checking whether this CPU runs bf16 faster than fp32 (once per machine)"]
    assert [e["state"] for e in bf16] == ["start", "end"], done.stderr
    start, end = bf16
    assert start["elapsed"] >= 0 and start["left"] == pytest.approx(FIRST_RATES["bf16 check"], abs=0.1)
    assert end["elapsed"] >= start["elapsed"] and end["left"] == 0 and end["failed"] is False
    assert end["found"] == "bf16 runs 2.00x as fast as fp32 on this CPU: --precision auto may use bf16"
    probe = [e["state"] for e in events if e["step"].startswith(f"checking that {tiny.stem} runs in bf16 on cpu")]
    assert probe == ["start", "end"], done.stderr
    assert "checking" not in "\n".join(line for line in done.stderr.splitlines() if not line.startswith("{"))


def test_the_worker_says_its_steps_and_status_shows_the_step_its_job_waits_on(make_model, tmp_path, monkeypatch,
                                                                              bf16_measured_anew):
    """``worker`` on a fresh cache says its first job's steps on stderr as they start and end (with their time);
    while the job waits on one, ``status JOB`` says ``preparing: STEP, N s`` and ``status JOB --json`` has the
    step with its elapsed seconds (both asked from inside the bf16 check, while the worker is in it); once the
    job is done, neither."""
    queue = tmp_path / "queue"
    tiny = make_model(2, "compact", "pth")
    photo = tmp_path / "in.png"
    photo.write_bytes(_png())
    job = json.loads(invoke("submit", photo, "--queue", queue, "--model", tiny, "--device", "cpu", "--backend",
                            "torch", "--json").stdout)["job_id"]
    seen = {}

    def measured_while_status_is_asked() -> float:
        seen["text"] = invoke("status", job.rsplit("-", 1)[-1][:8], "--queue", queue)  # its short id
        seen["json"] = invoke("status", job, "--queue", queue, "--json")
        seen["queue"] = invoke("status", "--queue", queue, "--json")
        return 2.0

    monkeypatch.setattr(device, "_measure_bf16_speedup", measured_while_status_is_asked)
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    lines = [" ".join(line.split()) for line in worked.stderr.splitlines()]
    start = lines.index("checking whether this CPU runs bf16 faster than fp32 (once per machine)")
    assert re.fullmatch(r"bf16 runs 2\.00x as fast as fp32 on this CPU: --precision auto may use bf16 \(\d+\.\d s\)",
                        lines[start + 1]), worked.stderr
    assert any(line.startswith(f"checking that {tiny.stem} runs in bf16 on cpu") for line in lines)
    text = " ".join(seen["text"].stderr.split())
    assert re.search(r"job \S+: processing, 0 of 1 image done preparing: checking whether this CPU runs bf16 "
                     r"faster than fp32, (<1|\d+) s$", text), text
    status = json.loads(seen["json"].stdout)
    assert status["status"] == "processing" and status["step"]["text"] == ("checking whether this CPU runs bf16 "
                                                                           "faster than fp32")
    assert status["current"] == "preparing: " + status["step"]["text"] and status["step"]["elapsed"] >= 0
    running = json.loads(seen["queue"].stdout)["running"]
    assert [run["step"]["text"] for run in running] == [status["step"]["text"]]
    after = json.loads(invoke("status", job, "--queue", queue, "--json").stdout)
    assert after["status"] == "completed" and after["step"] is None and after["current"] is None


def test_worker_json_gives_its_steps_as_json_lines_on_stderr_and_stdout_keeps_its_events(
        make_model, tmp_path, monkeypatch, bf16_measured_anew):
    """``worker --json``: the steps are JSON lines on stderr, as ``restore --json`` gives them; stdout keeps the
    worker's own events, one a line."""
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: 2.0)
    queue = tmp_path / "queue"
    photo = tmp_path / "in.png"
    photo.write_bytes(_png())
    assert invoke("submit", photo, "--queue", queue, "--model", make_model(2, "compact", "pth"), "--device", "cpu",
                  "--backend", "torch").exit_code == 0
    worked = invoke("worker", "--queue", queue, "--once", "--json")
    assert worked.exit_code == 0, worked.stderr
    assert [json.loads(line)["type"] for line in worked.stdout.splitlines()] == ["claimed", "image", "finished"]
    bf16 = [e for e in step_events(worked.stderr) if e["step"].startswith("checking whether this CPU runs bf16")]
    assert [e["state"] for e in bf16] == ["start", "end"] and bf16[1]["found"].startswith("bf16 runs 2.00x")
