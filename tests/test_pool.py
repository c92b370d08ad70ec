"""The Ray pool's pieces that need no Ray: the actor's three stages on the threads Ray gives it (decoding, the
model, encoding, as a local batch pipelines them) and the driver's account of each actor's free slots. The pool
itself, on a local Ray instance, is tests/test_ray.py's."""

from __future__ import annotations

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


def _tasks(model: Path, names) -> list[ImageTask]:
    options = RestoreOptions(model=str(model), device="cpu", precision="fp32")
    data = (TEST_INPUTS / "coffee_alpha.png").read_bytes()
    return [ImageTask(name, data, options, "png", Path(name).stem) for name in names]


class _Stages:
    """Wraps the pipeline's decoding, model and encoding to record which image each thread is in, how many
    threads are in each stage at once, and to hold a stage until another image reaches a point."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.inside = {"decode": 0, "model": 0, "encode": 0}
        self.most = dict(self.inside)
        self.reached: dict[str, threading.Event] = {}
        self.holds: dict[str, str] = {}  # "stage:image" -> "stage:image" it waits for
        self.waited: dict[str, bool] = {}  # "stage:image" -> whether what it waited for came in time
        self.names = threading.local()
        decode, enhance, encode = pipeline.decode_image, pipeline.enhance, stages.encode_image

        def decoding(data, name, max_pixels):
            self.names.current = name
            return self.stage("decode", lambda: decode(data, name, max_pixels))

        def modelling(*args, **kwargs):
            return self.stage("model", lambda: enhance(*args, **kwargs))

        def encoding(*args, **kwargs):
            return self.stage("encode", lambda: encode(*args, **kwargs))

        monkeypatch.setattr(pipeline, "decode_image", decoding)
        monkeypatch.setattr(pipeline, "enhance", modelling)
        monkeypatch.setattr(stages, "encode_image", encoding)

    def event(self, point: str) -> threading.Event:
        with self.lock:
            return self.reached.setdefault(point, threading.Event())

    def stage(self, stage: str, run):
        point = f"{stage}:{self.names.current}"
        with self.lock:
            self.inside[stage] += 1
            self.most[stage] = max(self.most[stage], self.inside[stage])
        self.event(point).set()
        try:
            if point in self.holds:
                self.waited[point] = self.event(self.holds[point]).wait(WAIT)
            return run()
        finally:
            with self.lock:
                self.inside[stage] -= 1
            self.event(point + ":done").set()


def test_the_actor_decodes_the_next_image_and_encodes_the_last_while_its_model_runs(make_model, monkeypatch):
    model = make_model(2)
    plain = RestoreActor()
    expected = [plain.restore(task) for task in _tasks(model, ["a.png", "b.png", "c.png"])]
    assert all(outcome.error is None and outcome.data for outcome in expected)

    stages = _Stages(monkeypatch)
    # a's model holds until b is decoded; a's encoding until b's model has begun; b's model until c is decoded
    stages.holds = {"model:a.png": "decode:b.png:done", "encode:a.png": "model:b.png",
                    "model:b.png": "decode:c.png:done"}
    actor = RestoreActor()
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


def test_an_image_the_actor_cannot_decode_is_its_error_and_the_others_beside_it_are_restored(make_model):
    actor = RestoreActor()
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
