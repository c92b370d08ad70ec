"""A ``.env`` file, read as docker compose and python-dotenv read one, but strictly: a line that is not
``KEY=VALUE`` is an error naming the file and the line. Used by ``serve`` (``settings``, ``config``) and by
``restore --server`` (``client``); no FastAPI or pydantic here."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

__all__ = ["read_dotenv"]


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file, read by python-dotenv (``#`` comments, blank lines, an ``export``
    prefix, quotes, as docker compose reads them), with nothing interpolated. A missing file is empty. A line of
    another shape is an error naming the file and the line (python-dotenv would skip it)."""
    from dotenv.parser import parse_stream

    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as stream:
        for binding in parse_stream(stream):
            if binding.key is None and not binding.error:
                continue  # a comment or a blank line
            if binding.error or binding.value is None or not binding.key.replace("_", "").isalnum():
                text = binding.original.string
                line = binding.original.line + text[:len(text) - len(text.lstrip())].count("\n")
                raise UsageError(f"{path}, line {line}: not a KEY=VALUE line")
            values[binding.key] = binding.value
    return values
