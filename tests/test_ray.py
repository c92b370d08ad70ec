"""The Ray worker pool (``restorecli worker --ray``): jobs spread over actors on a local Ray instance and on a
simulated two-node cluster, with an actor SIGKILLed mid-image, a node removed mid-image, an image that kills every
actor taking it, and the driver itself SIGKILLed; outputs byte for byte those of the local worker.

One local Ray instance serves the module (2 CPUs, actors of half a CPU each); the cluster test stops it while it
runs its own. Faults come from tests/ray_harness.py, installed in every actor process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'restorecli[ray]'")

import ray_harness  # noqa: E402
from conftest import TEST_INPUTS  # noqa: E402
from helpers.cli import invoke as cli  # noqa: E402
from helpers.processes import alive, descendants  # noqa: E402
from helpers.wait import wait_until  # noqa: E402
from restorecli.distributed.driver import PoolOptions, PoolShape, pool_shape, run_pool  # noqa: E402
from restorecli.errors import UsageError  # noqa: E402
from restorecli.jobs.store import JobStore  # noqa: E402
from restorecli.jobs.worker import WorkerOptions  # noqa: E402

HARNESS = Path(__file__).with_name("ray_harness.py")
PAIRS = [("rocket.jpg", "cameraman_gray.png"), ("coffee_alpha.png", "chelsea_16bit.png"),
         ("astronaut_face.jpg", "rocket.jpg"), ("cameraman_gray.png", "coffee_alpha.png")]


class RayInstances:
    """The module's local Ray instance, started once and again only after a test ran another (the cluster)."""

    def __init__(self, folder: Path):
        self.folder = folder  # the harness's folder, and the home the instance's token is written under
        self.harness = folder / "harness"
        self.harness.mkdir(exist_ok=True)  # the run's one Ray home (conftest's ray_home): a later module's too

    def local(self) -> Path:
        if not ray.is_initialized():
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("HOME", str(self.folder))  # Ray's token goes to ~/.ray/auth_token
                for tries_left in (1, 0):
                    try:
                        ray.init(address="local", num_cpus=2, include_dashboard=False,
                                 runtime_env=ray_harness.runtime_env(self.harness))
                        break
                    except Exception:
                        ray.shutdown()  # the processes it did start
                        if not tries_left:
                            raise
                        # a busy 2-core machine can take longer than the 30 s Ray waits for its node to register
        return self.harness

    def slow(self, seconds: float) -> None:
        (self.harness / "slow").write_text(str(seconds))


@pytest.fixture(scope="module")
def instances(ray_home):
    found = RayInstances(ray_home)
    yield found
    ray.shutdown()


@pytest.fixture
def local_ray(instances):
    instances.local()
    instances.slow(0)
    # what an earlier test's actors decoded and ran, and the held markers of those it SIGKILLed while held
    for marker in [path for kind in ("decoded", "runs", "held") for path in instances.harness.glob(f"{kind}-*")]:
        marker.unlink()
    yield instances
    instances.slow(0)


@pytest.fixture
def model(make_model):
    return make_model(2, "compact", "safetensors")


def photos(folder: Path, names) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = TEST_INPUTS / ("rocket.jpg" if "poison" in name else name)
        shutil.copy(source, folder / name)
    return [folder / name for name in names]


def submit_jobs(queue: Path, model: Path, inputs: Path, pairs) -> list[str]:
    ids = []
    for index, pair in enumerate(pairs):
        files = photos(inputs / f"job{index}", pair)
        result = cli("submit", *files, "--queue", queue, "--model", model, "--precision", "fp32", "--device", "cpu",
                     "--json")
        assert result.exit_code == 0, result.stderr
        ids.append(json.loads(result.stdout)["job_id"])
    return ids


def outputs(queue: Path, job_id: str) -> dict[str, bytes]:
    """The job's published outputs, by the name each input was submitted under."""
    result = json.loads((queue / "jobs" / job_id / "result.json").read_text())
    return {Path(r["original_filename"]).name: (queue / r["output"]).read_bytes() for r in result["results"]}


def assert_clean(queue: Path) -> None:
    """No temporary file anywhere in the queue, and no work folder left with anything in it."""
    assert list(queue.rglob("*.part")) == []
    assert [p for p in queue.glob("jobs/*/work/*")] == []


def start_pool(queue: Path, stop: threading.Event, **pool) -> tuple[threading.Thread, dict]:
    """``run_pool`` in a thread (the test process is the driver); its report lands in the returned dict."""
    done: dict = {}
    options = WorkerOptions(once=True, poll=0.2, max_attempts=pool.pop("max_attempts", 3))

    def work():
        try:
            done["report"] = run_pool(queue, options, PoolOptions("local", **pool), stop)
        except BaseException as exc:  # noqa: BLE001  (raised again in the test's thread)
            done["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, done


def joined(thread: threading.Thread, done: dict, stop: threading.Event, timeout: float = 240):
    thread.join(timeout)
    if thread.is_alive():
        stop.set()
        thread.join(60)
        raise AssertionError("the pool did not drain the queue")
    if "error" in done:
        raise done["error"]
    return done["report"]


def completed(queue: Path) -> int:
    store = JobStore(queue)
    try:
        return store.counts()["completed"]
    finally:
        store.close()


# ----------------------------------------------------------------------------- a local instance


def test_an_actor_killed_mid_image_is_restarted_and_every_job_completes_once_as_a_local_worker_does(
        tmp_path, local_ray, model):
    pairs = PAIRS * 2  # eight jobs of two images each
    local_queue, ray_queue = tmp_path / "local", tmp_path / "ray"
    local_ids = submit_jobs(local_queue, model, tmp_path / "in-local", pairs)
    ray_ids = submit_jobs(ray_queue, model, tmp_path / "in-ray", pairs)
    worked = cli("worker", "--queue", local_queue, "--once")
    assert worked.exit_code == 0, worked.stderr

    local_ray.slow(0.4)  # every image stays in an actor long enough to be killed there
    stop = threading.Event()
    thread, done = start_pool(ray_queue, stop, actors=2, actor_cpus=0.5)
    wait_until(lambda: completed(ray_queue) >= 1, what="a first job")
    _node, victim = wait_until(lambda: next(iter(ray_harness.busy(local_ray.harness)), None), what="a busy actor")
    os.kill(victim, signal.SIGKILL)
    report = joined(thread, done, stop)

    assert report.retried >= 1  # the killed actor's image went round again
    assert sorted(report.jobs) == sorted((job_id, "completed") for job_id in ray_ids)  # each once
    assert report.images == 16 and report.shape == PoolShape(actors=2, cpus=0.5, gpus=0.0, threads=1)
    store = JobStore(ray_queue)
    try:
        assert store.counts() == {"queued": 0, "processing": 0, "completed": 8, "failed": 0}
        assert all(job.attempts == 1 and job.owner is None for job in store.jobs())
    finally:
        store.close()
    for local_id, ray_id, pair in zip(local_ids, ray_ids, pairs):
        result = json.loads((ray_queue / "jobs" / ray_id / "result.json").read_text())
        assert [r["status"] for r in result["results"]] == ["ok", "ok"]
        assert [Path(r["original_filename"]).name for r in result["results"]] == list(pair)  # in input order
        assert outputs(ray_queue, ray_id) == outputs(local_queue, local_id)
        local = json.loads((local_queue / "jobs" / local_id / "result.json").read_text())
        assert result["setup"] == local["setup"] and result["setup"]["precision"] == "fp32"
    assert_clean(ray_queue)


@pytest.mark.parametrize("in_hand", [1, 3])
def test_an_image_that_kills_every_actor_taking_it_fails_alone_after_max_attempts(tmp_path, local_ray, model,
                                                                                   in_hand):
    """With three images in hand an actor's death takes its neighbours too; each goes round again alone, so an
    image that kills every actor fails by itself and those that died beside it once are restored."""
    queue = tmp_path / "queue"
    poisoned, healthy = submit_jobs(queue, model, tmp_path / "in", [("poison.jpg", "rocket.jpg"),
                                                                    ("cameraman_gray.png",)])
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=2, actor_cpus=0.5, max_attempts=2, actor_images=in_hand)
    report = joined(thread, done, stop)

    assert sorted(report.jobs) == sorted([(poisoned, "completed"), (healthy, "completed")])
    result = json.loads((queue / "jobs" / poisoned / "result.json").read_text())
    poison, good = result["results"]
    assert poison["status"] == "error" and poison["output"] is None
    assert poison["error"].startswith(f"{poison['original_filename']}: the Ray actor restoring it died on each of "
                                      "2 tries")
    assert good["status"] == "ok" and (queue / good["output"]).is_file()
    assert result["status"] == "completed" and "poison.jpg" in result["error"]
    assert json.loads((queue / "jobs" / healthy / "result.json").read_text())["results"][0]["status"] == "ok"
    assert report.images == 2
    if in_hand == 1:
        assert report.retried == 1  # one death retried, the second one final
    else:  # the poison's first death, and any of the two others in hand beside it then: each once, never twice
        assert 1 <= report.retried <= 3
    assert_clean(queue)


def test_an_actor_decodes_its_next_image_while_its_model_runs(tmp_path, local_ray, model):
    """The actor's model is held (the harness's ``hold`` file) on the first image; the second is decoded meanwhile
    in the same actor, which it could not be with one image in hand."""
    queue = tmp_path / "queue"
    (job,) = submit_jobs(queue, model, tmp_path / "in", [("rocket.jpg", "cameraman_gray.png")])
    hold = local_ray.harness / "hold"
    hold.touch()
    stop = threading.Event()
    try:
        thread, done = start_pool(queue, stop, actors=1, actor_cpus=0.5, actor_images=2)
        wait_until(lambda: len(ray_harness.decoded(local_ray.harness)) == 2, what="both images decoded")
        assert len(ray_harness.held(local_ray.harness)) == 1 and completed(queue) == 0  # the first's model waits
    finally:
        hold.unlink()
    report = joined(thread, done, stop)
    assert report.jobs == [(job, "completed")] and report.images == 2 and report.retried == 0
    assert_clean(queue)


def test_a_job_folder_with_a_planted_link_fails_alone_in_the_pool_too(tmp_path, local_ray, model):
    queue = tmp_path / "queue"
    hostile, sound = submit_jobs(queue, model, tmp_path / "in", [("rocket.jpg",), ("astronaut_face.jpg",)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (queue / "jobs" / hostile / "outputs").symlink_to(elsewhere)
    stop = threading.Event()
    thread, done = start_pool(queue, stop, actors=1, actor_cpus=0.5)
    report = joined(thread, done, stop)
    assert sorted(report.jobs) == sorted([(hostile, "failed"), (sound, "completed")])
    status = json.loads(cli("status", hostile, "--queue", queue, "--json").stdout)
    assert "outputs is a symbolic link" in status["error"] and list(elsewhere.iterdir()) == []


def test_a_job_whose_model_cannot_load_fails_and_one_the_cluster_lacks_weights_for_is_given_back(
        tmp_path, local_ray, model):
    """As with a local worker: a damaged model file fails its job alone; weights missing where the actors run fail
    no job outright: it is queued again (the attempt counted) for workers that have them, and ``worker --ray``
    exits 3 saying what to install."""
    queue = tmp_path / "queue"
    broken = tmp_path / "broken.safetensors"
    shutil.copy(model, broken)
    (damaged,) = submit_jobs(queue, broken, tmp_path / "in", [("rocket.jpg",)])
    broken.write_bytes(b"damaged after submission")
    files = photos(tmp_path / "faces", ["rocket.jpg"])
    submitted = cli("submit", *files, "--queue", queue, "--model", model, "--face-enhance", "--weights-dir",
                    tmp_path / "nofaces", "--json")
    faces = json.loads(submitted.stdout)["job_id"]

    result = cli("worker", "--queue", queue, "--once", "--ray", "local", "--actors", "1", "--actor-cpus", "0.5")
    assert result.exit_code == 3, result.output
    assert "queued again for a worker that can" in result.stderr
    store = JobStore(queue)
    try:
        assert store.get(damaged).status == "failed"
        assert "not a readable safetensors file" in store.get(damaged).last_error
        given_back = store.get(faces)
        assert given_back.status == "queued" and given_back.attempts == 1  # tried once by this pool
        assert "download-weights gfpgan-1.4" in given_back.last_error
    finally:
        store.close()
    assert_clean(queue)


@pytest.mark.parametrize("when", ["pool", "ray-starting"])
def test_sigterm_stops_a_ray_pool_within_its_grace_and_leaves_no_process(tmp_path, local_ray, model, when):
    """``worker --ray local`` given SIGTERM with work in hand (or while its Ray is still starting): it exits 0
    within its grace period, its jobs queued again resumable (or done), and no process of its Ray is left."""
    queue = tmp_path / "queue"
    ids = submit_jobs(queue, model, tmp_path / "in", PAIRS * 2)
    local_ray.slow(1.0)
    env = {**os.environ, "RAY_HARNESS_DIR": str(local_ray.harness)}
    # the harness starts its Ray before restorecli runs; restorecli starts its own, the start this test signals
    command = [str(HARNESS)] if when == "pool" else ["-m", "restorecli"]
    driver = subprocess.Popen([sys.executable, *command, "worker", "--queue", str(queue), "--ray", "local",
                               "--actors", "1", "--actor-cpus", "0.5", "--grace", "5", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        if when == "pool":
            events = (json.loads(line) for line in iter(driver.stdout.readline, "") if line.startswith("{"))
            assert next(event for event in events if event["type"] in ("pool", "image"))
        else:  # Ray's processes are appearing: its start is under way
            wait_until(lambda: descendants(driver.pid), timeout=120, what="Ray to begin starting")
        started = descendants(driver.pid)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(60) == 0, driver.stderr.read()
        wait_until(lambda: not any(alive(pid) for pid in started), timeout=10, what="Ray's processes to end")
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stdout.close()
        driver.stderr.close()
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    store = JobStore(queue)
    try:
        assert {store.get(job_id).status for job_id in ids} <= {"queued", "completed"}
        assert all(store.get(job_id).attempts == 0 for job_id in ids if store.get(job_id).status == "queued")
    finally:
        store.close()


@pytest.mark.slow  # 12-17 s on 2 cores: nox -s slow runs it
def test_a_killed_driver_leaves_its_jobs_to_a_later_local_worker(tmp_path, local_ray, model):
    """``worker --ray local`` SIGKILLed mid-run: its leases expire and a plain ``worker`` finishes the jobs."""
    queue = tmp_path / "queue"
    ids = submit_jobs(queue, model, tmp_path / "in", PAIRS * 2)
    local_ray.slow(0.3)
    env = {**os.environ, "RAY_HARNESS_DIR": str(local_ray.harness)}
    driver = subprocess.Popen([sys.executable, str(HARNESS), "worker", "--queue", str(queue), "--ray", "local",
                               "--actors", "2", "--actor-cpus", "0.5", "--lease", "3", "--once", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    try:
        events = (json.loads(line) for line in iter(driver.stdout.readline, "") if line.startswith("{"))
        finished = next(event for event in events if event["type"] == "finished")
        assert finished["outcome"] == "completed"
        driver.kill()  # SIGKILL: no release, no clean-up
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stdout.close()
        try:  # the private Ray instance it started dies with it; anything of its session left is ended here
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    store = JobStore(queue)
    try:
        held = store.jobs("processing")
        assert held, "the driver was killed after the queue drained"
        wait_until(lambda: all(job.lease_until < time.time() for job in store.jobs("processing")), timeout=30,
                 what="the killed driver's leases to expire")
    finally:
        store.close()

    worked = cli("worker", "--queue", queue, "--once", "--lease", "3")
    assert worked.exit_code == 0, worked.stderr
    store = JobStore(queue)
    try:
        assert store.counts() == {"queued": 0, "processing": 0, "completed": 8, "failed": 0}
        taken_over = {job.id for job in held}
        assert all(store.get(job_id).attempts == 2 for job_id in taken_over)
    finally:
        store.close()
    for job_id in ids:
        result = json.loads((queue / "jobs" / job_id / "result.json").read_text())
        assert [r["status"] for r in result["results"]] == ["ok", "ok"]
        assert all(len(data) > 0 for data in outputs(queue, job_id).values())
    assert_clean(queue)


# ----------------------------------------------------------------------------- a two-node cluster


@pytest.mark.slow  # 12-17 s on 2 cores: nox -s slow runs it
def test_jobs_complete_when_a_node_is_lost_mid_image(tmp_path, instances, model, monkeypatch):
    from ray.cluster_utils import Cluster

    queue = tmp_path / "queue"
    ids = submit_jobs(queue, model, tmp_path / "in", PAIRS)
    ray.shutdown()  # the module's instance; the next test that needs it starts it again
    # the token this process generated for the module's instance (Ray keeps it for the process's life)
    monkeypatch.setenv("HOME", str(instances.folder))
    # a lost node is noticed within about 2 s (Ray's default health checks take about 30 s)
    quick = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": quick})
    try:
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, runtime_env=ray_harness.runtime_env(instances.harness))
        instances.slow(0.5)
        stop = threading.Event()
        thread, done = start_pool(queue, stop, actors=2, actor_cpus=0.5)
        wait_until(lambda: any(node == worker.node_id for node, _ in ray_harness.busy(instances.harness)),
                 what="an actor busy on the second node")
        cluster.remove_node(worker)
        report = joined(thread, done, stop)
    finally:
        instances.slow(0)
        ray.shutdown()
        cluster.shutdown()

    assert report.retried >= 1
    assert sorted(report.jobs) == sorted((job_id, "completed") for job_id in ids)
    for job_id in ids:
        result = json.loads((queue / "jobs" / job_id / "result.json").read_text())
        assert [r["status"] for r in result["results"]] == ["ok", "ok"]
    assert_clean(queue)


# ----------------------------------------------------------------------------- without a Ray instance


_PROBE = """
import json, sys
from typer.testing import CliRunner
from restorecli.cli.app import app
result = CliRunner().invoke(app, json.loads(sys.argv[1]))
print(json.dumps({"exit_code": result.exit_code, "ray": "ray" in sys.modules, "output": result.output}))
"""


@pytest.mark.parametrize("args", [["worker", "--help"], ["worker", "--once"], ["worker", "--once", "--ray", "local"]],
                         ids=" ".join)
def test_a_worker_with_nothing_to_do_imports_no_ray(tmp_path, args):
    """``--help`` and an empty queue (``--ray`` too: Ray starts with the first job claimed) import no Ray."""
    extra = [] if "--help" in args else ["--queue", str(tmp_path / "queue")]
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args + extra)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["exit_code"] == 0, found
    assert found["ray"] is False
    if "--help" in args:
        assert "--ray" in found["output"] and "--actor-cpus" in found["output"]


def test_without_ray_installed_the_job_is_given_back_and_the_worker_exits_3(tmp_path, model):
    queue = tmp_path / "queue"
    (job_id,) = submit_jobs(queue, model, tmp_path / "in", [("rocket.jpg",)])
    hidden = "import sys; sys.modules['ray'] = None; exec(sys.argv.pop(1))"  # import ray raises ImportError
    done = subprocess.run([sys.executable, "-c", hidden, _PROBE,
                           json.dumps(["worker", "--queue", str(queue), "--once", "--ray", "local"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["exit_code"] == 3 and "--ray needs Ray: pip install 'restorecli[ray]'" in found["output"]
    store = JobStore(queue)
    try:
        job = store.get(job_id)
        assert job.status == "queued" and job.attempts == 0 and "restorecli[ray]" in job.last_error
    finally:
        store.close()


def test_pool_options_without_ray_are_a_usage_error(tmp_path):
    result = cli("worker", "--queue", tmp_path / "queue", "--once", "--actors", "2")
    assert result.exit_code == 2
    assert "--actors shape the Ray pool: give --ray too" in result.stderr
    result = cli("worker", "--queue", tmp_path / "queue", "--once", "--actor-images", "2")
    assert result.exit_code == 2 and "--actor-images shape the Ray pool: give --ray too" in result.stderr
    result = cli("worker", "--queue", tmp_path / "queue", "--once", "--ray", "local", "--actor-images", "0")
    assert result.exit_code == 2 and "--actor-images" in result.stderr


def test_the_pool_takes_one_actor_per_gpu_and_a_share_of_the_cpus():
    gpu_nodes = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0, "GPU": 2.0}]
    assert pool_shape({"CPU": 32.0, "GPU": 4.0}, gpu_nodes, PoolOptions()) == PoolShape(4, 7.2, 1.0, 8)
    assert pool_shape({"CPU": 32.0, "GPU": 4.0}, gpu_nodes, PoolOptions(actor_gpus=0.5)).actors == 8
    # without GPUs: one actor, which may not hold every CPU of its node
    assert pool_shape({"CPU": 2.0}, [{"CPU": 2.0}], PoolOptions()) == PoolShape(1, 1.8, 0.0, 2)
    assert pool_shape({"CPU": 2.0}, [{"CPU": 2.0}], PoolOptions(actors=2)) == PoolShape(2, 0.9, 0.0, 1)
    assert pool_shape({"CPU": 8.0}, [{"CPU": 4.0}, {"CPU": 4.0}], PoolOptions()).cpus == 3.6  # one node's share
    with pytest.raises(UsageError, match="no node of the Ray cluster has 1 CPU"):
        pool_shape({"CPU": 2.0}, [{"CPU": 2.0}], PoolOptions(actor_gpus=1, actor_cpus=1))
