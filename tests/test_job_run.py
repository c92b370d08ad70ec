"""One claimed job's lifecycle (``jobs.run.JobRun``), which the local worker and the Ray driver share: each way a
job leaves a worker's hand, in-process and without a model (the images' results are made here)."""

from __future__ import annotations

import os

import pytest

from helpers.wait import wait_until
from restorecli.errors import SetupError, WeightsNotInstalled
from restorecli.jobs.run import JobRun, SetAside
from restorecli.jobs.store import JobStore
from restorecli.jobs.worker import WorkerOptions, WorkerReport
from restorecli.plan import ItemResult


@pytest.fixture
def store(tmp_path):
    store = JobStore(tmp_path / "queue", create=True)
    yield store
    store.close()


def _queue(store: JobStore, job_id: str, names: list[str]) -> None:
    """A job whose inputs are in place, as ``enqueue`` leaves it (no image is read here)."""
    inputs = store.job_dir(job_id) / "inputs"
    inputs.mkdir(parents=True)
    for name in names:
        (inputs / name).write_bytes(b"not read")
    store.add(job_id, {"scale": 2}, [{"original_filename": f"/home/me/{name}", "stored": name} for name in names])


class _Worker:
    """What a worker loop hands each JobRun: its options, report, events and the jobs it set aside."""

    def __init__(self, store: JobStore, **options):
        self.store = store
        self.options = WorkerOptions(lease=30.0, **options)
        self.report = WorkerReport()
        self.events: list[tuple[str, dict]] = []
        self.set_aside = SetAside(self.options.setup_retry)

    def claim(self) -> JobRun | None:
        return JobRun.claim(self.store, self.options, "test:1", self.set_aside, self.report,
                            lambda event, data: self.events.append((event, data)))

    def said(self, event: str) -> list[dict]:
        return [data for name, data in self.events if name == event]


def _written(run: JobRun, name: str) -> ItemResult:
    """The result of an image the worker wrote into the lease's work folder."""
    run.work.mkdir(parents=True, exist_ok=True)
    (run.work / name).write_bytes(b"restored")
    return ItemResult(str(run.job_dir / "inputs" / name), str(run.work / name), "ok", in_size=(4, 4),
                      out_size=(8, 8), seconds=0.1)


def test_results_are_progress_in_the_inputs_order_and_the_publish_settles_the_job_once(store):
    _queue(store, "j1", ["a.png", "b.png"])
    worker = _Worker(store)
    run = worker.claim()
    assert run is not None and run.outcome is None and run.renewer.is_alive()
    run.working_on("b.png", starting="b.png")
    run.finish(_written(run, "b.png"), 1)  # the Ray driver records results as they come back, out of order
    assert [entry["original_filename"] for entry in store.get("j1").progress] == ["/home/me/b.png"]
    assert store.get("j1").current == "b.png"
    run.finish(_written(run, "a.png"))  # the local batch's results name their input
    assert run.all_finished and [e["original_filename"] for e in run.progress()] == ["/home/me/a.png",
                                                                                  "/home/me/b.png"]
    assert run.publish({"device": "cpu"}) == "completed"
    assert not run.renewer.is_alive() and run.outcome == "completed"
    job = store.get("j1")
    assert job.status == "completed" and sorted(os.listdir(store.job_dir("j1") / "outputs")) == ["a.png", "b.png"]
    assert worker.report.jobs == [("j1", "completed")]
    assert worker.said("claimed") == [{"job_id": "j1", "attempt": 1}]
    assert worker.said("image") == [{"job_id": "j1", "input": "b.png"}]
    assert worker.said("finished") == [{"job_id": "j1", "outcome": "completed"}]


def test_a_job_given_back_is_queued_again_and_its_next_owner_adopts_what_was_finished(store):
    _queue(store, "j1", ["a.png", "b.png"])
    worker = _Worker(store)
    run = worker.claim()
    run.finish(_written(run, "a.png"))
    assert run.give_back() == "released"
    assert store.get("j1").status == "queued" and store.get("j1").attempts == 0  # a polite stop counts none
    again = worker.claim()
    assert again.job_id == "j1" and again.work != run.work
    assert (again.work / "a.png").read_bytes() == b"restored"  # adopted, not redone
    assert worker.report.jobs == [("j1", "released")]
    again.give_back("no room", quietly=True)  # after a failure of the worker itself: not counted in its report
    assert worker.report.jobs == [("j1", "released")] and store.get("j1").last_error == "no room"


def test_a_job_cancelled_while_in_hand_is_dropped_with_its_folder(store):
    _queue(store, "j1", ["a.png"])
    worker = _Worker(store)
    run = worker.claim()
    run.finish(_written(run, "a.png"))
    assert store.withdraw("j1") == "processing"  # asked, not done: its worker drops it
    wait_until(lambda: run.gone, what="the lease renewer to see the cancel")
    assert run.drop() == "cancelled"
    assert store.get("j1") is None and not store.job_dir("j1").exists()
    assert worker.report.jobs == [("j1", "cancelled")]


def test_a_job_another_worker_took_over_is_lost_and_publishes_nothing(store):
    _queue(store, "j1", ["a.png"])
    mine, other = _Worker(store, max_attempts=5), _Worker(store, max_attempts=5)
    run = mine.claim()
    run.finish(_written(run, "a.png"))
    run.renewer.finish()  # it stalls: its lease runs out and another worker claims the job
    with store.transaction() as db:
        db.execute("UPDATE jobs SET lease_until = 0 WHERE id = 'j1'")
    taken = other.claim()
    assert taken.job_id == "j1"
    assert run.publish() == "lost" and not run.work.exists()
    assert store.get("j1").owner == taken.lease.token and not (store.job_dir("j1") / "outputs").exists()
    taken.give_back(quietly=True)


def test_a_job_this_machine_lacks_weights_for_is_set_aside_then_failed_after_its_attempts(store):
    _queue(store, "j1", ["a.png"])
    worker = _Worker(store, max_attempts=2, setup_retry=3600)
    run = worker.claim()
    assert run.fail_setup(WeightsNotInstalled("weights x are not installed")) == "retry"
    assert worker.said("setup_error") == [{"job_id": "j1", "error": "weights x are not installed"}]
    assert worker.set_aside.ids() == ["j1"] and worker.claim() is None  # left to other workers a while
    worker.set_aside = SetAside(0)  # the while is over
    again = worker.claim()
    assert again.fail_setup(WeightsNotInstalled("weights x are not installed")) == "failed"
    assert store.get("j1").status == "failed" and "could not be run by a worker" in store.get("j1").last_error
    assert worker.report.jobs == [("j1", "retry"), ("j1", "failed")]


def test_a_job_whose_own_options_cannot_run_anywhere_fails_at_once(store):
    _queue(store, "j1", ["a.png"])
    worker = _Worker(store)
    run = worker.claim()
    assert run.fail_setup(SetupError("checkpoint x is damaged")) == "failed"
    assert store.get("j1").status == "failed" and store.get("j1").last_error == "checkpoint x is damaged"
    assert worker.said("setup_error") == [] and worker.set_aside.ids() == []


def test_a_job_whose_folder_holds_a_planted_link_comes_back_settled_failed(store, tmp_path):
    _queue(store, "j1", ["a.png"])
    (tmp_path / "elsewhere").mkdir()
    (store.job_dir("j1") / "work").symlink_to(tmp_path / "elsewhere")
    worker = _Worker(store)
    run = worker.claim()
    assert run is not None and run.outcome == "failed" and not run.renewer.is_alive()
    assert "jobs/j1/work is a symbolic link" in store.get("j1").last_error
    assert worker.report.jobs == [("j1", "failed")] and os.listdir(tmp_path / "elsewhere") == []
