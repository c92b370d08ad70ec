"""``/docs``: Swagger UI over the server's own OpenAPI document, served entirely from this machine.

FastAPI's own page loads Swagger UI from a CDN, so it is blank without internet and lets a third party's script
run on the server's origin. Here the page, its script and its stylesheet come from the ``fastapi-offline``
package (Swagger UI 5, MIT and Apache-2.0 licences in that package), the page's start-up code is a file of its
own, and a Content-Security-Policy lets the page load nothing from elsewhere and run no inline script.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from .guards import DOCS_CSP

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "favicon.png": "image/png"}
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/start.js"></script>
</body>
</html>
"""
# No validator badge (it would call validator.swagger.io); the document from this server
_START = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
});
"""


def add_docs_routes(app: FastAPI) -> None:
    """``GET /docs`` and its files under ``/docs/``; the app must be made with ``docs_url=None``."""
    headers = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(_PAGE.format(title=app.title), headers=headers)

    @app.get("/docs/{name}", include_in_schema=False)
    def docs_file(name: str) -> Response:
        if name == "start.js":
            return Response(_START, media_type="text/javascript; charset=utf-8", headers=headers)
        if name not in ASSETS:
            raise HTTPException(404, f"no docs file '{name[:80]}'")
        try:
            data = (resources.files("fastapi_offline") / "static" / name).read_bytes()
        except ModuleNotFoundError:
            raise HTTPException(404, "the docs' files are not installed: pip install 'restorecli[serve]'") from None
        return Response(data, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
