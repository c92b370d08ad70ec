"""Named presets: the model chains (and face stage) that common restorations need, under one name each
(``--preset old-photo``). A preset is data, like the registry beside it: which models run in order and whether
faces are restored. ``RestoreOptions`` takes ``preset`` as an option and ``options.from_given`` applies it with
``preset_values``, so the command line, the queue and the server's form all run a preset the same way.
Imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .registry import DEFAULT_MODEL


@dataclass(frozen=True)
class Preset:
    name: str
    models: tuple[str, ...]  # registry names, run one after another (the chain)
    face_enhance: bool
    description: str

    @property
    def chain(self) -> str:
        """The models as ``--model`` takes a chain: their names joined by commas."""
        return ",".join(self.models)


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("old-photo", ("scunet-color-real-psnr", "realesrgan-x4plus"), True,
           "Scanned or old photographs: noise and artefacts removed (SCUNet), 4x, faces restored."),
    Preset("jpeg-photo", ("fbcnn-color", "realesrgan-x4plus"), False,
           "Heavily compressed JPEG photos: block and ringing artefacts removed (FBCNN), then 4x."),
    Preset("portrait", ("realesrgan-x4plus",), True, "Photographs of people: 4x, faces restored."),
    Preset("denoise", ("scunet-color-real-psnr",), False, "Noise removed at the same size (SCUNet, 1x)."),
    Preset("anime", ("realesrgan-x4plus-anime",), False, "Anime and illustrations, 4x."),
)}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset_values(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (the options given, by field name) with preset ``name``'s chain as ``model`` and its face stage
    turned on where it has one; a ``model`` given besides (other than the default or the preset's own chain) is a
    usage error, since both choose the models. Other options (``face_model``, ``outscale``, ...) stay as given."""
    preset = PRESETS[name]
    model = values.get("model", DEFAULT_MODEL)
    if model not in (DEFAULT_MODEL, preset.chain):
        raise UsageError(f"--preset {name} runs its own models ({', '.join(preset.models)}); --model {model} "
                         "chooses others: give one of them")
    return {**values, "model": preset.chain, "face_enhance": values.get("face_enhance", False) or preset.face_enhance}
