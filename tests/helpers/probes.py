"""A stand-in for the back-end speed probe (``restorecli.engine.backends.choice.SpeedProbe``), so that no test's
assertion depends on wall-clock time: the times are the test's own."""

from __future__ import annotations

from typing import Any, Callable, Sequence


class FixedProbe:
    """Measures candidates together as the real probe does (a ``choice.Measure``), each by ``one(candidate)``, in
    the order asked, telling ``advance`` as each candidate is warmed and once more for the rounds. A test subclasses
    it with its own ``one`` (constructed with any arguments, as ``SpeedProbe`` is, so that the class may take its
    place), or makes one with ``fixed_probe``. ``asked``: the candidates measured so far, in order."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.asked: list[Any] = []

    def one(self, candidate: Any) -> Any:
        raise NotImplementedError("a FixedProbe answers by its subclass's one(candidate), or fixed_probe's")

    def __call__(self, found: Sequence[Any], advance: Callable[[], None] = lambda: None) -> dict[Any, Any]:
        measured = {}
        for candidate in found:
            self.asked.append(candidate)
            measured[candidate] = self.one(candidate)
            advance()
        advance()
        return measured


def fixed_probe(one: Callable[[Any], Any]) -> FixedProbe:
    """A ``FixedProbe`` measuring each candidate by ``one``."""
    probe = FixedProbe()
    probe.one = one  # type: ignore[method-assign]
    return probe
