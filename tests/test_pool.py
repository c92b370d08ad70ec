"""The Ray pool's pieces that need no Ray: the actor's calls, from the threads Ray gives it, through the local
batch's loop (decoding, the model, encoding, each on its thread: ``pipeline.flow``) and the driver's account of each
actor's free slots. The pool itself, on a local Ray instance, is tests/test_ray.py's."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import restorecli.pipeline.runner as pipeline
import restorecli.pipeline.stages as stages
from conftest import TEST_INPUTS
from restorecli.distributed.actor import ImageTask, RestoreActor
from restorecli.distributed.pool import Slots
from restorecli.options import RestoreOptions

WAIT = 30.0  # seconds a stage waits for what another thread must do beside it; never reached where it overlaps


@pytest.fixture
def new_actor():
    """``new_actor()``: a ``RestoreActor`` in this process, its loop's threads ended after the test (so none
    outlives it here, where an actor's process would end them)."""
    made: list[RestoreActor] = []

    def make() -> RestoreActor:
        made.append(RestoreActor())
        return made[-1]

    yield make
    for actor in made:
        actor.close()


def _tasks(model: Path, names) -> list[ImageTask]:
    options = RestoreOptions(model=str(model), device="cpu", precision="fp32")
    data = (TEST_INPUTS / "coffee_alpha.png").read_bytes()
    return [ImageTask(name, data, options, "png", Path(name).stem) for name in names]


class _Stages:
    """Wraps the pipeline's decoding, model and encoding to record which image each stage is in, how many
    threads are in each stage at once, and to hold a stage until another image reaches a point. The model and the
    encoder are not told an image's name: the n-th image a stage takes is named after the n-th decoded (each stage
    takes its images in the order they came, one thread each)."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.inside = {"decode": 0, "model": 0, "encode": 0}
        self.most = dict(self.inside)
        self.reached: dict[str, threading.Event] = {}
        self.holds: dict[str, str] = {}  # "stage:image" -> "stage:image" it waits for
        self.waited: dict[str, bool] = {}  # "stage:image" -> whether what it waited for came in time
        self.decoded: list[str] = []  # the images' names, in the order their decoding began
        self.taken = {"model": 0, "encode": 0}
        self.threads: dict[str, set[str]] = {"decode": set(), "model": set(), "encode": set()}  # who ran each stage
        self.events: list[str] = []  # "stage:image" as each begins, "stage:image:done" as it ends
        decode, enhance, encode = pipeline.decode_image, pipeline.enhance, stages.encode_image

        def decoding(data, name, max_pixels):
            with self.lock:
                self.decoded.append(name)
            return self.stage("decode", name, lambda: decode(data, name, max_pixels))

        def modelling(*args, **kwargs):
            return self.stage("model", self.next_in("model"), lambda: enhance(*args, **kwargs))

        def encoding(*args, **kwargs):
            return self.stage("encode", self.next_in("encode"), lambda: encode(*args, **kwargs))

        monkeypatch.setattr(pipeline, "decode_image", decoding)
        monkeypatch.setattr(pipeline, "enhance", modelling)
        monkeypatch.setattr(stages, "encode_image", encoding)

    def event(self, point: str) -> threading.Event:
        with self.lock:
            return self.reached.setdefault(point, threading.Event())

    def next_in(self, stage: str) -> str:
        with self.lock:
            self.taken[stage] += 1
            return self.decoded[self.taken[stage] - 1]

    def stage(self, stage: str, name: str, run):
        point = f"{stage}:{name}"
        with self.lock:
            self.inside[stage] += 1
            self.most[stage] = max(self.most[stage], self.inside[stage])
            self.threads[stage].add(threading.current_thread().name)
            self.events.append(point)
        self.event(point).set()
        try:
            if point in self.holds:
                self.waited[point] = self.event(self.holds[point]).wait(WAIT)
            return run()
        finally:
            with self.lock:
                self.inside[stage] -= 1
                self.events.append(point + ":done")
            self.event(point + ":done").set()


def test_the_actor_decodes_the_next_image_and_encodes_the_last_while_its_model_runs(make_model, monkeypatch,
                                                                                    new_actor):
    model = make_model(2)
    plain = new_actor()
    expected = [plain.restore(task) for task in _tasks(model, ["a.png", "b.png", "c.png"])]
    assert all(outcome.error is None and outcome.data for outcome in expected)

    stages = _Stages(monkeypatch)
    # a's model holds until b is decoded; a's encoding until b's model has begun; b's model until c is decoded
    stages.holds = {"model:a.png": "decode:b.png:done", "encode:a.png": "model:b.png",
                    "model:b.png": "decode:c.png:done"}
    actor = new_actor()
    outcomes: dict[str, object] = {}
    threads = []
    for task in _tasks(model, ["a.png", "b.png", "c.png"]):  # as Ray's threads take them, in order
        thread = threading.Thread(target=lambda task=task: outcomes.__setitem__(task.source, actor.restore(task)))
        thread.start()
        threads.append(thread)
        assert stages.event(f"decode:{task.source}").wait(WAIT)  # each begins before the next is sent
    for thread in threads:
        thread.join(3 * WAIT)

    assert stages.waited == {"model:a.png": True, "encode:a.png": True, "model:b.png": True}
    assert stages.most["decode"] == 1 and stages.most["model"] == 1  # one image at a time in each (encoding: any)
    for name, alone in zip(["a.png", "b.png", "c.png"], expected):
        outcome = outcomes[name]
        assert outcome.error is None and outcome.data == alone.data  # byte for byte those restored one at a time
        assert (outcome.in_size, outcome.out_size) == (alone.in_size, alone.out_size)


def test_an_image_the_actor_cannot_decode_is_its_error_and_the_others_beside_it_are_restored(make_model,
                                                                                              new_actor):
    actor = new_actor()
    good, bad = _tasks(make_model(2), ["good.png", "bad.png"])
    bad = ImageTask(bad.source, b"\x89PNG\r\n\x1a\n not really", bad.options, bad.fmt, bad.faces_stem)
    outcomes: dict[str, object] = {}
    threads = [threading.Thread(target=lambda task=task: outcomes.__setitem__(task.source, actor.restore(task)))
               for task in (bad, good)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(3 * WAIT)
    assert outcomes["bad.png"].data is None and outcomes["bad.png"].error.startswith("bad.png: ")
    assert outcomes["good.png"].error is None and outcomes["good.png"].out_size == (2 * 128, 2 * 85)


def _calls(actor: RestoreActor, tasks, began) -> dict[str, object]:
    """Each task sent on a thread of its own, as Ray's threads take an actor's calls, the next only once the one
    before reached ``began(task)`` (an event), so they come in order; the outcomes by image, once all answered."""
    outcomes: dict[str, object] = {}
    threads = []
    for task in tasks:
        thread = threading.Thread(target=lambda task=task: outcomes.__setitem__(task.source, actor.restore(task)),
                                  name=f"call-{task.source}")
        thread.start()
        threads.append(thread)
        assert began(task).wait(WAIT)
    for thread in threads:
        thread.join(3 * WAIT)
    assert len(outcomes) == len(tasks)
    return outcomes


def test_the_actor_s_images_go_through_the_local_batch_s_reader_model_and_writer_threads(make_model, monkeypatch,
                                                                                         new_actor):
    """The actor runs the batch's loop (``flow.Served`` over ``run_flow``): each stage on the one thread of its
    own that a local batch has (``restorecli-read``, the model's, ``restorecli-write``), none on the calls' threads;
    and, by the order of the stages' events, image b is decoded while image a is in the model, and a is encoded
    while b is in the model (each waits for the other to begin, which one image at a time could never do)."""
    model = make_model(2)
    stages = _Stages(monkeypatch)
    # each pair of stages waits for the other to have begun before it ends, so that they overlap whatever the pace
    stages.holds = {"decode:b.png": "model:a.png", "model:a.png": "decode:b.png:done",
                    "encode:a.png": "model:b.png", "model:b.png": "encode:a.png"}
    actor = new_actor()
    outcomes = _calls(actor, _tasks(model, ["a.png", "b.png"]), lambda task: stages.event(f"decode:{task.source}"))

    assert all(outcome.error is None and outcome.data for outcome in outcomes.values())
    assert stages.threads == {"decode": {"restorecli-read"}, "model": {"restorecli-model"},
                              "encode": {"restorecli-write"}}
    actor.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("restorecli-")]  # closed, its threads end
    assert set(stages.waited.values()) == {True}
    events = stages.events
    assert events.index("model:a.png") < events.index("decode:b.png:done") < events.index("model:a.png:done")
    assert events.index("model:b.png") < events.index("encode:a.png:done")
    assert events.index("encode:a.png") < events.index("model:b.png:done")


def test_a_failing_image_among_concurrent_calls_is_its_own_error_and_the_others_are_restored(make_model,
                                                                                            monkeypatch, new_actor):
    """Five calls at once: one whose bytes are no image (its decoding fails, on the reader thread), one the model
    runs out of memory on (the model thread), one its encoder refuses (the writer thread), between images that are
    restored; each failure is its own image's error, worded as a local batch words it (``failure_message``), and
    the loop goes on: the others are restored byte for byte as alone, and a later call too."""
    from restorecli.plan import failure_message

    model = make_model(2)
    options = RestoreOptions(model=str(model), device="cpu", precision="fp32")

    def task(name: str, data: bytes) -> ImageTask:
        return ImageTask(name, data, options, "png", Path(name).stem)

    coffee, rocket = (TEST_INPUTS / "coffee_alpha.png").read_bytes(), (TEST_INPUTS / "rocket.jpg").read_bytes()
    gray = (TEST_INPUTS / "cameraman_gray.png").read_bytes()
    tasks = [task("a.png", coffee), task("b.png", b"\x89PNG\r\n\x1a\n not really"), task("c.jpg", rocket),
             task("d.png", gray), task("e.png", coffee)]
    alone = new_actor().restore(tasks[0])
    assert alone.error is None and alone.data

    decoding = {name: threading.Event() for name in ["a.png", "b.png", "c.jpg", "d.png", "e.png", "f.png"]}
    decode, enhance, encode = pipeline.decode_image, pipeline.enhance, stages.encode_image
    out_of_memory = MemoryError()
    refused = ValueError("the encoder refused it")

    def decoding_hook(data, name, max_pixels):
        decoding[name].set()
        return decode(data, name, max_pixels)

    def model_hook(model_, color, *args, **kwargs):
        if color.shape[:2] == (64, 96):  # rocket.jpg: c.jpg
            raise out_of_memory
        return enhance(model_, color, *args, **kwargs)

    def encode_hook(color, *args, **kwargs):
        if color.shape[:2] == (256, 256):  # cameraman's output: d.png
            raise refused
        return encode(color, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_image", decoding_hook)
    monkeypatch.setattr(pipeline, "enhance", model_hook)
    monkeypatch.setattr(stages, "encode_image", encode_hook)
    actor = new_actor()
    outcomes = _calls(actor, tasks, lambda task: decoding[task.source])

    assert outcomes["b.png"].data is None and outcomes["b.png"].error.startswith("b.png: ")
    assert outcomes["c.jpg"].data is None and outcomes["c.jpg"].error == failure_message("c.jpg", out_of_memory)
    assert outcomes["d.png"].data is None and outcomes["d.png"].error == failure_message("d.png", refused)
    assert "not enough memory" in outcomes["c.jpg"].error and "refused" in outcomes["d.png"].error
    for name in ("a.png", "e.png"):
        assert outcomes[name].error is None and outcomes[name].data == alone.data, name
    later = actor.restore(task("f.png", coffee))
    assert later.error is None and later.data == alone.data


def test_an_actor_s_image_counts_its_own_seconds_not_its_wait_behind_the_image_before(make_model, monkeypatch,
                                                                                      new_actor):
    """Image b is decoded and waits while the model runs image a; the model's run on a takes 100 s of a clock the
    test moves by hand (no real time passes): a's seconds count them, b's do not."""
    import types

    from restorecli.pipeline import flow

    now = [1000.0]
    monkeypatch.setattr(flow, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    b_waits = threading.Event()
    prepared = flow.Served._prepared

    def noting(self, call):
        ready = prepared(self, call)  # its clock is stopped once its preparation is handed back
        if call.item.task.source == "b.png":
            b_waits.set()
        return ready

    monkeypatch.setattr(flow.Served, "_prepared", noting)
    enhance, runs = pipeline.enhance, []

    def model_hook(*args, **kwargs):
        runs.append(1)
        if len(runs) == 1:  # a's run
            assert b_waits.wait(WAIT)
            now[0] += 100.0
        return enhance(*args, **kwargs)

    monkeypatch.setattr(pipeline, "enhance", model_hook)
    decoding = {name: threading.Event() for name in ("a.png", "b.png")}
    decode = pipeline.decode_image

    def decoding_hook(data, name, max_pixels):
        decoding[name].set()
        return decode(data, name, max_pixels)

    monkeypatch.setattr(pipeline, "decode_image", decoding_hook)
    outcomes = _calls(new_actor(), _tasks(make_model(2), ["a.png", "b.png"]),
                      lambda task: decoding[task.source])
    assert outcomes["a.png"].error is None and outcomes["b.png"].error is None
    assert (outcomes["a.png"].seconds, outcomes["b.png"].seconds) == (100.0, 0.0)


def test_a_process_whose_actor_restored_images_exits_without_ending_its_threads(make_model):
    """The actor's loop never holds its process up (Ray ends an actor's process as Python exits): its reader, model
    and writer threads are daemons, and the reader left waiting for an image that never comes does not keep the
    process alive, as a thread pool's worker would."""
    program = f"""
from restorecli.distributed.actor import ImageTask, RestoreActor
from restorecli.options import RestoreOptions
options = RestoreOptions(model={str(make_model(2))!r}, device="cpu", precision="fp32")
data = open({str(TEST_INPUTS / "coffee_alpha.png")!r}, "rb").read()
outcome = RestoreActor().restore(ImageTask("a.png", data, options, "png", "a"))
print("restored" if outcome.error is None and outcome.data else outcome)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "restored", done.stderr


# ----------------------------------------------------------------------------- the driver's slots


def test_images_spread_over_the_actors_up_to_each_ones_depth():
    slots = Slots(2, depth=3)
    assert slots.take() is None and not slots.any  # no actor has answered its probe yet
    slots.up(0)
    slots.up(1)
    taken = [slots.take() for _ in range(6)]
    assert [actor for actor, _life, _n in taken] == [0, 1, 0, 1, 0, 1]
    assert slots.take() is None and not slots.any
    slots.back(*taken[3])
    assert slots.take() == (1, 0, 1)


def test_a_death_is_told_once_and_what_its_earlier_life_had_in_hand_gives_no_slot_back():
    slots = Slots(1, depth=3)
    slots.up(0)
    in_hand = [slots.take() for _ in range(3)]
    assert slots.down(0, in_hand[0][1]) is True  # the first failure: probe the actor
    assert [slots.down(0, life) for _actor, life, _n in in_hand[1:]] == [False, False]  # the same death again
    slots.up(0)  # the restarted actor answered its probe
    slots.back(*in_hand[1])  # a result of the life before its death
    assert slots.free == [3] and slots.life == [1]


def test_an_image_sent_again_after_a_death_takes_an_actor_holding_nothing_else():
    slots = Slots(2, depth=3)
    slots.up(0)
    slots.up(1)
    busy = slots.take()
    assert slots.take(alone=True) == (1, 0, 3)  # the empty actor, all of it
    assert slots.take(alone=True) is None  # actor 0 still holds an image
    assert slots.take() == (0, 0, 1)  # others go beside the busy one, never beside the one alone
    slots.back(1, 0, 3)
    assert slots.free == [1, 3]
    slots.back(*busy)
    assert slots.free == [2, 3]


@pytest.mark.parametrize("depth", [1, 3])
def test_an_actor_holds_as_many_images_as_its_depth_and_no_more(depth):
    slots = Slots(1, depth=depth)
    slots.up(0)
    assert sum(slots.take() is not None for _ in range(5)) == depth
