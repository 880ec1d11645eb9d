"""`/swagger/*`: the OpenAPI document and Swagger UI, as the older backend served them.

The UI's files come from the `swagger-ui-bundle` package and are served by us, never from a CDN,
so the docs work on a machine without internet. Only the bundle's own page is changed: its
initializer (which points at a demo API) is replaced by ours, pointing at `doc.json`.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, Response, redirect, send_file
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

from vpiska.http.openapi import DOCUMENT

# The bundle's files the page loads; the source maps and ES builds stay unserved.
ASSETS = frozenset({
    "index.html", "index.css", "swagger-ui.css", "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js", "favicon-16x16.png", "favicon-32x32.png",
})

INITIALIZER = """\
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "doc.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
  });
};
"""


def swagger_routes() -> Blueprint:
    routes = Blueprint("swagger", __name__, url_prefix="/swagger")
    document = json.dumps(DOCUMENT, ensure_ascii=False)

    @routes.get("/doc.json")
    async def doc() -> Any:
        return Response(document, content_type="application/json")

    @routes.get("/swagger-initializer.js")
    async def initializer() -> Any:
        return Response(INITIALIZER, content_type="text/javascript")

    @routes.get("/")
    async def home() -> Any:
        return redirect("index.html")

    @routes.get("/<asset>")
    async def asset(asset: str) -> Any:
        if asset not in ASSETS:
            raise NotFound()
        return await send_file(swagger_ui_path / asset)

    return routes
