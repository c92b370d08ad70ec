"""The command line's options. The restore options are derived from their one declaration in
``restorecli.options`` (``with_restore_options`` adds them all to a command); the few others are declared here."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Annotated, Any, Callable, Optional

import typer

from ..options import FORMATS, PRECISIONS, check_choice, declared, from_given, parse_tile

__all__ = ["PRECISIONS", "check_choice", "from_given", "parse_tile", "registry_names", "with_restore_options"]


# The registry kind each model-naming option takes, for shell completion
_MODEL_KINDS = {"model": "sr", "face_model": "face", "face_detector": "detector"}


def registry_names(kind: str, incomplete: str) -> list[tuple[str, str]]:
    """The registry's names of models of ``kind`` (sr, face, detector) that start with ``incomplete``, each with
    its description: what TAB offers for an option that names a model."""
    from ..models.registry import REGISTRY

    return [(entry.name, entry.description) for entry in REGISTRY.values()
            if entry.kind == kind and entry.name.startswith(incomplete)]


def _completions(name: str, spec) -> Callable[[str], list[tuple[str, str]]] | None:
    """What TAB offers for a declared option: its choices; registry names of the kind a model option takes, with
    their descriptions; or the literal words of a metavar such as ``auto|cpu|cuda[:N]|mps`` (auto, cpu, cuda, mps).
    None where there is nothing to offer but the shell's own file names."""
    if name in _MODEL_KINDS:
        def models(incomplete: str) -> list[tuple[str, str]]:  # typer reads the parameter's annotation
            return registry_names(_MODEL_KINDS[name], incomplete)

        return models
    words = list(spec.choices or ())
    if not words and spec.metavar and "|" in spec.metavar:
        words = [word.split("[")[0] for word in spec.metavar.split("|")]
        words = [word for word in words if word and word == word.lower()]  # N, PATH, NAME are placeholders
    if not words:
        return None
    return lambda incomplete: [(word, "") for word in words if word.startswith(incomplete)]


def _format_alias(value: str | None) -> str | None:
    """``--format``'s other spellings, the suffixes the format registry knows (jpeg and jpe for jpg, tif for tiff),
    as the format's name; any other value as it is, for the choice check to refuse with the choices listed."""
    if value is None or value in FORMATS:
        return value
    from ..images.formats import format_for_suffix

    return format_for_suffix("." + value) or value


# Typer callbacks that turn a value's other spellings into the one the options take
_ALIASES: dict[str, Callable[[Any], Any]] = {"format": _format_alias}


def _typer_type(default: Any, spec, name: str = "") -> Any:
    """``Annotated[type, typer.Option(...)]`` for one declared restore option."""
    settings: dict[str, Any] = {"help": spec.help, "show_default": spec.show_default}
    if name in _ALIASES:
        settings["callback"] = _ALIASES[name]
    complete = _completions(name, spec)
    if complete is not None:
        settings["autocompletion"] = complete
    metavar = spec.metavar or ("|".join(spec.choices) if spec.choices else None)
    if metavar:
        settings["metavar"] = metavar
    if spec.minimum is not None:
        settings["min"] = spec.minimum
    if spec.maximum is not None:
        settings["max"] = spec.maximum
    if spec.panel:
        settings["rich_help_panel"] = spec.panel
    given = Optional[spec.given_as] if default is None else spec.given_as
    return Annotated[given, typer.Option(*spec.flags, **settings)]


RESTORE_OPTIONS: dict[str, tuple[Any, Any]] = {name: (_typer_type(default, spec, name), default)
                                               for name, default, spec in declared()}
DEFAULTS = {name: default for name, (_, default) in RESTORE_OPTIONS.items()}

# The declared options that other commands (evaluate) take one by one, by the names they use.
Model, Tile, TilePad, Device, PrecisionOpt, WeightsDir, FaceEnhance = (
    RESTORE_OPTIONS[name][0] for name in ("model", "tile", "tile_pad", "device", "precision", "weights_dir",
                                          "face_enhance"))

Inputs = Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, directories, or - for stdin.",
                                             show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]
Queue = Annotated[Optional[str], typer.Option(
    metavar="DIR", help="Job folder [default: $RESTORECLI_QUEUE, then ./restorecli-queue].", show_default=False)]


def with_restore_options(command: Callable[..., None] | None = None, *, panel: str | None = None) -> Any:
    """``command`` with every declared restore option added to its parameters (after its own), for Typer; the
    command receives their values as one dict, its ``restore`` parameter. With ``panel`` (as
    ``@with_restore_options(panel=...)``), --help shows them all under that one heading instead of their own."""
    if command is None:
        return functools.partial(with_restore_options, panel=panel)
    declared_options = RESTORE_OPTIONS if panel is None else {
        name: (_typer_type(default, dataclasses.replace(spec, panel=panel), name), default)
        for name, default, spec in declared()}
    own = inspect.signature(command, eval_str=True)
    parameters = [p for p in own.parameters.values() if p.name != "restore"]
    names = list(declared_options)
    for name, (annotation, default) in declared_options.items():
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))

    @functools.wraps(command)
    def run(**values: Any) -> None:
        return command(**{k: v for k, v in values.items() if k not in names},
                       restore={name: values[name] for name in names})

    run.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    del run.__wrapped__  # Typer reads the signature above, not the command's own
    return run
