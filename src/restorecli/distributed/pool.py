"""The pool of Ray actors: its shape for a cluster (``pool_shape``), the actors' free slots across their lives
(``Slots``), and the actors themselves, probed before they take work and after each death (``ActorPool``)."""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from typing import Any, Collection

from ..errors import UsageError
from .actor import RestoreActor

# Of the CPUs an even share would give each actor, the share reserved: the pool never holds every CPU (two 1-CPU
# actors on a 2-CPU machine were seen to hang Ray there), and a restarted actor finds room after a node is lost
_CPU_SHARE = 0.9


@dataclass(frozen=True)
class PoolOptions:
    address: str = "local"  # local: a private single-machine Ray instance; auto or an address: join a cluster
    actors: int | None = None  # default: as many as the cluster's GPUs hold (one per GPU), or one without GPUs
    actor_gpus: float | None = None  # GPUs per actor; default 1 on a cluster with GPUs, else 0
    actor_cpus: float | None = None  # CPUs per actor (fractions allowed); default 0.9 of an even share
    actor_images: int = 3  # images each actor holds at once: decoding, in the model, encoding; 1: one at a time
    range_frames: int | None = None  # frames of a video each actor takes at once (None: ``video.ranges.range_size``)


@dataclass(frozen=True)
class PoolShape:
    actors: int
    cpus: float  # reserved by each actor
    gpus: float
    threads: int  # torch's threads in each actor



def pool_shape(cluster: dict[str, float], nodes: list[dict[str, float]], options: PoolOptions) -> PoolShape:
    """The pool for a cluster of ``cluster`` resources (``ray.cluster_resources()``) over ``nodes`` (each alive
    node's resources). Raises ``UsageError`` for a shape no node can hold one actor of."""
    gpus = cluster.get("GPU", 0.0)
    actor_gpus = options.actor_gpus if options.actor_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if options.actors is not None:
        actors = options.actors
    else:
        actors = max(1, int(gpus // actor_gpus)) if actor_gpus > 0 else 1
    biggest = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    if options.actor_cpus is not None:
        actor_cpus = options.actor_cpus
    else:
        actor_cpus = max(0.01, round(_CPU_SHARE * min(cluster.get("CPU", 0.0) / actors, biggest), 2))
    if not any(node.get("CPU", 0.0) >= actor_cpus and node.get("GPU", 0.0) >= actor_gpus for node in nodes):
        raise UsageError(f"no node of the Ray cluster has {actor_cpus:g} CPU(s) and {actor_gpus:g} GPU(s) for an "
                         f"actor (the cluster: {cluster.get('CPU', 0.0):g} CPUs, {gpus:g} GPUs); lower "
                         "--actor-cpus or --actor-gpus")
    return PoolShape(actors, actor_cpus, actor_gpus, max(1, math.ceil(actor_cpus)))


class Slots:
    """How many more images each actor can take (its free slots of ``depth``), and in which of its lives.

    An actor has none until it answers a probe (``up``); each image sent takes one (``take``) and gives it back with
    its result (``back``). A death (``down``) takes all of them and begins the actor's next life: the images it had
    in hand come back as failures one by one, and only the first starts a probe; any result of an earlier life gives
    no slot back to the new one. An image taken ``alone`` takes every slot of an actor holding nothing."""

    def __init__(self, actors: int, depth: int):
        self.depth = depth
        self.free = [0] * actors
        self.life = [0] * actors

    def up(self, actor: int) -> None:
        self.free[actor] = self.depth

    def down(self, actor: int, life: int) -> bool:
        """An image sent in ``life`` found its actor dead: True where that is news (the actor is to be probed)."""
        if life != self.life[actor]:
            return False
        self.life[actor] += 1
        self.free[actor] = 0
        return True

    def take(self, alone: bool = False) -> tuple[int, int, int] | None:
        """(actor, its life, slots taken) for the next image: the actor with the most free slots, so images spread
        over the pool; None where none can take it now."""
        wanted = self.depth if alone else 1
        ready = [actor for actor, free in enumerate(self.free) if free >= wanted]
        if not ready:
            return None
        actor = max(ready, key=lambda index: self.free[index])
        self.free[actor] -= wanted
        return actor, self.life[actor], wanted

    def back(self, actor: int, life: int, slots: int) -> None:
        if life == self.life[actor]:
            self.free[actor] += slots

    @property
    def any(self) -> bool:
        return any(self.free)


class ActorPool:
    """The actors and their ``Slots``. An actor takes images once it has answered a probe (at start, and after
    each death while Ray restarts it); one whose probe finds it dead for good (its creation failed) is dropped."""

    PROBE_TRIES = 3  # answers of "died" before an actor counts as gone, not restarting

    def __init__(self, shape: PoolShape, depth: int):
        import ray

        remote = ray.remote(RestoreActor).options(num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=-1,
                                                  max_task_retries=0, max_concurrency=depth,
                                                  scheduling_strategy="SPREAD")
        self.actors = [remote.remote(shape.threads) for _ in range(shape.actors)]
        self.slots = Slots(len(self.actors), depth)
        self.probes: dict[Any, int] = {}  # probe ref -> actor index
        self.later: list[tuple[float, int]] = []  # (when, actor) probes to send again
        self.failed_probes = collections.Counter()
        self.gone: dict[int, str] = {}  # actor index -> why it is gone
        for index in range(len(self.actors)):
            self.probe(index)

    def probe(self, index: int) -> None:
        self.probes[self.actors[index].pid.remote()] = index

    def answered(self, ref: Any) -> None:
        """A probe came back: the actor takes images, or is probed again later, or is gone."""
        import ray

        index = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.ActorDiedError as exc:
            self.failed_probes[index] += 1
            if self.failed_probes[index] >= self.PROBE_TRIES:
                self.gone[index] = short_error(exc)
                return
            self.later.append((time.monotonic() + 1.0, index))
        except ray.exceptions.RayError:  # unavailable for now (restarting, a network blip)
            self.later.append((time.monotonic() + 1.0, index))
        else:
            self.failed_probes[index] = 0
            self.slots.up(index)

    def probe_due(self) -> None:
        now = time.monotonic()
        due = [index for when, index in self.later if when <= now]
        self.later = [(when, index) for when, index in self.later if when > now]
        for index in due:
            self.probe(index)

    def wait(self, flight: Collection[Any], timeout: float) -> list[Any] | None:
        """Send the probes that are due, then wait up to ``timeout`` seconds for one of the images in ``flight``
        (their refs) or a probe's answer: the refs of ``flight`` that are ready, probes answered here; None where
        nothing is awaited."""
        import ray

        self.probe_due()
        waiting = list(flight) + list(self.probes)
        if not waiting:
            return None
        ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
        for ref in [ref for ref in ready if ref in self.probes]:
            self.answered(ref)
        return [ref for ref in ready if ref in flight]

    @property
    def alive(self) -> int:
        return len(self.actors) - len(self.gone)

    def close(self) -> None:
        """End the actors now (a caller's own Ray connection outlives the pool; Ray would end them only once their
        handles are collected)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)


def short_error(exc: BaseException) -> str:
    """A Ray error's first line, without its long advice."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
