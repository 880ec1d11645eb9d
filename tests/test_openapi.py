"""The OpenAPI document and the app's routes describe the same API, and it is served."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from quart_trio import QuartTrio

from tests.helpers.server import Server, make_config
from vpiska.actors import EventSupervisor
from vpiska.app import Services, create_quart_app
from vpiska.http import websocket
from vpiska.http.openapi import DOCUMENT, UNDOCUMENTED
from vpiska.store import open_store

# Quart answers these for every route by itself; they are not operations of ours.
AUTOMATIC = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[QuartTrio]:
    config = make_config(tmp_path)
    async with open_store(config) as store:
        yield create_quart_app(Services.build(config, store, EventSupervisor(store, config)))


def routes(app: QuartTrio) -> set[tuple[str, str]]:
    """(METHOD, path) of every rule, in Werkzeug's syntax (`<media_id>`)."""
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            for method in (rule.methods or set()) - AUTOMATIC}


def operations() -> set[tuple[str, str]]:
    """(METHOD, path) of every documented operation, `{media_id}` written `<media_id>`."""
    return {(method.upper(), re.sub(r"\{(\w+)\}", r"<\1>", path))
            for path, item in DOCUMENT["paths"].items()
            for method in item if method in HTTP_METHODS}


def test_document_is_valid_openapi_3() -> None:
    validate(DOCUMENT)


async def test_every_route_is_documented_or_excluded_with_a_reason(app: QuartTrio) -> None:
    assert routes(app) - operations() - set(UNDOCUMENTED) == set()


async def test_every_documented_operation_is_served(app: QuartTrio) -> None:
    assert operations() - routes(app) == set()


async def test_exclusions_name_real_routes_only(app: QuartTrio) -> None:
    assert set(UNDOCUMENTED) <= routes(app)
    assert not set(UNDOCUMENTED) & operations()


def test_the_websocket_is_documented_as_one() -> None:
    """It is served in front of Quart (EventSocketEndpoint), so it has no rule to compare."""
    documented = {path for path, item in DOCUMENT["paths"].items()
                  if item.get("get", {}).get("x-websocket")}
    assert documented == {websocket.PATH}


async def test_plain_http_get_of_the_websocket_is_426(server: Server) -> None:
    response = await server.http.get(f"{websocket.PATH}?eventId=x")
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert response.content == b""


async def test_document_is_served_as_json(server: Server) -> None:
    response = await server.http.get("/swagger/doc.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == DOCUMENT


async def test_swagger_ui_and_its_assets_are_served_locally(server: Server) -> None:
    page = await server.http.get("/swagger/index.html")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="\.?/?([\w.-]+)"', page.text)
    assert "swagger-initializer.js" in assets
    assert "swagger-ui-bundle.js" in assets
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)  # nothing from a CDN
    for asset in assets:
        response = await server.http.get(f"/swagger/{asset}")
        assert response.status_code == 200, asset
        assert response.content, asset
    initializer = await server.http.get("/swagger/swagger-initializer.js")
    assert 'url: "doc.json"' in initializer.text


async def test_swagger_root_leads_to_the_ui(server: Server) -> None:
    response = await server.http.get("/swagger/")
    assert response.status_code == 302
    assert response.headers["location"] == "index.html"


async def test_only_the_ui_files_are_served(server: Server) -> None:
    for path in ("/swagger/swagger-ui.js.map", "/swagger/..%2Fopenapi.py", "/swagger/index.j2"):
        response = await server.http.get(path)
        assert response.status_code == 404, path
