"""The CLI's remaining rough edges (issues 29 and 30): status lists every job and takes a unique start of an id,
job ids complete on TAB, ``serve --help`` reads in groups, ``--format`` takes jpeg and tif, fp16 on a CPU is said to
be slow, and the commands print only through the renderer."""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import pytest

from helpers.cli import invoke
from test_cli_usage import _probe

CLI = Path(__file__).resolve().parent.parent / "src" / "restorecli" / "cli"


def _complete(words: str, env: dict[str, str] | None = None) -> dict:
    typed = words.split()
    return _probe([], env={"_RESTORECLI_COMPLETE": "complete_bash", "COMP_WORDS": words,
                           "COMP_CWORD": str(len(typed) if words.endswith(" ") else len(typed) - 1), **(env or {})})


@pytest.fixture
def two_jobs(tmp_path) -> tuple[Path, list[str]]:
    from conftest import TEST_INPUTS

    queue = tmp_path / "queue"
    ids = []
    for name in ("rocket.jpg", "cameraman_gray.png"):
        done = invoke("submit", TEST_INPUTS / name, "--queue", queue, "--json")
        assert done.exit_code == 0, done.stderr
        ids.append(json.loads(done.stdout)["job_id"])
    return queue, ids


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_a_job_id_completes_from_the_queue(two_jobs, command):
    queue, ids = two_jobs
    every = _complete(f"restorecli {command} --queue {queue} ")
    assert sorted(every["stdout"].split()) == sorted(ids)
    assert every["heavy"] == []  # each TAB runs the program: no torch, no OpenCV
    one = ids[1]
    prefix = next(one[:n] for n in range(1, len(one)) if not ids[0].startswith(one[:n]))  # one's shortest own prefix
    assert _complete(f"restorecli {command} --queue {queue} {prefix}")["stdout"].split() == [one]
    from_env = _complete(f"restorecli {command} ", env={"RESTORECLI_QUEUE": str(queue)})  # the queue a user set
    assert sorted(from_env["stdout"].split()) == sorted(ids)


def test_a_job_id_completes_from_the_start_of_the_short_id_status_shows(two_jobs):
    """Issue 30: status shows short ids (the start of an id's random part), which commands take; a TAB after the
    start of one offered nothing, since it completed whole ids only (which begin with the date)."""
    queue, ids = two_jobs
    shown = {job["job_id"]: job["short_id"] for job in
             json.loads(invoke("status", "--queue", queue, "--json").stdout)["jobs"]}
    tails = [job_id.rsplit("-", 1)[-1] for job_id in ids]
    # six digits or more of its own (fewer might also start the ids' date, 2026...: those whole ids come first)
    own = next(tails[1][:n] for n in range(6, len(tails[1])) if not tails[0].startswith(tails[1][:n]))
    assert _complete(f"restorecli status --queue {queue} {own}")["stdout"].split() == [shown[ids[1]]]
    longer = tails[1][:len(shown[ids[1]]) + 2]  # more typed than the short id: the whole random part
    assert _complete(f"restorecli cancel --queue {queue} {longer}")["stdout"].split() == [tails[1]]
    assert invoke("status", shown[ids[1]], "--queue", queue).exit_code == 0  # what it offers names the job


def test_a_job_id_completes_to_nothing_where_there_is_no_queue(tmp_path):
    found = _complete(f"restorecli status --queue {tmp_path / 'none'} ")
    assert found["exit_code"] == 0 and found["stdout"].split() == []
    assert not (tmp_path / "none").exists()  # a TAB creates nothing


def test_submit_names_the_short_id_status_takes(two_jobs):
    """The id submit printed was the whole one only, while status lists and takes the short form."""
    from conftest import TEST_INPUTS

    queue, _ = two_jobs
    said = invoke("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue)
    assert said.exit_code == 0, said.stderr
    job_id = said.stdout.strip()
    short = json.loads(invoke("status", "--queue", queue, "--json").stdout)["jobs"][-1]["short_id"]
    assert f"queued 1 image(s) in {queue} at position 3 as job {short}" in " ".join(said.stderr.split())
    assert json.loads(invoke("status", short, "--queue", queue, "--json").stdout)["job_id"] == job_id
    again = json.loads(invoke("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue, "--json").stdout)
    assert again["short_id"] == json.loads(invoke("status", "--queue", queue, "--json").stdout)["jobs"][-1]["short_id"]


def test_status_lists_every_job_with_its_short_id_state_and_images_done(two_jobs):
    queue, ids = two_jobs
    data = json.loads(invoke("status", "--queue", queue, "--json").stdout)
    assert [(job["job_id"], job["status"], job["done"], job["total"]) for job in data["jobs"]] == [
        (ids[0], "queued", 0, 1), (ids[1], "queued", 0, 1)]
    shorts = [job["short_id"] for job in data["jobs"]]
    assert all(len(short) == 8 and job_id.split("-")[-1].startswith(short) for job_id, short in zip(ids, shorts))
    human = invoke("status", "--queue", queue)
    assert human.exit_code == 0
    for short in shorts:
        assert re.search(rf"{short}\s.*queued\s.*0/1", human.stderr), human.stderr
    one = invoke("status", shorts[1], "--queue", queue)
    assert one.exit_code == 0 and f"job {ids[1]}: queued, position 2, 0 of 1 image done" in one.stderr


def test_status_lists_only_the_latest_jobs_and_says_so(two_jobs, monkeypatch):
    from restorecli.cli import jobs

    queue, ids = two_jobs
    monkeypatch.setattr(jobs, "LISTED_JOBS", 1)
    human = invoke("status", "--queue", queue, terminal_width=200)
    assert human.exit_code == 0 and "jobs: the latest 1 of 2 (--json lists every one)" in human.stderr
    shown = json.loads(invoke("status", "--queue", queue, "--json").stdout)["jobs"]
    assert [job["job_id"] for job in shown] == ids  # all of them, for scripts
    assert shown[1]["short_id"] in human.stderr and shown[0]["short_id"] not in human.stderr


def test_a_unique_start_of_an_id_names_its_job_and_a_shared_one_names_the_matches(two_jobs):
    queue, ids = two_jobs
    for given in (ids[0][:-3], ids[0].split("-")[-1][:5]):  # the id's start, or its random part's
        found = invoke("status", given, "--queue", queue, "--json")
        assert found.exit_code == 0, found.stderr
        assert json.loads(found.stdout)["job_id"] == ids[0]
    shared = ids[0][:9]  # the date both share
    for command in ("status", "cancel"):
        ambiguous = invoke(command, shared, "--queue", queue)
        assert ambiguous.exit_code == 2
        assert f"'{shared}' names 2 jobs" in ambiguous.stderr and "give more of the id" in ambiguous.stderr
        assert ids[0] in ambiguous.stderr and ids[1] in ambiguous.stderr
    cancelled = invoke("cancel", ids[1].split("-")[-1][:8], "--queue", queue, "--json")
    assert cancelled.exit_code == 0, cancelled.stderr
    assert json.loads(cancelled.stdout) == {"job_id": ids[1], "was": "queued", "deleted": True}
    left = json.loads(invoke("status", "--queue", queue, "--json").stdout)
    assert [job["job_id"] for job in left["jobs"]] == [ids[0]]


def test_status_of_a_running_job_shows_the_images_its_worker_has_finished(tmp_path):
    from conftest import TEST_INPUTS

    from restorecli.jobs.store import JobStore

    queue = tmp_path / "queue"
    names = [str(TEST_INPUTS / name) for name in ("rocket.jpg", "cameraman_gray.png", "astronaut_face.jpg")]
    submitted = invoke("submit", *names, "--queue", queue)
    assert submitted.exit_code == 0, submitted.stderr
    store = JobStore(queue)
    try:  # a worker's lease, and its record of the second image finished first
        lease = store.claim(60, 3, "test-worker")
        assert store.record(lease, [{"original_filename": names[1], "output": "jobs/x/outputs/b.png",
                                     "status": "error", "error": "it broke"}])
    finally:
        store.close()
    data = json.loads(invoke("status", lease.job.id, "--queue", queue, "--json").stdout)
    assert (data["status"], data["done"], data["total"]) == ("processing", 1, 3)
    assert [(r["status"], r["error"], r["output"]) for r in data["results"]] == [
        ("pending", None, None), ("error", "it broke", None), ("pending", None, None)]
    overview = json.loads(invoke("status", "--queue", queue, "--json").stdout)
    assert [(job["status"], job["done"], job["total"]) for job in overview["jobs"]] == [("processing", 1, 3)]


def test_status_of_a_job_whose_worker_loads_its_models_says_so(tmp_path):
    """While a worker loads a job's models, status says the long step it waits on with its time, and between two
    steps that it is loading them (it said ``now: preparing``)."""
    from conftest import TEST_INPUTS

    from restorecli.jobs.store import JobStore

    queue = tmp_path / "queue"
    assert invoke("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue).exit_code == 0
    store = JobStore(queue)
    try:
        lease = store.claim(60, 3, "test-worker")
        assert store.preparing(lease, 60, None, None)
        between = invoke("status", lease.job.id, "--queue", queue)
        assert store.preparing(lease, 60, "converting tiny to ncnn with pnnx", time.time() - 12)
        converting = invoke("status", lease.job.id, "--queue", queue)
    finally:
        store.close()
    assert between.exit_code == 0 and "preparing: loading its models" in between.stderr, between.stderr
    assert "now:" not in between.stderr
    said = " ".join(converting.stderr.split())
    assert re.search(r"preparing: converting tiny to ncnn with pnnx, (1[2-9]|[2-9]\d) s", said), said


def _sections(help_text: str) -> dict[str, list[str]]:
    """Each heading of a --help page (``Options:``, ``Uploads:``) with the flags listed under it."""
    sections: dict[str, list[str]] = {}
    heading = None
    for line in help_text.splitlines():
        if re.fullmatch(r"[A-Z][^ ].*:", line):
            heading = line[:-1]
            sections[heading] = []
        elif heading and (match := re.match(r"\s{2}(-\w, )?(--[\w-]+)", line)):
            sections[heading].append(match.group(2))
    return sections


def test_serve_help_reads_in_groups_with_the_restore_options_last():
    result = invoke("serve", "--help", terminal_width=120, prog_name="restorecli")
    assert result.exit_code == 0
    sections = _sections(result.stdout)
    assert list(sections) == ["Options", "Queue and workers", "Uploads", "Access",
                              "Jobs' defaults (the restore options)"]
    assert {"--host", "--port", "--queue", "--help"} <= set(sections["Options"])
    assert {"--workers", "--retention", "--prune-every", "--grace"} == set(sections["Queue and workers"])
    assert {"--max-file-mb", "--max-files", "--max-video-mb", "--max-video-seconds", "--max-uploads",
            "--read-timeout", "--min-free-mb"} == set(sections["Uploads"])
    assert {"--allow-model", "--allow-face-model", "--cors-origin", "--allowed-host", "--no-auth"} == set(
        sections["Access"])
    defaults = set(sections.pop("Jobs' defaults (the restore options)"))
    assert {"--model", "--tile", "--precision", "--face-enhance", "--format", "--frames"} <= defaults
    assert not defaults & {flag for flags in sections.values() for flag in flags}  # each flag in one group


def test_restore_help_shows_its_groups_under_their_headings():
    sections = _sections(invoke("restore", "--help", terminal_width=120).stdout)
    assert list(sections)[:2] == ["Arguments", "Options"]
    assert {"--server", "--api-key-env", "--timeout"} == set(sections["Server"])
    assert "--face-enhance" in sections["Faces"] and "--face-enhance" not in sections["Options"]


def _summary(result) -> dict:
    return json.loads(result.stdout.splitlines()[-1])


def test_fp16_on_a_cpu_warns_that_it_is_slow_and_names_auto(tmp_path, make_model):
    from conftest import TEST_INPUTS

    args = ["restore", str(TEST_INPUTS / "rocket.jpg"), "--model", str(make_model(2)), "--device", "cpu", "--json"]
    half = invoke(*args, "-o", tmp_path / "fp16", "--precision", "fp16")
    assert half.exit_code == 0, half.stderr
    assert _summary(half)["precision"] == "fp16"  # still what was asked for: a warning, not a refusal
    warnings = [line for line in half.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, half.stderr  # once, though the model is set up for 8- and 16-bit images
    assert "--precision fp16 on the CPU is emulated and slow" in warnings[0] and "--precision auto" in warnings[0]
    full = invoke(*args, "-o", tmp_path / "fp32", "--precision", "fp32")
    assert full.exit_code == 0 and "warning" not in full.stderr


@pytest.mark.parametrize("given, suffix", [("jpeg", ".jpg"), ("JPG", ".jpg"), ("tif", ".tif"), ("tiff", ".tif")])
def test_format_takes_the_suffixes_of_its_formats(tmp_path, make_model, given, suffix):
    from conftest import TEST_INPUTS

    result = invoke("restore", TEST_INPUTS / "cameraman_gray.png", "--model", make_model(2), "-o", tmp_path,
                    "--format", given, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    item = json.loads(result.stdout.splitlines()[0])
    assert item["status"] == "planned" and item["output"] == str(tmp_path / f"cameraman_gray{suffix}")


def _printing_calls(path: Path) -> list[str]:
    """Where ``path`` prints itself: print(), typer.echo(), or a rich console's print()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("print", "typer.echo", "echo") or name.endswith("console.print") or name.endswith(".out"):
                if not name.startswith("render."):
                    found.append(f"{path.name}:{node.lineno}: {name}")
    return found


def test_the_commands_print_only_through_the_renderer():
    found = [call for path in sorted(CLI.glob("*.py")) if path.name != "render.py" for call in _printing_calls(path)]
    assert found == []
    assert _printing_calls(CLI / "render.py")  # the check finds what it looks for


def test_no_command_function_is_over_60_lines():
    long = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


@pytest.mark.parametrize(("args", "option", "values"), [
    (["--face-model", "a", "--face-model=b"], "'--face-model'", "(a, b)"),  # --model's repeats are a chain
    (["-o", "one", "-otwo"], "'-o' / '--output'", "(one, two)"),
    (["--tile", "64", "--outscale", "2", "--tile", "0"], "'--tile'", "(64, 0)"),
])
def test_an_option_that_takes_one_value_given_twice_is_refused_not_settled_by_the_last(tmp_path, args, option,
                                                                                       values):
    """``restore --model A --model B`` once ran B alone and exited 0: a repeated option must never drop a value."""
    photo = tmp_path / "in.png"
    photo.write_bytes(b"never read: the usage error comes first")
    result = invoke("restore", photo, *args)
    assert result.exit_code == 2
    assert f"Invalid value for {option}: given 2 times {values}; it takes one value" in result.stderr
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists()


def test_an_option_that_takes_several_values_may_be_repeated_and_a_value_like_an_option_is_a_value(tmp_path):
    photo = tmp_path / "in.png"
    photo.write_bytes(b"never read: a dry run of a file that is no image")
    result = invoke("restore", photo, "--suffix", "-o", "-o", tmp_path / "out", "--dry-run")  # --suffix's value
    assert "given 2 times" not in result.stderr
    served = invoke("serve", "--allow-model", "a", "--allow-model", "b", "--help")
    assert served.exit_code == 0, served.stderr
