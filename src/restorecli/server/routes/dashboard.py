"""The dashboard: its page at ``/`` and its files under ``/dashboard/`` (not in the API's schema)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _asset(name: str) -> Response:
    item = resources.files("restorecli.server") / "dashboard" / name
    if "/" in name or name.startswith(".") or not item.is_file():
        raise HTTPException(404, f"no dashboard file '{name[:80]}'")
    return Response(item.read_bytes(), media_type=_TYPES.get(Path(name).suffix, "application/octet-stream"),
                    headers={"Cache-Control": "no-cache"})


@router.get("/")
def index() -> Response:
    page = _asset("index.html")
    page.headers["Content-Security-Policy"] = _PAGE_POLICY
    return page


@router.get("/dashboard/{name}")
def dashboard_file(name: str) -> Response:
    return _asset(name)
