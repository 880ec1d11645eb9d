"""Structured logs: request ids on every line of a request, the request trace, and no secrets."""

from __future__ import annotations

import json
import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.helpers.process import vpiska_process
from tests.helpers.server import Server, make_config
from vpiska.logs import JsonFormatter
from vpiska.server import serve

# A WebSocket handshake's headers, for handshakes the server refuses (read as plain HTTP).
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"trace_requests": True}


def test_a_value_with_line_breaks_stays_on_one_line() -> None:
    record = logging.LogRecord("vpiska", logging.INFO, "", 0, "line\nnext\u2028sep\x85nel",
                               None, None)
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert json.loads(line)["event"] == "line\nnext\u2028sep\x85nel"


async def test_client_request_id_is_kept_and_echoed(server: Server) -> None:
    response = await server.http.get("/healthz", headers={"X-Request-Id": "edge-42.a:b"})
    assert response.headers["x-request-id"] == "edge-42.a:b"


@pytest.mark.parametrize(
    "offered", [None, b"", b"x" * 129, b"two words", b'quote"d', "ünï".encode()])
async def test_missing_or_unsafe_request_id_is_replaced(server: Server,
                                                        offered: bytes | None) -> None:
    headers = {} if offered is None else {b"X-Request-Id": offered}
    first = await server.http.get("/healthz", headers=headers)
    second = await server.http.get("/healthz", headers=headers)
    made = first.headers["x-request-id"]
    assert len(made) == 32
    assert made.encode() != offered
    assert made != second.headers["x-request-id"]


async def test_every_line_of_a_request_carries_its_id(
    server: Server, log_lines: list[dict[str, Any]]
) -> None:
    await server.http.post("/api/v1/users/login", content=b"{not json",
                           headers={"Content-Type": "application/json", "X-Request-Id": "r-1"})
    await server.http.get("/api/v1/media/metadata/nope", headers={"X-Request-Id": "r-2"})
    by_id: dict[str | None, list[str]] = {}
    for line in log_lines:
        by_id.setdefault(line.get("request_id"), []).append(line["event"])
    assert by_id["r-1"] == ["request body is not JSON", "request refused", "http request",
                            "http response"]
    assert by_id["r-2"] == ["request refused", "http request", "http response"]
    assert all(list(line)[:4] == ["time", "level", "logger", "event"] for line in log_lines)


async def test_trace_shows_json_bodies_and_hides_secrets(
    server: Server, log_lines: list[dict[str, Any]]
) -> None:
    await server.sign_up("ann", "9001234567", "secret1")
    request, response = [line for line in log_lines if line["logger"] == "vpiska.http.tracing"]
    assert request["event"] == "http request"
    assert request["method"] == "POST"
    assert request["body"] == {"name": "ann", "phone": "9001234567", "password": "(hidden)",
                               "confirmPassword": "(hidden)"}
    assert response["event"] == "http response"
    assert response["status"] == 200
    result = response["body"]["result"]
    assert result["name"] == "ann"
    assert result["accessToken"] == "(hidden)"
    assert response["duration_ms"] > 0


async def test_websocket_handshake_is_named_and_traced(
    server: Server, log_lines: list[dict[str, Any]]
) -> None:
    refused = await server.http.get(
        "/api/v1/websockets/event?accessToken=bad.token.here&eventId=x",
        headers={**UPGRADE, "X-Request-Id": "ws-7"})
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "ws-7"
    traced = [line for line in log_lines if line.get("request_id") == "ws-7"]
    assert [line["event"] for line in traced] == ["websocket handshake"]
    assert traced[0]["query"] == {"accessToken": "(hidden)", "eventId": "x"}
    assert traced[0]["status"] == 401


async def test_no_trace_lines_unless_asked(
    nursery: trio.Nursery, tmp_path: Path, log_lines: list[dict[str, Any]]
) -> None:
    stop = trio.Event()
    binds = await nursery.start(partial(serve, make_config(tmp_path), shutdown_trigger=stop.wait))
    async with httpx.AsyncClient(base_url=binds[0]) as http:
        await http.get("/healthz")
    stop.set()
    assert not [line for line in log_lines if line["logger"] == "vpiska.http.tracing"]


async def test_secrets_and_file_bytes_never_reach_the_log(tmp_path: Path) -> None:
    """Every way a password, a token or a file's bytes reaches the server, with tracing on and
    debug logging, against the real process and its stdout."""
    secrets = ["pw-first-3141", "pw-second-2718", "pw-wrong-1618", "pw-broken-json-1414",
               "FILE-BYTES-MARKER-577", "bogus-token-header-9", "bogus-token-query-8"]
    async with vpiska_process(tmp_path, LOGGING_TRACE_REQUESTS="true",
                              LOG_LEVEL="DEBUG") as served:
        try:
            tokens = await use_every_secret(served.url, secrets)
        finally:
            served.process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await served.exit_code()
    text = served.text()
    lines = [json.loads(line) for line in text.split("\n") if line]
    assert any(line["event"] == "http response" and line["body"] == "(hidden)"
               for line in lines)  # the download was traced, without its bytes
    for secret in secrets + tokens + [token.rsplit(".", 1)[1] for token in tokens]:
        assert secret not in text, secret


async def use_every_secret(url: str, secrets: list[str]) -> list[str]:
    """Send each of `secrets` where it belongs; return the tokens the server issued."""
    first, second, wrong, broken, file_bytes, bad_header, bad_query = secrets
    json_type = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url) as http:
        async def call(path: str, body: Any, token: str = "") -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return dict((await http.post(path, json=body, headers=headers)).json())

        signed_up = await call("/api/v1/users/create", {
            "name": "ann", "phone": "9001234567", "password": first, "confirmPassword": first})
        token = signed_up["result"]["accessToken"]
        await call("/api/v1/users/login", {"phone": "9001234567", "password": wrong})
        changed = await call("/api/v1/users/password/change",
                             {"password": second, "confirmPassword": second}, token)
        token2 = changed["result"]["accessToken"]
        await call("/api/v1/users/password/change",
                   {"password": second, "confirmPassword": first}, token2)  # mismatch
        await http.post("/api/v1/users/login", headers=json_type,
                        content=f'{{"phone": "9001234567", "password": "{broken}"'.encode())
        await call("/api/v1/users/update", {"name": "anna"}, bad_header)
        avatar = await http.post(
            "/api/v1/users/media/set", headers={"Authorization": f"Bearer {token2}"},
            files={"image": ("a.json", f'{{"x": "{file_bytes}"}}', "application/json")})
        token3 = avatar.json()["result"]["accessToken"]
        image_id = avatar.json()["result"]["imageId"]
        download = await http.get(f"/api/v1/media/{image_id}")
        assert file_bytes.encode() in download.content
        event = await call("/api/v1/events/create", {
            "name": "party", "address": "street", "coordinates": {"x": 1, "y": 2}}, token3)
        socket = url.replace("http://", "ws://") + "/api/v1/websockets/event"
        async with open_websocket_url(
                f"{socket}?accessToken={token3}&eventId={event['result']['id']}") as ws:
            await ws.get_message()  # the join's eventUpdated
        refused = await http.get(f"/api/v1/websockets/event?accessToken={bad_query}&eventId=x",
                                 headers=UPGRADE)
        assert refused.status_code == 401
    return [token, token2, token3]

