"""Help written the way the README writes commands: ``INPUT...``, ``NAME|PATH``, ``auto|0|N``, options in groups.

Typer's own help shows an argument's Python type (``inputs... <list[str]>``) and a required argument in braces
(``{inputs}...``), and groups options by their ``rich_help_panel`` only in its rich layout, which restorecli turns
off (``rich_markup_mode=None`` keeps help text as written). Every restorecli command is built with ``Command``, so
that its arguments read as their metavars do and its options stand under their group's heading. Recent Typer
versions carry a private copy of click, so this builds on Typer's classes only."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand

OPTIONS = "Options"  # the heading of the options that belong to no group
# Options whose repeats make one value, joined with this: ``--model A --model B`` is the chain ``A,B``
JOINED = {"model": ","}


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)

    def _rich_display_name(self) -> str:
        return self.display_name_raw if self.metavar else self.name.upper() + ("..." if self.nargs != 1 else "")


class Command(TyperCommand):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:  # Typer builds its own argument objects; these change only how help shows them
            if type(param) is TyperArgument:
                param.__class__ = _Argument

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Join the repeats of a ``JOINED`` option into one value (``--model A --chain B`` is ``--model A,B``), and
        refuse any other option that takes one value given more than once, which the parser would silently settle
        with the last; options that take several (``--allow-model``) are not counted."""
        params = self.get_params(ctx)
        args = _joined(params, args)
        repeated = _repeated(params, args)
        if repeated:
            param, values = repeated
            raise typer.BadParameter(f"given {len(values)} times ({', '.join(values)}); it takes one value",
                                     ctx=ctx, param=param)
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                if param.nargs != 1 and not name.endswith("..."):
                    name += "..."
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Arguments, then the options of no group, then each group under its heading, in the order declared."""
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], OPTIONS: []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            heading = "Arguments" if isinstance(param, TyperArgument) else getattr(param, "rich_help_panel", None)
            sections.setdefault(heading or OPTIONS, []).append(record)
        for heading, records in sections.items():
            if records:
                with formatter.section(heading):
                    formatter.write_dl(records)


def _repeated(params: list[Any], args: list[str]) -> tuple[Any, list[str]] | None:
    """The first single-valued option that ``args`` give twice or more, with its values; None where none is."""
    given: dict[int, tuple[Any, list[str]]] = {}
    for param, value, _start, _stop in _option_values(params, args):
        if not getattr(param, "multiple", False):
            given.setdefault(id(param), (param, []))[1].append(value)
    return next(((param, values) for param, values in given.values() if len(values) > 1), None)


def _joined(params: list[Any], args: list[str]) -> list[str]:
    """``args`` with the values of each ``JOINED`` option given more than once joined into its first place
    (``--model A -x --model B`` -> ``--model A,B -x``)."""
    for name, separator in JOINED.items():
        given = [entry for entry in _option_values(params, args)
                 if entry[0].name == name and not getattr(entry[0], "multiple", False)]
        if len(given) < 2:
            continue
        dropped = {index for _param, _value, start, stop in given for index in range(start, stop)}
        kept = [arg for index, arg in enumerate(args) if index not in dropped]
        first = given[0][2]  # nothing before it is dropped
        args = [*kept[:first], given[0][0].opts[0], separator.join(value for _p, value, _s, _e in given),
                *kept[first:]]
    return args


def _option_values(params: list[Any], args: list[str]) -> list[tuple[Any, str, int, int]]:
    """Each single-valued option ``args`` give, in order: (its parameter, the value, where its tokens start and
    stop in ``args``); the arguments after ``--`` are not read."""
    takes_value: dict[str, Any] = {}  # every option string that is followed by a value -> its parameter
    for param in params:
        if not isinstance(param, TyperArgument) and not getattr(param, "is_flag", False) and param.nargs == 1:
            for name in (*param.opts, *param.secondary_opts):
                takes_value[name] = param
    given: list[tuple[Any, str, int, int]] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--":
            break
        name, value = token, None
        if token.startswith("--") and "=" in token:
            name, value = token.split("=", 1)
        elif token.startswith("-") and not token.startswith("--") and len(token) > 2 and token[:2] in takes_value:
            name, value = token[:2], token[2:]
        param = takes_value.get(name)
        if param is None:
            index += 1
            continue
        start = index
        if value is None:
            value = args[index + 1] if index + 1 < len(args) else ""
            index += 1
        index += 1
        given.append((param, value, start, index))
    return given
