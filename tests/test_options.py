"""Each restore option is declared once (restorecli.options); the command line and the worker's model cache are
derived from that declaration."""

from __future__ import annotations

import dataclasses

import pytest

from helpers.cli import invoke
from restorecli.options import RestoreOptions, declared, from_given, model_key



@pytest.mark.parametrize("command", ["restore", "submit"])
def test_every_declared_option_is_on_the_command_line_with_its_help(command):
    text = " ".join(invoke(command, "--help", terminal_width=400).stdout.split())
    for name, _default, spec in declared():
        flag = spec.flags[0].split("/")[0] if spec.flags else f"--{name.replace('_', '-')}"  # --on/--off: --on
        assert flag in text, f"{command} lacks {flag}"
        assert spec.help in text, f"{command} --help lacks the help of {flag}"


def test_the_model_key_is_exactly_what_loading_the_models_reads(make_model):
    """The worker reuses loaded models across jobs whose key agrees, so every field ``Restorer.from_options``
    reads must be in the key (else a job would run with another job's models), and only those."""
    from restorecli.pipeline import Restorer

    read: set[str] = set()
    names = {f.name for f in dataclasses.fields(RestoreOptions)}

    @dataclasses.dataclass(frozen=True)
    class Recording(RestoreOptions):
        def __getattribute__(self, name):
            if name in names:
                read.add(name)
            return super().__getattribute__(name)

    options = Recording(model=str(make_model(2)), device="cpu", precision="fp32")
    Restorer.from_options(options)
    keyed = {name for name, _default, spec in declared() if spec.loads_models}
    assert read - {"output_dir"} <= keyed
    assert read >= keyed - {"face_model", "face_detector", "colorize_model"}  # read with --face-enhance, --colorize
    changed = dataclasses.replace(options, quality=10, suffix="_x", face_weight=0.5)
    assert model_key(changed) == model_key(options)
    assert model_key(dataclasses.replace(options, tile_pad=8)) != model_key(options)


def test_given_values_are_parsed_and_checked_once_for_every_front_end():
    options = from_given({"tile": "auto", "format": "png", "precision": "fp32"}, output_dir="o")
    assert (options.tile, options.format, options.precision, options.output_dir) == (None, "png", "fp32", "o")
    assert from_given({"tile": "256"}).tile == 256
    from restorecli.errors import UsageError

    with pytest.raises(UsageError, match="--alpha 'drop' is not one of model, resize"):
        from_given({"alpha": "drop"})
    with pytest.raises(UsageError, match="--tile 4: use 0"):
        from_given({"tile": "4"})
