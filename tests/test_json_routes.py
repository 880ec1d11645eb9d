"""The JSON endpoints served in front of Quart (vpiska/http/json_routes.py) behave as Quart's do.

Each case is asked of the endpoints served in front of Quart (`events/get`, `events/range`,
`users/login`) and of `events/members` (served by Quart) where both can answer it, so the two
stay alike: envelopes, headers, request ids, `Connection: close` on an unread body, metrics and
the request trace.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.metrics import scrape, value
from tests.helpers.raw_http import JSON, connection, read_to_end, request
from tests.helpers.server import BOTH_WRITE_PATHS, Server, port_of

GET, RANGE, LOGIN = "/api/v1/events/get", "/api/v1/events/range", "/api/v1/users/login"
MEMBERS = "/api/v1/events/members"
IN_FRONT_AND_QUART = pytest.mark.parametrize("path", [GET, RANGE, LOGIN, MEMBERS])


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"trace_requests": True}


@IN_FRONT_AND_QUART
@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        pytest.param(b"{not json", "application/json", "InternalError", id="not-json"),
        pytest.param(b'{"a": "\xff\xfe"}', "application/json", "InternalError",
                     id="invalid-utf8"),
        pytest.param(b"[1, 2]", "application/json", "InternalError", id="json-array"),
        pytest.param(b"", "application/json", "InternalError", id="empty-body"),
        pytest.param(b"{}", None, "invalid Content-Type", id="no-content-type"),
        pytest.param(b"{}", "text/plain", "invalid Content-Type", id="text-plain"),
        pytest.param(b"{}", "Application/JSON; charset=utf-8", None, id="charset-accepted"),
    ],
)
async def test_unreadable_bodies(server: Server, path: str, content: bytes,
                                 content_type: str | None, code: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    codes = await server.codes(path, content=content, headers=headers)
    assert (codes[0] != "invalid Content-Type") if code is None else codes == [code]


@IN_FRONT_AND_QUART
async def test_huge_bodies_are_refused(server: Server, path: str) -> None:
    huge = b'{"a": "' + b"a" * (server.config.max_json_bytes + 1) + b'"}'
    assert await server.codes(path, content=huge,
                              headers={"Content-Type": "application/json"}) == ["PayloadTooLarge"]


async def test_answers_carry_the_same_headers(server: Server) -> None:
    in_front = await server.http.post(GET, json={"eventId": "nope"})
    quart = await server.http.post(MEMBERS, json={"eventId": "nope"})
    assert list(in_front.headers) == list(quart.headers)
    assert in_front.headers["content-type"] == "application/json"
    assert in_front.json() == {"isSuccess": False, "errors": [{"errorCode": "InvalidIdFormat"}],
                               "result": None}


@IN_FRONT_AND_QUART
async def test_request_id_is_kept_echoed_and_on_every_line(
    server: Server, path: str, log_lines: list[dict[str, Any]]
) -> None:
    response = await server.http.post(path, content=b"{not json", headers={
        "Content-Type": "application/json", "X-Request-Id": "edge-42.a:b"})
    assert response.headers["x-request-id"] == "edge-42.a:b"
    made = await server.http.post(path, json={}, headers={"X-Request-Id": "no spaces"})
    assert made.headers["x-request-id"] not in ("", "no spaces")
    events = [line["event"] for line in log_lines if line.get("request_id") == "edge-42.a:b"]
    assert events == ["request body is not JSON", "request refused", "http request",
                      "http response"]
    request_line, response_line = [line for line in log_lines
                                   if line["logger"] == "vpiska.http.tracing"][:2]
    assert request_line["method"] == "POST"
    assert request_line["path"] == path
    assert request_line["body"] == "(hidden)"
    assert response_line["status"] == 200
    assert response_line["body"]["errors"] == [{"errorCode": "InternalError"}]


async def test_trace_shows_the_json_body_with_secrets_hidden(
    server: Server, log_lines: list[dict[str, Any]]
) -> None:
    await server.codes(GET + "?accessToken=t&x=1", {"eventId": "nope", "password": "p"})
    request_line, response_line = [line for line in log_lines
                                   if line["logger"] == "vpiska.http.tracing"]
    assert request_line["query"] == {"accessToken": "(hidden)", "x": "1"}
    assert request_line["body"] == {"eventId": "nope", "password": "(hidden)"}
    assert request_line["content_type"] == "application/json"
    assert response_line["duration_ms"] > 0


async def test_requests_are_counted_under_their_route(server: Server) -> None:
    before = await scrape(server)
    await server.codes(GET, {"eventId": "nope"})
    await server.codes(GET, {})
    await server.http.get(GET)  # not one of ours: Quart's 'invalid method', no route matched
    after = await scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vpiska_http_requests_total", route=GET, method="POST", status="200") == 2
    assert grew("vpiska_http_request_duration_seconds_count", route=GET, method="POST") == 2
    assert grew("vpiska_http_requests_total", route="unmatched", method="GET", status="200") == 1


@BOTH_WRITE_PATHS
@IN_FRONT_AND_QUART
async def test_an_unread_body_is_answered_with_connection_close(server: Server,
                                                                 path: str) -> None:
    async with connection(port_of(server)) as stream:
        await stream.send_all(request(path, "POST", b"Content-Type: text/plain\r\n"
                                                    b"Content-Length: 100\r\n", b"x" * 100))
        if server.config.hypercorn_adapter:  # stock hypercorn keeps the connection open
            answer = await read_to_end(stream)
        else:
            answer = b""
            while b'"result":null}' not in answer:
                answer += await stream.receive_some(65536)
    head_lines = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert head_lines[0].startswith(b"http/1.1 200")
    assert b"connection: close" in head_lines
    assert b'"errorCode":"invalid Content-Type"' in answer


@IN_FRONT_AND_QUART
async def test_a_read_body_keeps_the_connection(server: Server, path: str) -> None:
    async with connection(port_of(server)) as stream:
        for _ in range(2):
            await stream.send_all(request(path, "POST", JSON + b"Content-Length: 2\r\n", b"{}"))
            answer = b""
            while b'"result":null}' not in answer:
                answer += await stream.receive_some(65536)
            assert b"connection: close" not in answer.lower()
