"""The one place that prints: rich on stderr for people, result lines and JSON on stdout for machines.

The commands build their results and messages and hand them here; no other module of the CLI prints."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ..errors import ImageWarning
from ..progress import Phase, Step, reporting

if TYPE_CHECKING:  # the pipeline loads torch; the commands that render no batch do not need it
    from ..pipeline import BatchResult, ItemResult

STATUS_STYLE = {"ok": "green", "skipped": "yellow", "error": "bold red", "planned": "cyan"}


def stderr_console() -> Console:
    # soft_wrap: log lines stay whole in cron logs; emoji off: a name like a:smile:.png is printed as it is
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def same_terminal(a: TextIO, b: TextIO) -> bool:
    """Whether two streams write to one terminal (stdout and stderr of a shell or a tmux pane): both are ttys
    and the same device. Streams without a file descriptor (tests' buffers) are never a terminal."""
    try:
        fds = a.fileno(), b.fileno()
        if not all(os.isatty(fd) for fd in fds):
            return False
        first, second = (os.fstat(fd) for fd in fds)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return False
    return (first.st_dev, first.st_ino, first.st_rdev) == (second.st_dev, second.st_ino, second.st_rdev)


def out(line: str) -> None:
    """One result line on stdout (an id, a path, a TSV row): what a pipe or a script reads."""
    typer.echo(line)


def out_json(data: Any, indent: int | None = None) -> None:
    """``data`` as JSON on stdout: one line, or an indented document."""
    typer.echo(json.dumps(data, indent=indent))


def say(text: str | Table) -> None:
    """A message (rich markup; escape what comes from outside) or a table for people, on stderr."""
    stderr_console().print(text)


def table_then_rows(table: Table, rows: Iterable[str], notes: Iterable[str] = ()) -> None:
    """A table and its notes on stderr for people, then its rows as lines on stdout for pipes and files; but not
    where stdout is the very terminal that shows the table: the person has read it."""
    console = stderr_console()
    console.print(table)
    for note in notes:
        console.print(note)
    if not same_terminal(sys.stdout, console.file):
        for row in rows:
            out(row)


def live_progress(*columns: ProgressColumn | str, console: Console | None = None) -> Progress:
    """The one progress display of every command: on stderr, cleared when done, and drawn only where stderr is a
    terminal that redraws in place (a cron log or a pipe gets the messages printed through it, and no bar, not
    even the empty line a stopped bar leaves)."""
    console = console or stderr_console()
    return Progress(*columns, console=console, transient=True, disable=not console.is_interactive)


def error(message: str) -> None:
    """A setup or usage error, on stderr."""
    console = stderr_console()
    for i, line in enumerate(message.splitlines() or [""]):
        console.print(f"[bold red]error:[/] {escape(line)}" if i == 0 else f"       {escape(line)}", soft_wrap=True)


_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}


def _unprintable(char: str) -> bool:
    """A control character, a line or paragraph separator, or an undecodable byte (a surrogate escape)."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs")


def _escaped(char: str) -> str:
    if char in _C_ESCAPES:
        return _C_ESCAPES[char]
    raw = bytes([ord(char) - 0xDC00]) if 0xDC80 <= ord(char) <= 0xDCFF else char.encode("utf-8", "surrogatepass")
    return "".join(f"\\{byte:03o}" for byte in raw)


def shell_quoted(name: str) -> str:
    """``name`` as it is, unless it holds control characters (a newline, an escape, an undecodable byte): then
    quoted as GNU ls's shell-escape style quotes it, in single quotes with each run of those characters as a
    $'...' part, as 'a'$'\\n''b.png'. One name stays one line, and a shell reads it back as the same name."""
    if not any(map(_unprintable, name)):
        return name
    parts = ["''"] if _unprintable(name[0]) else []  # as ls writes it
    for unprintable, run in itertools.groupby(name, _unprintable):
        text = "".join(run)
        parts.append(f"$'{''.join(map(_escaped, text))}'" if unprintable else "'" + text.replace("'", "'\\''") + "'")
    return "".join(parts)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """Python's warnings as restorecli's other messages: one line on stderr, ``warning: ...``, without the source
    file and line Python prints (a site-packages path says nothing to the user). restorecli's own (an image
    file's, naming it) as they are; another library's with its category. For ``warnings.showwarning``."""
    text = " ".join(str(message).split())
    if not issubclass(category, ImageWarning):
        text = f"{category.__name__}: {text}"
    stderr_console().print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)


def item_json(item: ItemResult) -> dict:
    data = asdict(item)
    data["in_size"] = list(item.in_size) if item.in_size else None
    data["out_size"] = list(item.out_size) if item.out_size else None
    if data.get("video") is None:  # an image's line has no video fields
        data.pop("video", None)
    if data.get("colorized") is None:  # nor, without --colorize, a colour field
        data.pop("colorized", None)
    return {"type": "item", **data}


def summary_json(batch: BatchResult) -> dict:
    summary = {"type": "summary", "ok": batch.count("ok"), "skipped": batch.count("skipped"),
               "errors": batch.count("error"), "seconds": batch.seconds}  # the batch's wall time, model load included
    if batch.count("ok") and batch.seconds > 0:
        summary["images_per_second"] = round(batch.count("ok") / batch.seconds, 3)  # images restored, over that time
    if batch.count("planned"):
        summary["planned"] = batch.count("planned")
    if any(item.faces is not None for item in batch.items):
        summary["faces"] = sum(item.faces or 0 for item in batch.items)
    if batch.setup:
        summary.update(batch.setup)
    if batch.interrupted is not None:
        summary["interrupted"] = signal.Signals(batch.interrupted).name
    if batch.halted:
        summary["halted"] = batch.halted
    return summary


class ImagesColumn(ProgressColumn):
    """Whole images done of all, e.g. ' 2/10'. The task's own count also holds the finished part of the image in
    hand (so the bar, the percentage and the estimate move while a large image runs); this column leaves it out."""

    def render(self, task: Task) -> Text:
        total = str(int(task.total)) if task.total is not None else "?"
        return Text(f"{task.fields['images']:{len(total)}d}/{total}", style="progress.download")


def duration(seconds: float) -> str:
    """``seconds`` for a person: <1 s, 7 s, 1:02 (a minute and two seconds), 1:02:03."""
    whole = int(seconds + 0.5)
    if whole < 1:
        return "<1 s"
    if whole < 60:
        return f"{whole} s"
    if whole >= 3600:
        return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"


def step_line(step: Step) -> str:
    """A running step as its live line shows it: what it does, its parts done, elapsed time and the time left."""
    parts = f" [{step.done}/{step.parts}]" if step.parts else ""
    left = step.remaining()
    if left is None:
        estimate = ""
    elif left > 0:
        estimate = f", about {duration(left)} left"
    else:
        estimate = ", taking longer than estimated"
    return f"{step.text}{parts}: {duration(step.elapsed())} elapsed{estimate}"


def step_end_line(step: Step) -> str:
    """What a finished step says it found, and how long it took (or that it failed)."""
    if step.failed:  # what went wrong is the error's to say; the step's own parenthesis (once per...) is left out
        return f"{step.what}: failed after {step.elapsed():.1f} s"
    return f"{step.found or 'done'} ({step.elapsed():.1f} s)"


def step_json(phase: Phase, step: Step) -> dict:
    """A step's start or end for machines (``--json``): ``{"type": "step", "step", "state": "start"|"end",
    "elapsed", "left"}`` (seconds; ``left`` the estimate, null where none, 0 once ended), its ``parts`` and
    ``done`` where it has parts, and as it ends what it ``found`` (null: nothing to say) and whether it
    ``failed``."""
    left = step.remaining() if phase == "start" else None if step.failed else 0.0
    data: dict[str, Any] = {"type": "step", "step": step.text, "state": phase, "elapsed": round(step.elapsed(), 3),
                            "left": None if left is None else round(left, 1)}
    if step.parts:
        data.update(parts=step.parts, done=step.done)
    if phase == "end":
        data.update(found=step.found, failed=step.failed)
    return data


def say_step(console: Console, phase: Phase, step: Step, as_json: bool = False) -> None:
    """A long step's start or end as a line on ``console`` (stderr), where no live line shows it: its text as it
    starts, what it found as it ends; with ``as_json`` a ``step_json`` line instead. A routine step (a model's
    loading) says nothing, nor does a step's moving on (``update``)."""
    if step.routine or phase == "update":
        return
    if as_json:
        console.out(json.dumps(step_json(phase, step)), highlight=False)
    else:
        console.print(f"[dim]{escape(step.text if phase == 'start' else step_end_line(step))}[/]", soft_wrap=True)


def step_teller(as_json: bool) -> Callable[[Phase, Step], None]:
    """A listener for ``progress.reporting`` that says each long step on stderr as it starts and ends, as lines
    of text or (``as_json``) as JSON lines: what a queue worker, whose log nobody watches live, says of its
    first job's conversions and probes."""
    console = stderr_console()
    return lambda phase, step: say_step(console, phase, step, as_json)


class StepsProgress(Progress):
    """The live display of a batch with its long steps: the tasks in their columns, and under them a line for each
    running step (``step_line``), drawn afresh at every refresh so its elapsed time and estimate move alone."""

    def get_renderables(self):
        tasks = [task for task in self.tasks if "step" not in task.fields]
        if tasks:
            yield self.make_tasks_table(tasks)
        for task in self.tasks:
            if "step" in task.fields:
                yield Text(step_line(task.fields["step"]), style="dim")


class BatchRenderer:
    """Progress bar and per-item lines while a batch runs, summary at the end.

    Result lines (paths, or JSON with ``as_json``) go to ``stdout``. Where stdout is the very terminal the live
    bar is drawn on, a raw write would land inside the bar's line; there they are printed above the bar instead."""

    def __init__(self, as_json: bool, stdout: TextIO | None = None, results_to_stdout: bool = True):
        self.as_json = as_json
        self.stdout = stdout or sys.stdout
        self.results_to_stdout = results_to_stdout
        self.console = stderr_console()
        # is_interactive: a terminal that is not dumb, where the live bar is drawn and redrawn in place
        self.results_above_bar = self.console.is_interactive and same_terminal(self.stdout, self.console.file)
        self.images_column = ImagesColumn()
        self.progress = StepsProgress(  # as ``live_progress`` makes its bars, with the steps' lines under them
            TextColumn("[bold]restoring"),
            BarColumn(),
            TaskProgressColumn(),
            self.images_column,
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.console, transient=True, disable=not self.console.is_interactive,
        )
        self.steps: dict[int, Any] = {}  # a running step's id -> its task in the live display
        self._reporting = reporting(self.step)
        self.task = None
        self.current = ""
        self.total: int | None = None
        self.images_done = 0
        self.image_part = 0.0  # of the image in hand, from its tiles: never goes back within one image
        self.items: list[ItemResult] = []  # every finished item, for a summary of a batch that was cut short
        self.started = time.perf_counter()

    def __enter__(self) -> "BatchRenderer":
        self.progress.start()
        self._reporting.__enter__()  # the long steps of the model's loading tell ``step``
        return self

    def __exit__(self, *exc) -> None:
        self._reporting.__exit__(None, None, None)
        self.progress.stop()

    def step(self, phase: Phase, step: Step) -> None:
        """A long step (a probe, a conversion) on stderr, in every mode: on a terminal a live line with its elapsed
        time and the time left, then what it found; elsewhere (a pipe, a log) a line as it starts and one as it
        ends. With ``--json`` its start and end are JSON lines (``step_json``), the live line still drawn on a
        terminal. Routine steps (a model's loading) show only live, on a terminal."""
        live = self.console.is_interactive
        if phase == "start" and live:
            self.steps[id(step)] = self.progress.add_task(step.text, total=None, step=step)
        elif phase == "end" and id(step) in self.steps:
            self.progress.remove_task(self.steps.pop(id(step)))
        if phase == "end" or not live or self.as_json:
            say_step(self.progress.console, phase, step, self.as_json)

    def __call__(self, event: str, payload: object) -> None:
        if event == "start":
            self.total = payload  # type: ignore[assignment]
            self.task = self.progress.add_task("restore", total=payload, current="", images=0)
        elif event == "item" and self.task is not None:
            self.current = escape(shell_quoted(str(payload)))  # a file name as it is, brackets and all
            self.image_part = 0.0
            self.progress.update(self.task, current=self.current)
        elif event == "tiles" and self.task is not None:
            done, total = payload  # type: ignore[misc]
            # an alpha plane's pass, or a retry in smaller tiles after running out of memory, counts from 0 again
            self.image_part = max(self.image_part, min(done / total, 1.0) if total else 0.0)
            current = f"{self.current} [dim](tile {done}/{total})[/]" if total > 1 else self.current
            self.progress.update(self.task, completed=self.images_done + self.image_part, current=current)
        elif event == "frames" and self.task is not None:  # a video's frames restored: (done, total, fps)
            done, total, fps = payload  # type: ignore[misc]
            self.image_part = max(self.image_part, min(done / total, 1.0) if total else 0.0)
            self.progress.update(self.task, completed=self.images_done + self.image_part,
                                 current=f"{self.current} [dim](frame {done}/{total or '?'}, {fps:.1f} fps)[/]")
        elif event == "notice":  # first-run work as it starts (a probe, a conversion): stderr in every mode
            self.progress.console.print(f"[dim]{escape(str(payload))}[/]", soft_wrap=True)
        elif event == "codec":  # a video's codec, said on stderr before its first frame
            source, codec, reason = payload  # type: ignore[misc]
            self.progress.console.print(f"[dim]{escape(shell_quoted(source))}: video written with {escape(codec)} "
                                        f"({escape(reason)})[/]", soft_wrap=True)
        elif event == "done" and self.task is not None:
            self.items.append(payload)
            self.images_done += 1
            self.image_part = 0.0
            self.progress.update(self.task, completed=self.images_done, images=self.images_done)
            self._item(payload)

    def _item(self, item: ItemResult) -> None:
        if item.status == "error":
            self.progress.console.print(f"[bold red]failed:[/] {escape(str(item.error))}", soft_wrap=True)
        elif item.status == "planned" and not self.as_json:  # a dry run: what each image would become
            sizes = " -> ".join(f"{size[0]}x{size[1]}" for size in (item.in_size, item.out_size) if size)
            self.progress.console.print(f"[cyan]would write[/] {escape(shell_quoted(str(item.output)))}"
                                        f"{f' ({sizes})' if sizes else ''}", soft_wrap=True)
        if self.as_json:
            self._result(json.dumps(item_json(item)))
        elif self.results_to_stdout and item.status in ("ok", "planned") and item.output:
            self._result(shell_quoted(item.output))  # one line a file, whatever its name holds

    def _result(self, line: str) -> None:
        if self.results_above_bar:  # the live display clears its bar, prints the line whole and redraws the bar
            self.progress.console.out(line, highlight=False)
        else:
            self.stdout.write(line + "\n")
            self.stdout.flush()

    def so_far(self, interrupted: int) -> BatchResult:
        """The batch as far as it got, for when a signal stopped it."""
        from ..plan import BatchResult

        return BatchResult(list(self.items), round(time.perf_counter() - self.started, 3), interrupted=interrupted)

    def summary(self, batch: BatchResult) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(summary_json(batch)) + "\n")
            self.stdout.flush()
        table = Table(title="restorecli restore", title_justify="left")
        if batch.setup:
            table.caption = "{model} on {device}, {precision}".format(**batch.setup) + (
                f", {batch.setup['backend']}" if batch.setup.get("backend", "torch") != "torch" else "") + (
                f" (16-bit images: {batch.setup['precision_16bit']})" if "precision_16bit" in batch.setup else "")
            table.caption_justify = "left"
        for column in ("ok", "skipped", "errors", "seconds"):
            table.add_column(column, justify="right")
        if batch.count("planned"):
            table.add_column("planned (dry run)", justify="right")
        row = [str(batch.count("ok")), str(batch.count("skipped")), str(batch.count("error")), f"{batch.seconds:.1f}"]
        if batch.count("planned"):
            row.append(str(batch.count("planned")))
        table.add_row(*row, style="red" if batch.count("error") else None)
        self.console.print(table)
        for item in batch.items:
            if item.status == "error":
                self.console.print(f"  [red]x[/] {escape(str(item.error))}", soft_wrap=True)
        of = f" of {self.total}" if self.total is not None else ""
        if batch.interrupted is not None:
            self.console.print(f"[yellow]interrupted by {signal.Signals(batch.interrupted).name} after "
                               f"{len(batch.items)}{of} images[/]: the image in hand was not written; run the same "
                               "command again to resume (finished outputs are skipped)", soft_wrap=True)
        if batch.halted:
            self.console.print(f"[red]stopped after {len(batch.items)}{of} images[/]: {escape(batch.halted)}; "
                               "make room (or choose another -o) and run the same command again to resume",
                               soft_wrap=True)


# ------------------------------------------------------------------------------------- the queue's worker


def _worker_line(event: str, data: dict) -> str | None:
    """What a person reads on stderr for one of the worker's events; None for those said only in JSON."""
    if event == "claimed":
        return f"job {data['job_id']}: started (attempt {data['attempt']})"
    if event == "image":
        return f"  {escape(str(data['input']))}"
    if event == "finished":
        return f"job {data['job_id']}: {data['outcome']}"
    if event in ("storage_error", "setup_error"):
        return f"job {data['job_id']}: [red]{escape(data['error'])}[/]"
    if event == "pool":
        return (f"ray ({escape(data['address'])}): {data['actors']} actor(s), {data['cpus']:g} CPU(s) and "
                f"{data['gpus']:g} GPU(s) each, up to {data['images']} image(s) in hand each")
    if event == "summary" and data["images"]:
        rate = f" ({data['images'] / data['driver_seconds']:.0f} images/s)" if data["driver_seconds"] else ""
        return (f"ray: {data['images']} image(s) restored, {data['retried']} retried after their actor died; "
                f"the driver's own work took {data['driver_seconds']:.2f} s{rate}")
    if event == "retry":
        return f"  {escape(str(data['input']))}: its actor died ({escape(data['error'])}); try {data['try']}"
    return None


def worker_events(as_json: bool) -> Callable[[str, dict], None]:
    """The worker's ``emit``: each event a JSON line on stdout, or a line for people on stderr."""
    console = stderr_console()

    def emit(event: str, data: dict) -> None:
        if as_json:
            out_json({"type": event, **data})
            return
        line = _worker_line(event, data)
        if line is not None:
            console.print(line)

    return emit


def worker_ended(stopped: bool, storage_error: str | None, setup_error: str | None, max_attempts: int) -> None:
    """Why a worker's run ended where it did not simply run out of work."""
    if stopped:
        say("stopped by signal; unfinished work is left resumable")
    if storage_error:
        say(f"[red]stopped[/]: {escape(storage_error)}; the job is queued again with the images it finished; make "
            "room and start the worker again")
    if setup_error:
        say(f"[red]this machine could not run every job[/]: {escape(setup_error)}; such a job is queued again for a "
            f"worker that can, and fails after {max_attempts} tries")


# ---------------------------------------------------------------------------------- progress of other commands


@contextmanager
def download_progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """A bar per model while weights download; yields the ``on_progress(model, done, total)`` to give ``fetch``."""
    with live_progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn()) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(model: str, done: int, total: int | None) -> None:
            if model not in tasks:
                tasks[model] = progress.add_task(model, total=total)
            progress.update(tasks[model], completed=done, total=total)

        yield on_progress


@contextmanager
def evaluation_progress(as_json: bool = False) -> Iterator[Callable[[str, Any], None]]:
    """The evaluation's bar; yields its ``on_progress(event, payload)``, which names a failed image as it fails.
    The models' long steps are said as ``say_step`` says them (``as_json``: as JSON lines)."""
    with live_progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[current]}")) as progress:
        task = progress.add_task("evaluate", total=None, current="")

        def on_progress(event: str, payload: Any) -> None:
            if event == "start":
                progress.update(task, total=payload)
            elif event == "image":
                progress.update(task, current=escape(str(payload)))
            elif event == "done":
                progress.advance(task)
                if payload.error:
                    progress.console.print(f"[bold red]failed:[/] {escape(str(payload.error))}", soft_wrap=True)

        with reporting(lambda phase, step: say_step(progress.console, phase, step, as_json)):  # as models load
            yield on_progress
