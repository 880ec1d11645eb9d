"""Malformed requests get a documented answer, are logged once, and leave the server healthy."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from tests.helpers.fakes import FaultyStore
from tests.helpers.request_bodies import Chunks
from tests.helpers.server import Server
from vpiska.store import Store

CREATE = "/api/v1/users/create"


@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        pytest.param(b"{not json", "application/json", "InternalError", id="not-json"),
        pytest.param(b'{"name": "\xff\xfe"}', "application/json", "InternalError",
                     id="invalid-utf8"),
        pytest.param(b"[1, 2]", "application/json", "InternalError", id="json-array"),
        pytest.param(b"", "application/json", "InternalError", id="empty-body"),
        pytest.param(b'{"name": "a"}', None, "invalid Content-Type", id="no-content-type"),
        pytest.param(b'{"name": "a"}', "text/plain", "invalid Content-Type", id="text-plain"),
    ],
)
async def test_unreadable_bodies(
    server: Server, content: bytes, content_type: str | None, code: str
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert await server.codes(CREATE, content=content, headers=headers) == [code]
    await server.sign_up()  # still healthy


async def test_charset_parameter_is_accepted(server: Server) -> None:
    body = b'{"name": "ann", "phone": "9001234567", "password": "secret1", ' \
           b'"confirmPassword": "secret1"}'
    await server.ok(CREATE, content=body,
                    headers={"Content-Type": "application/json; charset=utf-8"})


async def test_huge_json_body_is_refused(server: Server) -> None:
    huge = b'{"name": "' + b"a" * (server.config.max_json_bytes + 1) + b'"}'
    assert await server.codes(CREATE, content=huge,
                              headers={"Content-Type": "application/json"}) == ["PayloadTooLarge"]

    url = httpx.URL(f"{server.url}{CREATE}")
    chunked = httpx.Request(
        "POST", url, headers={"Host": url.netloc.decode(), "Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"},
        stream=Chunks([b'{"name": "', *[b"a" * 1024] * 100, b'"}']))
    response = await server.http.send(chunked)
    assert response.status_code == 200
    assert response.json() == {"isSuccess": False, "errors": [{"errorCode": "PayloadTooLarge"}],
                               "result": None}
    await server.sign_up()


async def test_unknown_route_is_404_envelope(server: Server) -> None:
    response = await server.http.get("/api/v1/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"isSuccess": False, "errors": [{"errorCode": "NotFound"}],
                               "result": None}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", CREATE), ("PUT", "/api/v1/users/login"), ("POST", "/api/v1/media/metadata/x"),
     ("PATCH", "/api/v1/media")],
)
async def test_wrong_method_is_invalid_method(server: Server, method: str, path: str) -> None:
    response = await server.http.request(method, path)
    assert response.status_code == 200
    assert response.json()["errors"] == [{"errorCode": "invalid method"}]


@pytest.fixture
def wrap_store() -> Callable[[Store], Store]:
    return FaultyStore


async def test_unexpected_error_is_logged_with_traceback_not_leaked(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(server.store, FaultyStore)
    server.store.fail("user_by_phone")
    with caplog.at_level(logging.ERROR):
        envelope = await server.call("/api/v1/users/login",
                                     {"phone": "9001234567", "password": "secret1"})
    assert envelope["errors"] == [{"errorCode": "InternalError"}]
    assert "injected failure" not in str(envelope)
    failures = [r for r in caplog.records if r.message == "request failed"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
