"""The command line run in-process, as the Typer docs test it: ``invoke("restore", path, "-o", out)`` returns
click's Result, whose ``exit_code``, ``stdout`` and ``stderr`` the tests check apart."""

from __future__ import annotations

import json

from click.testing import Result
from typer.testing import CliRunner

from restorecli.cli.app import app


def invoke(*args, **kwargs) -> Result:
    """``restorecli ARGS``: each argument given as text (paths and numbers may be passed as they are); keyword
    arguments go to ``CliRunner.invoke`` (``input=``, ``env=``, ``terminal_width=``, ``prog_name=``)."""
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def json_lines(result) -> list[dict]:
    """Every non-blank line of a result's stdout (text or bytes, in-process or a subprocess's) read as JSON."""
    out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def step_events(stderr: str) -> list[dict]:
    """The JSON step events among the lines of a ``--json`` run's stderr (the summary table is text beside them)."""
    return [event for event in (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
            if event.get("type") == "step"]


def restore_exactly(*args) -> Result:
    """``restorecli restore ARGS --json`` on the CPU in fp32, untiled: the runs the video and animation tests compare
    frame by frame with a ``Restorer`` of the same settings."""
    return invoke("restore", *args, "--device", "cpu", "--precision", "fp32", "--tile", "0", "--json")


def items_of(result) -> list[dict]:
    """The per-input lines of a ``--json`` run."""
    return [line for line in json_lines(result) if line["type"] == "item"]


def worked_once(queue, job: str) -> dict:
    """``restorecli worker --once`` over ``queue`` (it must exit 0), then job ``job``'s ``status --json``."""
    worked = invoke("worker", "--queue", queue, "--once")
    assert worked.exit_code == 0, worked.stderr
    return json.loads(invoke("status", job, "--queue", queue, "--json").stdout)
