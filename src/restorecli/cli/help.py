"""Help written the way the README writes commands: ``INPUT...``, ``NAME|PATH``, ``auto|0|N``.

Typer's own help shows an argument's Python type (``inputs... <list[str]>``) and a required argument in braces
(``{inputs}...``). Every restorecli command is built with ``Command``, so that its arguments read as their
metavars do. Recent Typer versions carry a private copy of click, so this builds on Typer's classes only."""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand


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

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                if param.nargs != 1 and not name.endswith("..."):
                    name += "..."
                pieces.append(name if param.required else f"[{name}]")
        return pieces
