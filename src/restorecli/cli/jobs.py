"""The job-folder commands: ``submit``, ``worker``, ``status``, ``cancel``, ``prune``."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import EXIT_SETUP, EXIT_SOME_FAILED, UsageError
from ..progress import reporting
from . import options as o
from . import render
from .exits import exit_on_error, worker_signals


def queue_dir(queue: str | None) -> Path:
    """The queue folder: ``--queue``, else $RESTORECLI_QUEUE, else ./restorecli-queue. The queue's modules (SQLite
    among them) are imported by the commands that use them, so a usage error of ``restore`` answers without them."""
    from ..jobs.store import queue_dir as folder

    return folder(queue)


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
        short = _short_ids(root)[job.id]
    if json_output:
        render.out_json({"job_id": job.id, "short_id": short, "status": "queued", "queue_position": position})
    else:
        render.out(job.id)
        render.say(f"queued {len(job.inputs)} image(s) in {escape(str(root))} at position {position} as job {short}")


def _short_ids(root: Path) -> dict[str, str]:
    """Every job id of the queue at ``root`` with the short form status shows (``jobs.status.short_ids``)."""
    from ..jobs.status import short_ids
    from ..jobs.store import JobStore

    store = JobStore(root)
    try:
        return short_ids([job.id for job in store.jobs()])
    finally:
        store.close()


_RAY = "Ray pool"  # the worker's options, each declared once here (its --help shows the Ray pool's in a group)
Once = Annotated[bool, typer.Option(help="Drain the queue and exit (for cron).")]
MaxJobs = Annotated[Optional[int], typer.Option(metavar="N", help="Stop after this many jobs.", min=1)]
MaxSeconds = Annotated[Optional[float], typer.Option(
    metavar="SECONDS", help="Stop claiming (and release the job in hand between images) after this long.", min=0)]
Lease = Annotated[float, typer.Option(metavar="SECONDS", help="Lease in seconds; renewed while alive, taken over when "
                                      "expired.", min=1)]
Poll = Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between looks at an empty queue.", min=0.1)]
WorkerDevice = Annotated[Optional[str], typer.Option(
    metavar="DEVICE", help="Run every job on this device (one worker per GPU).", show_default=False)]
MaxAttempts = Annotated[int, typer.Option(
    metavar="N", help="Give a job up after this many attempts that crashed a worker.", min=1)]
Grace = Annotated[float, typer.Option(metavar="SECONDS", help="After SIGINT/SIGTERM, how long the image in hand may "
                                      "take to finish; then it is dropped and its job given back.", min=0)]
Parent = Annotated[Optional[int], typer.Option(
    hidden=True, help="Stop as SIGTERM does when this process (the server that started the worker) is gone.")]
Ray = Annotated[Optional[str], typer.Option(
    "--ray", metavar="auto|local|ADDRESS", rich_help_panel=_RAY, show_default=False,
    help="Restore on a pool of Ray actors: local starts a private Ray on this machine; auto or an address joins "
         "a cluster. Needs pip install 'restorecli[ray]'.")]
Actors = Annotated[Optional[int], typer.Option(
    metavar="N", min=1, rich_help_panel=_RAY, show_default=False,
    help="Actors in the pool [default: one per GPU in the cluster, or one without GPUs].")]
ActorGpus = Annotated[Optional[float], typer.Option(
    metavar="G", min=0, rich_help_panel=_RAY, show_default=False,
    help="GPUs per actor, fractions allowed [default: 1 on a cluster with GPUs, else 0].")]
ActorCpus = Annotated[Optional[float], typer.Option(
    metavar="C", min=0.01, rich_help_panel=_RAY, show_default=False,
    help="CPUs per actor, fractions allowed; its threads are C rounded up [default: 0.9 of an even share of the "
         "cluster's CPUs].")]
ActorImages = Annotated[Optional[int], typer.Option(
    metavar="N", min=1, rich_help_panel=_RAY, show_default=False,
    help="Images each actor holds at once, so its model never waits for decoding or encoding: one is decoded and "
         "one encoded while the model runs another; 1 restores one at a time [default: 3].")]


def worker(
    queue: o.Queue = None,
    once: Once = False,
    max_jobs: MaxJobs = None,
    max_seconds: MaxSeconds = None,
    lease: Lease = 60.0,
    poll: Poll = 2.0,
    device: WorkerDevice = None,
    max_attempts: MaxAttempts = 3,
    grace: Grace = 30.0,
    json_output: o.Json = False,
    parent: Parent = None,
    ray: Ray = None,
    actors: Actors = None,
    actor_gpus: ActorGpus = None,
    actor_cpus: ActorCpus = None,
    actor_images: ActorImages = None,
) -> None:
    """Process queued jobs oldest first. SIGINT/SIGTERM finish the image in hand (within --grace) and leave the job
    resumable; SIGUSR1 finishes the job in hand and claims no more."""
    from ..jobs.worker import Stopping, WorkerOptions, run_worker

    stopping = Stopping()
    emit = render.worker_events(json_output)
    # its first job's long steps (a conversion, a probe) said on stderr as they start and end, as restore says them
    with exit_on_error(), worker_signals(stopping, grace), reporting(render.step_teller(json_output)):
        if parent is not None:
            _stop_with_parent(parent, stopping.stop)
        options = WorkerOptions(once=once, max_jobs=max_jobs, max_seconds=max_seconds, lease=lease, poll=poll,
                                device=device, max_attempts=max_attempts)
        shape = _pool_shape(ray, actors, actor_gpus, actor_cpus, actor_images)
        if shape is None:
            report = run_worker(queue_dir(queue), options, stopping, emit)
        else:
            from ..distributed.driver import run_pool

            report = run_pool(queue_dir(queue), options, shape, stopping, emit)
    render.worker_ended(report.stopped, report.storage_error, report.setup_error, max_attempts)
    if report.storage_error:
        raise typer.Exit(EXIT_SOME_FAILED)
    if report.setup_error:
        raise typer.Exit(EXIT_SETUP)


def _pool_shape(ray: str | None, actors: int | None, actor_gpus: float | None, actor_cpus: float | None,
                actor_images: int | None):
    """The Ray pool's ``PoolOptions`` where ``--ray`` is given; None without it, where its shaping options are a
    usage error."""
    if ray is None:
        given = [flag for flag, value in (("--actors", actors), ("--actor-gpus", actor_gpus),
                                          ("--actor-cpus", actor_cpus), ("--actor-images", actor_images))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} shape the Ray pool: give --ray too")
        return None
    from ..distributed.driver import PoolOptions

    return PoolOptions(ray, actors, actor_gpus, actor_cpus, actor_images or PoolOptions.actor_images)


def _stop_with_parent(parent: int, stop: threading.Event) -> None:
    """Set ``stop`` once ``parent`` is no longer this process's parent: a server killed outright (SIGKILL) leaves
    its workers to finish the image in hand, give their jobs back resumable and exit, for its restart to pick up."""

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                render.say(f"the server (process {parent}) is gone: stopping")
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


LISTED_JOBS = 50  # jobs status lists in its table


def _job_ids(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of a job id: the ids in the queue (``--queue`` where it is already on the line) that start
    with what is typed; else, where it is the start of the short id status shows, those short ids (the whole
    random part once more is typed). Nothing where there is no queue or it cannot be read: completion never
    fails."""
    from ..jobs.store import queue_exists

    try:
        root = queue_dir(ctx.params.get("queue"))
        if not queue_exists(root):
            return []
        shorts = _short_ids(root)
    except Exception:  # noqa: BLE001  (a TAB offers nothing rather than a traceback in the shell)
        return []
    whole = sorted(job_id for job_id in shorts if job_id.startswith(incomplete))
    if whole or not incomplete:
        return whole
    shown = [short if short.startswith(incomplete) else job_id.rsplit("-", 1)[-1]
             for job_id, short in shorts.items()]
    return sorted(name for name in shown if name.startswith(incomplete))


def status(
    job_id: Annotated[Optional[str], typer.Argument(metavar="JOB_ID", help="A job id, or a start of it that only "
                                                    "one job has [default: the whole queue].",
                                                    show_default=False, autocompletion=_job_ids)] = None,
    queue: o.Queue = None,
    json_output: o.Json = False,
) -> None:
    """Show the queue (counts and running workers) or one job with its results."""
    from ..jobs.status import job_status, queue_overview

    with exit_on_error():
        root = queue_dir(queue)
        data = job_status(root, job_id) if job_id else queue_overview(root)
    if json_output:
        render.out_json(data, indent=2)
    elif job_id:
        _one_job(data)
    else:
        _queue(data)


def _one_job(data: dict) -> None:
    from ..jobs.leases import PREPARING  # already imported by jobs.status

    position = f", position {data['queue_position']}" if data["queue_position"] else ""
    images = "image" if data["total"] == 1 else "images"
    render.say(f"job {data['job_id']}: {data['status']}{position}, {data['done']} of {data['total']} {images} done")
    if data.get("error"):
        label = "last try" if data["status"] == "queued" else "error"
        render.say(f"  {label}: {escape(str(data['error']))}")
    if data.get("step"):  # its worker loads its models: a conversion or a probe, with the time it has taken
        render.say(f"  preparing: {escape(data['step']['text'])}, {render.duration(data['step']['elapsed'])}")
    elif data.get("current") == PREPARING:  # between two such steps, or before its first
        render.say("  preparing: loading its models")
    elif data.get("current"):
        render.say(f"  now: {escape(str(data['current']))}")
    for r in data["results"]:
        render.out(f"{r['status']}\t{r['original_filename']}\t{r['output'] or ''}\t{r['error'] or ''}")


def _queue(data: dict) -> None:
    counts = data["counts"]
    table = Table(title=f"queue {data['queue']}", title_justify="left")
    for column in ("queued", "processing", "completed", "failed"):
        table.add_column(column, justify="right")
    table.add_row(*(str(counts[c]) for c in ("queued", "processing", "completed", "failed")))
    render.say(table)
    if data["jobs"]:
        shown = data["jobs"][-LISTED_JOBS:]  # the latest: a busy queue's whole history is for --json
        jobs = Table(title="jobs" if len(shown) == len(data["jobs"]) else
                     f"jobs: the latest {len(shown)} of {len(data['jobs'])} (--json lists every one)",
                     title_justify="left")
        for column, justify in (("id", "left"), ("status", "left"), ("done", "right")):
            jobs.add_column(column, justify=justify)
        for job in shown:
            jobs.add_row(job["short_id"], job["status"], f"{job['done']}/{job['total']}")
        render.say(jobs)
    for run in data["running"]:
        state = "lease expired" if run["stale"] else f"lease {run['lease_expires_in']:.0f}s"
        render.out(f"{run['job_id']}\t{run['worker']}\t{run['current'] or '-'}\t{state}")


def cancel(
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="The job to cancel: its id, or a start of it "
                                          "that only one job has.", show_default=False,
                                          autocompletion=_job_ids)],
    queue: o.Queue = None,
    wait: Annotated[float, typer.Option(metavar="SECONDS", help="How long to wait for a running job's worker to "
                                        "stop (it stops at its next tile).", min=0)] = 30.0,
    json_output: o.Json = False,
) -> None:
    """Cancel a queued or running job: a queued one is deleted with its files; a running one is stopped by its
    worker at its next tile, which keeps nothing of it. Exit 1 if the worker has not stopped within --wait."""
    from ..jobs.cancel import cancel_in_queue

    with exit_on_error():
        done = cancel_in_queue(queue_dir(queue), job_id, wait)
    if json_output:
        render.out_json({"job_id": done.job_id, "was": done.was, "deleted": done.deleted})
    if done.deleted:
        render.say(f"job {done.job_id}: cancelled (it was {done.was})")
        return
    render.say(f"job {done.job_id}: its worker was asked to stop and has not yet; it drops the job at its next tile")
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
    from ..jobs.prune import parse_age, prune as prune_target

    with exit_on_error():
        if path is not None and queue is not None:
            raise UsageError("give either --queue DIR or PATH, not both")
        target = path if path is not None else queue_dir(queue)
        report = prune_target(Path(target), parse_age(older_than), dry_run, queue_mode=True if path is None else None)
    verb = "would remove" if dry_run else "removed"
    if json_output:
        render.out_json({"dry_run": dry_run, "removed": report.removed, "bytes_freed": report.bytes_freed})
    else:
        for item in report.removed:
            render.out(item["path"])
    render.say(f"{verb} {len(report.removed)} item(s), {report.bytes_freed:,} bytes")
    if report.kept:
        render.say(f"kept {report.kept} older file(s): in a folder that is not a queue, prune deletes only the "
                   "temporary files restorecli left behind")
