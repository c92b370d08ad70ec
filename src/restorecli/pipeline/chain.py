"""Model chains (``--model A --model B``, ``--chain A,B``, a preset's): every model of the chain is loaded as a
``Restorer`` of its own, with its own device placement, precision (and fallback), 16-bit copy, tiles and memory plan;
the last one holds the face and colour stages and runs the earlier ones (``EarlierModels``), whole in memory and in
order, before its own model, which may still stream its rows. Scales multiply; ``--outscale`` is the final scale of
the input, applied to the last model's result."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

import numpy as np

from ..engine.enhance import target_size
from ..engine.model import LoadedModel
from ..engine.tiling import TileProgress
from ..errors import RestoreCliError
from ..images import OutputFormat
from ..models.loading import resolve_model_path, weights_dir
from ..options import RestoreOptions, model_chain

class Restorer(Protocol):
    """What a chain asks of each of its models' restorers (``runner.Restorer``, which holds the chain: so this
    module needs no import of it)."""

    model: LoadedModel
    fallback: str | None  # why ``auto`` runs the model in fp32 after all
    before: EarlierModels
    options: RestoreOptions

    def run_stage(self, color: np.ndarray, alpha: np.ndarray | None, name: str, fmt: OutputFormat | None,
                  on_tile: TileProgress | None) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclass(frozen=True)
class EarlierModels:
    """The models of a chain before its last, each a loaded ``Restorer``, in the order they run (none: no chain)."""

    stages: tuple[Restorer, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.stages)

    def run(self, color: np.ndarray, alpha: np.ndarray | None, name: str, fmt: OutputFormat | None,
            on_tile: TileProgress | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The planes the last model takes: image ``name``'s through each earlier model in turn."""
        for stage in self.stages:
            color, alpha = stage.run_stage(color, alpha, name, fmt, on_tile)
        return color, alpha

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (w, h) the last model takes for an input of ``size``: through each earlier model at its own scale."""
        for stage in self.stages:
            size = target_size(stage.model, *size, None)
        return size

    def last_outscale(self, outscale: float | None) -> float | None:
        """The scale the last model resizes its result to, for a final ``outscale`` of the input (None: its own)."""
        if outscale is None or not self.stages:
            return outscale
        return outscale / math.prod(stage.model.spec.default_outscale for stage in self.stages)

    def setup(self, last: Restorer) -> dict[str, Any]:
        """What a chain adds to ``last``'s setup: every model in order (``chain``, and ``model`` their names joined),
        and an earlier model's precision fallback, named with it, beside the last one's."""
        chain = [stage.model.spec.name for stage in (*self.stages, last)]
        setup: dict[str, Any] = {"chain": chain, "model": ",".join(chain)}
        fallbacks = [f"{stage.model.spec.name}: {stage.fallback}" for stage in self.stages if stage.fallback]
        if fallbacks:
            setup["precision_fallback"] = "; ".join([*fallbacks, *([last.fallback] if last.fallback else [])])
        return setup


def load_chain(load: Callable[..., Restorer], options: RestoreOptions, *extra: Any) -> Restorer:
    """The restorer of a chain's last model, with the earlier ones (``EarlierModels``), each loaded by ``load``
    (``Restorer.from_options``, given ``extra`` too) from ``options`` with its own model. Every model is found
    first, so that a bad one fails the run before any loads, its error naming it and its place in the chain."""
    *earlier, last = chain = model_chain(options.model)
    folder = weights_dir(options.weights_dir)
    for place, name in enumerate(chain, 1):
        try:
            resolve_model_path(name, folder)
        except RestoreCliError as exc:
            raise type(exc)(f"--model {name}, model {place} of the chain's {len(chain)}: {exc}") from None
    # faces and colour act on the whole image once, after the last model
    before = tuple(load(replace(options, model=name, face_enhance=False, colorize="never"), *extra)
                   for name in earlier)
    restorer = load(replace(options, model=last), *extra)
    restorer.before, restorer.options = EarlierModels(before), options
    return restorer


__all__ = ["EarlierModels", "load_chain"]
