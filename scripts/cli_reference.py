"""The command reference page, generated from the CLI itself: each command's ``--help`` exactly as the program
prints it, so the reference cannot drift from the code.

``mkdocs build`` calls it through ``on_files`` (mkdocs.yml lists this file under ``hooks``), so the page exists only in
the built site and is never edited or committed by hand. Run alone, it writes the page to a file to read it:

    python scripts/cli_reference.py [reference.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = "reference.md"
WIDTH = 100  # help is wrapped as on a terminal this wide

# Where each command's guide lives; a command missing here still gets its section, without a guide link.
_RESTORE, _JOBS = ("Restoring images", "restore.md"), ("The job folder", "jobs.md")
_SERVER, _WEIGHTS = ("The server", "server.md"), ("Models and weights", "weights.md")
GUIDES = {"restore": _RESTORE, "submit": _JOBS, "worker": _JOBS, "status": _JOBS, "cancel": _JOBS, "prune": _JOBS,
          "serve": _SERVER, "models": _WEIGHTS, "download-weights": _WEIGHTS, "evaluate": ("Evaluate", "evaluate.md"),
          "devices": ("Devices, precision and tiles", "tiling.md")}


def help_text(args: list[str]) -> str:
    """What ``restorecli ARGS --help`` prints, as plain text."""
    from typer.testing import CliRunner

    from restorecli.cli.app import app

    result = CliRunner().invoke(app, [*args, "--help"], prog_name="restorecli",
                                env={"COLUMNS": str(WIDTH), "TERM": "dumb", "NO_COLOR": "1"})
    if result.exit_code != 0:
        raise RuntimeError(f"restorecli {' '.join(args)} --help exited {result.exit_code}: {result.output}")
    return "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())


def command_names() -> list[str]:
    """The commands in the order ``restorecli --help`` lists them."""
    import typer.main

    from restorecli.cli.app import app

    return list(typer.main.get_command(app).commands)


def reference_page() -> str:
    lines = ["# Command reference", "",
             "Each command's `--help`, as `restorecli` prints it (`-h` is the same). This page is generated from "
             "the CLI when the site is built (`scripts/cli_reference.py`); the guides explain the options in depth.",
             "", "```text", help_text([]), "```", ""]
    for name in command_names():
        command_help = help_text([name])
        lines += [f"## restorecli {name}", ""]
        if name in GUIDES:
            title, page = GUIDES[name]
            lines += [f"Guide: [{title}]({page}).", ""]
        lines += ["```text", command_help, "```", ""]
    return "\n".join(lines)


def on_files(files, config):
    """mkdocs hook: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=reference_page()))
    return files


if __name__ == "__main__":
    page = reference_page()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(sys.argv[1]).write_text(page)
    else:
        sys.stdout.write(page)
