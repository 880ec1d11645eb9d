"""Which upgrade requests direct_websocket.py serves itself, and which it leaves to hypercorn.

It takes only whole, ordinary requests for its paths; everything else must reach h11 untouched
(tests/test_websocket.py checks that both kinds are served alike).
"""

from __future__ import annotations

from typing import Any

import pytest

from vpiska.transport import upgrade
from vpiska.transport.upgrade import parse_upgrade

PATHS = frozenset({b"/api/v1/websockets/event"})
MAX_HEAD = 16 * 1024


def head(*, line: bytes = b"GET /api/v1/websockets/event?eventId=e&accessToken=t HTTP/1.1",
         headers: list[bytes] | None = None) -> bytes:
    lines = headers if headers is not None else [
        b"Host: 127.0.0.1:5000", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]
    return b"\r\n".join([line, *lines]) + b"\r\n\r\n"


def ordinary_with(*extra: bytes) -> bytes:
    return head(headers=[b"Host: 127.0.0.1:5000", b"Upgrade: websocket",
                         b"Connection: Upgrade", b"Sec-WebSocket-Key: a2V5",
                         b"Sec-WebSocket-Version: 13", *extra])


def test_an_ordinary_upgrade_is_taken_with_what_follows_it() -> None:
    frame = b"\x81\x85abcd" + bytes(5)
    parsed = parse_upgrade(head() + frame, PATHS, MAX_HEAD)
    assert parsed is not None
    upgrade, rest = parsed
    assert upgrade.path == b"/api/v1/websockets/event"
    assert upgrade.query_string == b"eventId=e&accessToken=t"
    assert upgrade.key == b"dGhlIHNhbXBsZSBub25jZQ=="
    assert upgrade.headers[0] == (b"host", b"127.0.0.1:5000")  # names lowercased, as h11 does
    assert upgrade.subprotocols == []
    assert rest == frame


@pytest.mark.parametrize("extra", [
    b"Connection: keep-alive, Upgrade",  # a second Connection header, with the token in a list
    b"X-Request-Id:    padded   ",
    b"Sec-WebSocket-Protocol: chat, superchat",
    b"Sec-WebSocket-Extensions: permessage-deflate",  # taken; never offered back
])
def test_ordinary_variations_are_taken(extra: bytes) -> None:
    parsed = parse_upgrade(ordinary_with(extra), PATHS, MAX_HEAD)
    assert parsed is not None
    upgrade, _ = parsed
    if extra.startswith(b"X-Request-Id"):
        assert (b"x-request-id", b"padded") in upgrade.headers
    if extra.startswith(b"Sec-WebSocket-Protocol"):
        assert upgrade.subprotocols == ["chat", "superchat"]


def test_upgrade_and_token_values_are_case_insensitive() -> None:
    request = head(headers=[b"host: x", b"UPGRADE: WebSocket", b"connection: UPGRADE",
                            b"sec-websocket-key: a2V5", b"sec-websocket-version: 13"])
    assert parse_upgrade(request, PATHS, MAX_HEAD) is not None


@pytest.mark.parametrize("request_bytes", [
    pytest.param(head()[:-2], id="head-not-complete"),
    pytest.param(head(line=b"GET /api/v1/users/login HTTP/1.1"), id="another-path"),
    pytest.param(head(line=b"GET /api/v1/websockets/%65vent HTTP/1.1"), id="escaped-path"),
    pytest.param(head(line=b"POST /api/v1/websockets/event HTTP/1.1"), id="post"),
    pytest.param(head(line=b"GET /api/v1/websockets/event HTTP/1.0"), id="http-1.0"),
    pytest.param(head(line=b"GET  /api/v1/websockets/event HTTP/1.1"), id="two-spaces"),
    pytest.param(head(line=b"GET /api/v1/websockets/event\x00 HTTP/1.1"), id="nul-in-target"),
    pytest.param(ordinary_with(b"Host: second"), id="two-hosts"),
    pytest.param(head(headers=[b"Upgrade: websocket", b"Connection: Upgrade",
                               b"Sec-WebSocket-Key: a2V5", b"Sec-WebSocket-Version: 13"]),
                 id="no-host"),
    pytest.param(head(headers=[b"Host: x", b"Upgrade: websocket", b"Connection: Upgrade",
                               b"Sec-WebSocket-Version: 13"]), id="no-key"),
    pytest.param(head(headers=[b"Host: x", b"Upgrade: websocket", b"Connection: Upgrade",
                               b"Sec-WebSocket-Key: a2V5", b"Sec-WebSocket-Version: 8"]),
                 id="version-8"),
    pytest.param(head(headers=[b"Host: x", b"Upgrade: h2c", b"Connection: Upgrade",
                               b"Sec-WebSocket-Key: a2V5", b"Sec-WebSocket-Version: 13"]),
                 id="upgrade-h2c"),
    pytest.param(head(headers=[b"Host: x", b"Upgrade: websocket", b"Connection: keep-alive",
                               b"Sec-WebSocket-Key: a2V5", b"Sec-WebSocket-Version: 13"]),
                 id="connection-without-upgrade"),
    pytest.param(ordinary_with(b"Content-Length: 0"), id="content-length"),
    pytest.param(ordinary_with(b"Transfer-Encoding: chunked"), id="chunked"),
    pytest.param(ordinary_with(b"Expect: 100-continue"), id="expect"),
    pytest.param(ordinary_with(b"X-Folded: a", b" b"), id="obs-fold"),
    pytest.param(ordinary_with(b"X-Space : a"), id="space-before-colon"),
    pytest.param(ordinary_with(b"X-Control: a\x01b"), id="control-character"),
    pytest.param(ordinary_with(b"no colon here"), id="not-a-header"),
    pytest.param(ordinary_with(b"X-Big: " + b"x" * MAX_HEAD), id="head-too-long"),
])
def test_anything_else_is_left_to_hypercorn(request_bytes: bytes) -> None:
    assert parse_upgrade(request_bytes, PATHS, MAX_HEAD) is None


@pytest.mark.parametrize("line", [b"X: " + b"a" * 15000 + b"\x01", b"a" * 16000])
def test_a_long_bad_line_costs_one_pass(line: bytes) -> None:
    """Each line is matched where it starts, never searched for: a search tried every offset of
    a bad line again, ~1.5 s of CPU for one 16 KiB request. Counted, not timed: the header
    pattern may be tried once per line."""
    calls = 0
    pattern = upgrade._HEADER_LINE

    class Counting:
        def match(self, *args: Any) -> Any:
            nonlocal calls
            calls += 1
            return pattern.match(*args)

    request = head(headers=[b"Host: x", line])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(upgrade, "_HEADER_LINE", Counting())
        assert parse_upgrade(request, PATHS, MAX_HEAD) is None
    assert calls <= 2
