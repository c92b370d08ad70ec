"""Help written the way the README writes commands: ``INPUT...``, ``NAME|PATH``, ``auto|0|N``, options in groups.

Typer's own help shows an argument's Python type (``inputs... <list[str]>``) and a required argument in braces
(``{inputs}...``), and groups options by their ``rich_help_panel`` only in its rich layout, which restorecli turns
off (``rich_markup_mode=None`` keeps help text as written). Every restorecli command is built with ``Command``, so
that its arguments read as their metavars do and its options stand under their group's heading. Recent Typer
versions carry a private copy of click, so this builds on Typer's classes only."""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand

OPTIONS = "Options"  # the heading of the options that belong to no group


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
