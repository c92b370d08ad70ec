"""How one image is restored, in stages that return data, and the local batch that runs them in order.

    read ─> prepare (decode, size, find faces) ─> enhance (model, then faces) ─> encode ─> write
    item.read_source   Restorer.prepare            Restorer.enhance             stages     item.Outputs

- ``runner``: ``Restorer``, the models loaded once on their device; bytes or arrays in, data out, no files.
- ``stages``: the data between the stages (``Prepared``, ``Enhancement``, ``Restored`` with face crops as bytes).
- ``item``: one image's lifecycle around the model, shared by every runtime (results, failures, atomic writes).
- ``batch``: the local run (``restore_batch``): read ahead, the model, write behind, results in order; the
  model's loop is ``flow``'s, the threads beside the model are ``overlap``'s.

Every runtime uses these: the CLI, the queue's worker and the Modal app's job calls run ``restore_batch``; the Ray
actor runs ``prepare``/``enhance``/``encode`` in ``flow``'s loop, as the batch does, and the driver writes with
``item``; the Modal app's single-image ``restore`` method runs ``restore_bytes``.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..plan import BatchResult, InputItem, ItemResult
    from .batch import restore_batch
    from .runner import Restorer
    from .stages import Enhancement, Prepared, Restored

# What each name is imported from, on first use: ``pipeline.item`` and ``pipeline.stages`` stay importable without
# torch (the Ray driver, the client), while ``from restorecli.pipeline import Restorer`` loads the models' code.
_HOMES = {"restore_batch": ".batch", "Restorer": ".runner", "Enhancement": ".stages", "Prepared": ".stages",
          "Restored": ".stages", "RestoreOptions": "..options", "BatchResult": "..plan", "FileFacts": "..plan",
          "InputItem": "..plan", "ItemResult": "..plan", "OutputPlanner": "..plan", "PlannedOutput": "..plan",
          "claim_name": "..plan", "collect_inputs": "..plan", "output_path_for": "..plan", "plan_outputs": "..plan"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)


__all__ = sorted(_HOMES)
