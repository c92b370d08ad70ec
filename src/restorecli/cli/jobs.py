"""The job-folder commands: ``submit``, ``worker``, ``status``, ``prune``."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..jobs.prune import parse_age, prune as prune_target
from ..jobs.status import job_status, queue_overview
from ..jobs.store import queue_dir, queue_exists
from ..errors import EXIT_SETUP, EXIT_SOME_FAILED, UsageError
from . import options as o
from .exits import exit_on_error
from .render import stderr_console

@o.with_restore_options
def submit(
    inputs: o.Inputs,
    queue: o.Queue = None,
    json_output: o.Json = False,
    *,
    restore: dict,
) -> None:
    """Queue one job: the inputs are copied into the job folder; a worker restores them later."""
    from ..jobs.submit import submit_job

    with exit_on_error():
        options = o.from_given(restore)
        root = queue_dir(queue)
        job, position = submit_job(root, inputs, options, stdin=sys.stdin.buffer)
    if json_output:
        typer.echo(json.dumps({"job_id": job.id, "status": "queued", "queue_position": position}))
    else:
        typer.echo(job.id)
        stderr_console().print(f"queued {len(job.inputs)} image(s) in {escape(str(root))} at position {position}")


_RAY = "Ray pool"


def worker(
    queue: o.Queue = None,
    once: Annotated[bool, typer.Option(help="Drain the queue and exit (for cron).")] = False,
    max_jobs: Annotated[Optional[int], typer.Option(metavar="N", help="Stop after this many jobs.", min=1)] = None,
    max_seconds: Annotated[Optional[float], typer.Option(metavar="SECONDS",
                                                         help="Stop claiming (and release the job in hand between "
                                                                "images) after this long.", min=0)] = None,
    lease: Annotated[float, typer.Option(metavar="SECONDS",
                                         help="Lease in seconds; renewed while alive, taken over when expired.",
                                         min=1)] = 60.0,
    poll: Annotated[float, typer.Option(metavar="SECONDS",
                                        help="Seconds between looks at an empty queue.", min=0.1)] = 2.0,
    device: Annotated[Optional[str], typer.Option(metavar="DEVICE",
                                                  help="Run every job on this device (one worker per GPU).",
                                                  show_default=False)] = None,
    max_attempts: Annotated[int, typer.Option(metavar="N",
                                              help="Give a job up after this many attempts that crashed a worker.",
                                              min=1)] = 3,
    grace: Annotated[float, typer.Option(metavar="SECONDS", help="After SIGINT/SIGTERM, how long the image in hand "
                                         "may take to finish; then it is dropped and its job given back.", min=0)
                     ] = 30.0,
    json_output: o.Json = False,
    parent: Annotated[Optional[int], typer.Option(hidden=True, help="Stop as SIGTERM does when this process (the "
                                                  "server that started the worker) is gone.")] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="auto|local|ADDRESS", rich_help_panel=_RAY, show_default=False,
        help="Restore on a pool of Ray actors: local starts a private Ray on this machine; auto or an address joins "
             "a cluster. Needs pip install 'restorecli[ray]'.")] = None,
    actors: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, rich_help_panel=_RAY, show_default=False,
        help="Actors in the pool [default: one per GPU in the cluster, or one without GPUs].")] = None,
    actor_gpus: Annotated[Optional[float], typer.Option(
        metavar="G", min=0, rich_help_panel=_RAY, show_default=False,
        help="GPUs per actor, fractions allowed [default: 1 on a cluster with GPUs, else 0].")] = None,
    actor_cpus: Annotated[Optional[float], typer.Option(
        metavar="C", min=0.01, rich_help_panel=_RAY, show_default=False,
        help="CPUs per actor, fractions allowed; its threads are C rounded up [default: 0.9 of an even share of "
             "the cluster's CPUs].")] = None,
    actor_images: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, rich_help_panel=_RAY, show_default=False,
        help="Images each actor holds at once, so its model never waits for decoding or encoding: one is decoded "
             "and one encoded while the model runs another; 1 restores one at a time [default: 3].")] = None,
) -> None:
    """Process queued jobs oldest first. SIGINT/SIGTERM finish the image in hand (within --grace) and leave the job
    resumable; SIGUSR1 finishes the job in hand and claims no more."""
    from ..jobs.worker import Stopping

    console = stderr_console()
    stopping = Stopping()
    stop = stopping.stop

    def on_signal(signum, frame):
        if stop.is_set():  # a second signal: no more grace
            stopping.abandon.set()
            return
        stop.set()
        timer = threading.Timer(grace, stopping.abandon.set)
        timer.daemon = True
        timer.start()

    def on_drain(signum, frame):
        stopping.drain.set()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_drain)
    if parent is not None:
        _stop_with_parent(parent, stop)
    try:
        _work(queue, once, max_jobs, max_seconds, lease, poll, device, max_attempts, json_output, ray, actors,
              actor_gpus, actor_cpus, actor_images, stopping, console)
    finally:  # run in-process (tests, an embedding program), the caller's handlers come back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _work(queue, once, max_jobs, max_seconds, lease, poll, device, max_attempts, json_output, ray, actors,
          actor_gpus, actor_cpus, actor_images, stopping, console) -> None:
    """The worker command's run, once its signals are in place."""
    from ..jobs.worker import WorkerOptions, run_worker

    def emit(event: str, data: dict) -> None:
        if json_output:
            typer.echo(json.dumps({"type": event, **data}))
        elif event == "claimed":
            console.print(f"job {data['job_id']}: started (attempt {data['attempt']})")
        elif event == "image":
            console.print(f"  {escape(str(data['input']))}")
        elif event == "finished":
            console.print(f"job {data['job_id']}: {data['outcome']}")
        elif event in ("storage_error", "setup_error"):
            console.print(f"job {data['job_id']}: [red]{escape(data['error'])}[/]", soft_wrap=True)
        elif event == "pool":
            console.print(f"ray ({escape(data['address'])}): {data['actors']} actor(s), {data['cpus']:g} CPU(s) and "
                          f"{data['gpus']:g} GPU(s) each, up to {data['images']} image(s) in hand each")
        elif event == "summary" and data["images"]:
            rate = f" ({data['images'] / data['driver_seconds']:.0f} images/s)" if data["driver_seconds"] else ""
            console.print(f"ray: {data['images']} image(s) restored, {data['retried']} retried after their actor died; "
                          f"the driver's own work took {data['driver_seconds']:.2f} s{rate}")
        elif event == "retry":
            console.print(f"  {escape(str(data['input']))}: its actor died ({escape(data['error'])}); try "
                          f"{data['try']}", soft_wrap=True)

    with exit_on_error():
        options = WorkerOptions(once=once, max_jobs=max_jobs, max_seconds=max_seconds, lease=lease, poll=poll,
                                device=device, max_attempts=max_attempts)
        if ray is None:
            given = [flag for flag, value in (("--actors", actors), ("--actor-gpus", actor_gpus),
                                              ("--actor-cpus", actor_cpus), ("--actor-images", actor_images))
                     if value is not None]
            if given:
                raise UsageError(f"{', '.join(given)} shape the Ray pool: give --ray too")
            report = run_worker(queue_dir(queue), options, stopping, emit)
        else:
            from ..distributed.driver import PoolOptions, run_pool

            shape = PoolOptions(ray, actors, actor_gpus, actor_cpus, actor_images or PoolOptions.actor_images)
            report = run_pool(queue_dir(queue), options, shape, stopping, emit)
    if report.stopped:
        console.print("stopped by signal; unfinished work is left resumable")
    if report.storage_error:
        console.print(f"[red]stopped[/]: {escape(report.storage_error)}; the job is queued again with the images it "
                      "finished; make room and start the worker again", soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED)
    if report.setup_error:
        console.print(f"[red]this machine could not run every job[/]: {escape(report.setup_error)}; such a job is "
                      f"queued again for a worker that can, and fails after {max_attempts} tries", soft_wrap=True)
        raise typer.Exit(EXIT_SETUP)


def _stop_with_parent(parent: int, stop: threading.Event) -> None:
    """Set ``stop`` once ``parent`` is no longer this process's parent: a server killed outright (SIGKILL) leaves
    its workers to finish the image in hand, give their jobs back resumable and exit, for its restart to pick up."""

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stderr_console().print(f"the server (process {parent}) is gone: stopping")
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def status(
    job_id: Annotated[Optional[str], typer.Argument(metavar="JOB_ID",
                                                    help="A job id [default: the whole queue].", show_default=False)]
    = None,
    queue: o.Queue = None,
    json_output: o.Json = False,
) -> None:
    """Show the queue (counts and running workers) or one job with its results."""
    with exit_on_error():
        root = queue_dir(queue)
        data = job_status(root, job_id) if job_id else queue_overview(root)
    if json_output:
        typer.echo(json.dumps(data, indent=2))
        return
    console = stderr_console()
    if job_id:
        position = f", position {data['queue_position']}" if data["queue_position"] else ""
        console.print(f"job {data['job_id']}: {data['status']}{position}")
        if data.get("error"):
            label = "last try" if data["status"] == "queued" else "error"
            console.print(f"  {label}: {escape(str(data['error']))}", soft_wrap=True)
        for r in data["results"]:
            typer.echo(f"{r['status']}\t{r['original_filename']}\t{r['output'] or ''}\t{r['error'] or ''}")
        return
    counts = data["counts"]
    table = Table(title=f"queue {data['queue']}", title_justify="left")
    for column in ("queued", "processing", "completed", "failed"):
        table.add_column(column, justify="right")
    table.add_row(*(str(counts[c]) for c in ("queued", "processing", "completed", "failed")))
    console.print(table)
    for run in data["running"]:
        state = "lease expired" if run["stale"] else f"lease {run['lease_expires_in']:.0f}s"
        typer.echo(f"{run['job_id']}\t{run['worker']}\t{run['current'] or '-'}\t{state}")


def cancel(
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="The job to cancel.", show_default=False)],
    queue: o.Queue = None,
    wait: Annotated[float, typer.Option(metavar="SECONDS", help="How long to wait for a running job's worker to "
                                        "stop (it stops at its next tile).", min=0)] = 30.0,
    json_output: o.Json = False,
) -> None:
    """Cancel a queued or running job: a queued one is deleted with its files; a running one is stopped by its
    worker at its next tile, which keeps nothing of it. Exit 1 if the worker has not stopped within --wait."""
    from ..jobs.cancel import cancel_job
    from ..jobs.store import JobStore

    with exit_on_error():
        root = queue_dir(queue)
        if not queue_exists(root):
            raise UsageError(f"no job '{job_id}' in {root}: the queue is empty")
        store = JobStore(root)
        try:
            found = store.get(job_id)
            if found is not None and found.status in ("completed", "failed"):
                raise UsageError(f"job {job_id} has already {found.status}: nothing to cancel (restorecli prune "
                                 "removes finished jobs)")
            done = cancel_job(store, job_id, wait) if found is not None else None
        finally:
            store.close()
        if done is None:
            raise UsageError(f"no job '{job_id}' in {root}")
    if json_output:
        typer.echo(json.dumps({"job_id": done.job_id, "was": done.was, "deleted": done.deleted}))
    console = stderr_console()
    if done.deleted:
        console.print(f"job {done.job_id}: cancelled (it was {done.was})")
        return
    console.print(f"job {done.job_id}: its worker was asked to stop and has not yet; it drops the job at its next "
                  f"tile", soft_wrap=True)
    raise typer.Exit(EXIT_SOME_FAILED)


def prune(
    path: Annotated[Optional[Path], typer.Argument(
        metavar="PATH", help="A queue folder, or a plain folder (where only restorecli's own temporary files go).",
        show_default=False)] = None,
    queue: o.Queue = None,
    older_than: Annotated[str, typer.Option(metavar="AGE", help="Age like 30m, 1h or 7d.", show_default=False)] = ...,
    dry_run: Annotated[bool, typer.Option(help="Show what would go; delete nothing.")] = False,
    json_output: o.Json = False,
) -> None:
    """Delete finished jobs (in a plain folder, restorecli's abandoned temporary files) older than an age; never
    queued or running jobs, never anything else, never outside the root."""
    with exit_on_error():
        if path is not None and queue is not None:
            raise UsageError("give either --queue DIR or PATH, not both")
        target = path if path is not None else queue_dir(queue)
        report = prune_target(Path(target), parse_age(older_than), dry_run, queue_mode=True if path is None else None)
    verb = "would remove" if dry_run else "removed"
    if json_output:
        typer.echo(json.dumps({"dry_run": dry_run, "removed": report.removed, "bytes_freed": report.bytes_freed}))
    else:
        for item in report.removed:
            typer.echo(item["path"])
    stderr_console().print(f"{verb} {len(report.removed)} item(s), {report.bytes_freed:,} bytes")
    if report.kept:
        stderr_console().print(f"kept {report.kept} older file(s): in a folder that is not a queue, prune deletes "
                               "only the temporary files restorecli left behind")
