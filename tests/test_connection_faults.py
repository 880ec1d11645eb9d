"""A fault of one connection ends that connection only, and a connection asked to end, ends.

Every attack here once stopped the whole process: h11 or wsproto raised LocalProtocolError
(hypercorn asked them for a transition the client's bytes had made impossible), it escaped
hypercorn's connection task, and the server exited. Each runs on both write paths, a few times
at once (they are races), and the server must then still answer /healthz and serve a live
room. With the adapter the faults are gone at their root, so nothing is logged at error level
and the connection guard has nothing to catch; on stock hypercorn the guard ends the faulty
connection (hypercorn may still log its own half of the race at error level).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers.clients import Crowd, assert_still_serving, host_event, token_for
from tests.helpers.raw_http import DEADLINE, JSON, connection, first_bytes, read_to_end, request
from tests.helpers.raw_ws import RawSocket, masked_frame, resource, until_closed
from tests.helpers.server import (
    EVERY_WEBSOCKET_PATH,
    Server,
    make_config,
    port_of,
    stock_hypercorn_fails,
)
from vpiska.http.websocket import EventSession
from vpiska.server import serve
from vpiska.transport import connection_guard, direct_websocket

WS_UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
H2C_UPGRADE = b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABk\r\n"
READ = "read"  # a step: wait for the server's first bytes (or its close)
AT_ONCE = 6  # connections per attack, concurrently: the faults were races
PAST_SOCKET_BUFFERS = 4000  # 4 KB pieces: more than both kernels' socket buffers hold (16 MB)


ATTACKS = [
    pytest.param([request(headers=WS_UPGRADE), READ, b"x"], id="refused-upgrade-then-a-byte"),
    pytest.param([request(headers=WS_UPGRADE) + b"x"], id="refused-upgrade-and-a-byte-at-once"),
    pytest.param([request(headers=WS_UPGRADE), *[b"x"] * 20, READ],
                 id="refused-upgrade-then-bytes-during-the-answer"),
    pytest.param([request("/api/v1/websockets/event", headers=WS_UPGRADE), READ,
                  masked_frame(0x1, b"chatMessage/hi")], id="refused-event-socket-then-a-frame"),
    pytest.param([request("/api/v1/websockets/event", headers=WS_UPGRADE)
                  + masked_frame(0x1, b"chatMessage/hi")],
                 id="refused-event-socket-with-a-frame-at-once"),
    pytest.param([request() * 3, READ], id="pipelined-requests"),
    pytest.param([request() + request(headers=WS_UPGRADE) + b"xyz", READ],
                 id="pipelined-request-then-upgrade"),
    pytest.param([request(headers=WS_UPGRADE) + request(), READ],
                 id="pipelined-upgrade-then-request"),
    pytest.param([request(headers=WS_UPGRADE + b"Content-Length: 5\r\n", body=b"hello"), READ],
                 id="upgrade-with-a-body"),
    pytest.param([request(headers=WS_UPGRADE + b"Transfer-Encoding: chunked\r\n",
                          body=b"5\r\nhello\r\n0\r\n\r\n"), READ],
                 id="upgrade-with-a-chunked-body"),
    pytest.param([request(headers=WS_UPGRADE + b"Expect: 100-continue\r\n"), READ, b"x"],
                 id="upgrade-expecting-100-continue"),
    pytest.param([request("/api/v1/users/login", "POST", WS_UPGRADE + JSON
                          + b"Content-Length: 2\r\n", b"{}"), READ, b"x"],
                 id="upgrade-on-a-post"),
    pytest.param([request("/api/v1/users/login", "POST", b"Upgrade: foo/1\r\nConnection: Upgrade"
                          b"\r\nContent-Length: 2\r\n" + JSON, b"{}"), READ, b"x"],
                 id="other-upgrade-with-a-body"),
    pytest.param([request(headers=H2C_UPGRADE), READ, b"not http/2" * 10],
                 id="h2c-upgrade-then-garbage"),
    pytest.param([request(headers=b"Upgrade: h2c\r\nConnection: Upgrade\r\n"), READ, b"x"],
                 id="h2c-upgrade-without-settings"),
    pytest.param([request(headers=H2C_UPGRADE + b"Expect: 100-continue\r\n"), READ, b"x"],
                 id="h2c-upgrade-expecting-100-continue"),
    pytest.param([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0" * 30, READ],
                 id="http2-preface-then-garbage"),
    pytest.param([request("/api/v1/users/login", "POST", b"Expect: 100-continue\r\n" + JSON
                          + b"Content-Length: 2\r\n"), READ, b"{}", READ],
                 id="expect-100-continue"),
]


@EVERY_WEBSOCKET_PATH
@pytest.mark.parametrize("steps", ATTACKS)
async def test_attack_ends_only_its_connection(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture, steps: list[bytes | str]
) -> None:
    with caplog.at_level(logging.INFO):
        async with trio.open_nursery() as nursery:
            for _ in range(AT_ONCE):
                nursery.start_soon(attack, port_of(server), steps)
        await assert_still_serving(server, crowd)
    assert_no_fault_logged(server, caplog)


async def attack(port: int, steps: list[bytes | str]) -> None:
    async with connection(port) as stream:
        for step in steps:
            if step == READ:
                await first_bytes(stream)
            else:
                assert isinstance(step, bytes)
                try:
                    await stream.send_all(step)
                except trio.BrokenResourceError:
                    return  # the server ended the connection: the outcome we want


def assert_no_fault_logged(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """With the adapter: no error, no traceback, nothing for the guard. On stock hypercorn the
    guard may have had to step in; it logs a warning with the cause, never a traceback."""
    guarded = [r for r in caplog.records if r.name == connection_guard.__name__]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in guarded)
    if server.config.hypercorn_adapter:
        assert guarded == []
        faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert faults == []


@EVERY_WEBSOCKET_PATH
async def test_first_frame_in_the_handshake_packet_is_served(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture
) -> None:
    """A client writing its first frame without waiting for the 101 gets it served (with the
    adapter; stock hypercorn answers 400, accepts, or leaves the connection hanging, depending
    on the race, so there the client only checks that the server lives on)."""
    _, event_id = await host_event(server)
    with caplog.at_level(logging.INFO):
        async def eager_member() -> None:
            _, token = await token_for(server)
            async with connection(port_of(server)) as stream:
                await stream.send_all(request(resource(server, token, event_id),
                                              headers=WS_UPGRADE)
                                      + masked_frame(0x1, b"chatMessage/eager"))
                if server.config.hypercorn_adapter:
                    answer = await read_to_first_chat(stream)
                    assert answer.startswith(b"HTTP/1.1 101 ")
                    assert b'"message":"eager"' in answer

        async with trio.open_nursery() as nursery:
            for _ in range(AT_ONCE):
                nursery.start_soon(eager_member)
        await assert_still_serving(server, crowd)
    assert_no_fault_logged(server, caplog)


async def read_to_first_chat(stream: trio.SocketStream) -> bytes:
    """Bytes until one holds a chat line or the server closes."""
    received = b""
    with trio.fail_after(DEADLINE):
        while b"chatMessage/" not in received:
            chunk = await first_bytes(stream)
            if not chunk:
                break
            received += chunk
    return received


@stock_hypercorn_fails(
    "frames for a WebSocket app that has closed are queued for it, unread, and the socket's "
    "reader waits on the full queue: the connection is never closed", every_run=False)
@pytest.mark.parametrize(
    "config_overrides", [{"chat_rate_per_second": 1, "chat_burst": 2}], ids=["tight-chat"])
async def test_frames_racing_the_servers_close_do_not_hold_the_connection(
    server: Server, crowd: Crowd
) -> None:
    """A flooding member is closed (4009) while its frames keep coming: the connection ends.
    The frames the server had no reader for any more once held it open forever."""
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    flood = b"".join(masked_frame(0x1, b"chatMessage/%d" % i) for i in range(2000))
    for _ in range(3):
        raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
        async with raw.stream:
            with trio.move_on_after(DEADLINE):  # the server may stop reading: that is fine
                try:
                    await raw.stream.send_all(flood)
                except trio.BrokenResourceError:
                    pass
            with trio.fail_after(DEADLINE):
                assert await raw.close_code() == 4009
                await until_closed(raw)  # never answering the close: the server ends it anyway
    await assert_still_serving(server, crowd)


@stock_hypercorn_fails(
    "a WebSocket the server closes while its peer still sends is closed with bytes unread: the "
    "kernel answers with a reset, and the peer loses the close frame")
@pytest.mark.parametrize(
    "config_overrides", [{"chat_rate_per_second": 1, "chat_burst": 2}], ids=["tight-chat"])
async def test_a_peer_still_sending_reads_its_close_then_a_clean_end(server: Server) -> None:
    """A flooder closed with 4009 while megabytes of its frames are still coming gets to send
    them all, and reads the close frame, then the end of the stream. The server once closed its
    socket with those bytes unread, which answers with a TCP reset: the client's send failed
    (EPIPE) before it had read the close, and trio-websocket reported 1006 instead of 4009."""
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    flood = (b"".join(masked_frame(0x1, b"chatMessage/%d" % i) for i in range(20))
             + masked_frame(0x1, b"chatMessage/" + b"x" * 4000) * PAST_SOCKET_BUFFERS)
    raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
    async with raw.stream, trio.open_nursery() as nursery:
        nursery.start_soon(raw.stream.send_all, flood)  # a reset fails the test here
        with trio.fail_after(DEADLINE):
            assert await raw.close_code() == 4009
            assert await read_to_clean_end(raw.stream) == b""


@stock_hypercorn_fails(
    "an answer with `Connection: close` to a request whose body is still coming is closed "
    "with bytes unread: the kernel answers with a reset, and the client loses the answer")
async def test_a_refused_body_still_coming_gets_its_answer_then_a_clean_end(
    server: Server
) -> None:
    """The same for HTTP: the client of an answer with `Connection: close` to a request whose
    body the server did not read gets to send that body, then reads the answer and the end of
    the stream; a reset made the send fail before the answer was read."""
    body = b"{" * 4000 * PAST_SOCKET_BUFFERS
    head = request("/api/v1/users/update", "POST", JSON + b"Content-Length: %d\r\n" % len(body))
    async with connection(port_of(server)) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, head + body)
        with trio.fail_after(DEADLINE):
            answer = await read_to_clean_end(stream)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"isSuccess":false' in answer


async def read_to_clean_end(stream: trio.SocketStream) -> bytes:
    """What is left to read up to the end of the stream."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


@EVERY_WEBSOCKET_PATH
async def test_bytes_after_the_clients_close_end_the_connection(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
    async with raw.stream:
        await raw.stream.send_all(masked_frame(0x8, struct.pack("!H", 1000))
                                  + masked_frame(0x1, b"chatMessage/late") * 50)
        with trio.fail_after(DEADLINE):
            assert await raw.close_code() == 1000
            await until_closed(raw)
    await assert_still_serving(server, crowd)


@EVERY_WEBSOCKET_PATH
async def test_guard_ends_a_failing_connection_and_logs_it_once(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a connection task raises: that connection ends, one warning says why, and
    the server goes on. (A fault is planted in hypercorn's request handling for one path.)"""
    import hypercorn.protocol.h11

    create_stream = hypercorn.protocol.h11.H11Protocol._create_stream

    async def planted(self: Any, request: Any) -> None:
        if request.target == b"/planted-fault":
            raise RuntimeError("planted fault")
        await create_stream(self, request)

    monkeypatch.setattr(hypercorn.protocol.h11.H11Protocol, "_create_stream", planted)
    with caplog.at_level(logging.INFO):
        async with connection(port_of(server)) as stream:
            await stream.send_all(request("/planted-fault"))
            assert await read_to_end(stream) == b""
        await assert_still_serving(server, crowd)
    guarded = [r for r in caplog.records if r.name == connection_guard.__name__]
    assert [(r.levelno, r.message) for r in guarded] == [(logging.WARNING, "connection failed")]
    # The ignores: logging's `extra=` fields, which LogRecord's type does not declare.
    assert guarded[0].cause == "RuntimeError: planted fault"  # type: ignore[attr-defined]
    assert guarded[0].where.startswith("hypercorn/protocol/h11.py")  # type: ignore[attr-defined]
    assert not any(r.levelno >= logging.ERROR or r.exc_info for r in caplog.records)


async def test_guard_lets_cancellation_and_interrupts_through() -> None:
    """Only Exceptions are a connection's faults; Cancelled, KeyboardInterrupt and SystemExit
    propagate, also from inside an exception group next to a fault."""
    fault = ValueError("fault")
    interrupt = KeyboardInterrupt()
    assert connection_guard.split_faults(fault) == ([fault], None)
    assert connection_guard.split_faults(interrupt) == ([], interrupt)

    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as cancelled:
            faults, rest = connection_guard.split_faults(
                BaseExceptionGroup("connection", [fault, ExceptionGroup("inner", [fault]),
                                                  cancelled, SystemExit(1)]))
            assert faults == [fault, fault]
            assert isinstance(rest, BaseExceptionGroup)
            assert [type(e) for e in rest.exceptions] == [trio.Cancelled, SystemExit]
            raise
    assert scope.cancelled_caught


# Request bodies: a connection answered `Connection: close` closes, and a body must arrive
# within BODY_TIMEOUT_SECONDS. Both are the transport's (stock hypercorn keeps such connections
# open until its read timeout, forty seconds here, or forever for a trickle: past DEADLINE).

BODY_TIMEOUT = 1.0
SHORT_BODY_TIMEOUT = pytest.mark.parametrize(
    "config_overrides", [{"body_timeout_seconds": BODY_TIMEOUT}], ids=["body-timeout-1s"])


CANCELLED_CLOSE = (
    "the close a `Connection: close` answer asks for, before a body that does not end, runs in "
    "the app task, which is being cancelled: the close is cancelled too, and the socket stays "
    "open until the read timeout")
# A route Quart serves (users/create and users/login are answered in front of it, in their own
# task: vpiska/http/json_routes.py).
HUGE_BODY = request("/api/v1/events/members", "POST", JSON + b"Content-Length: 1000000000000\r\n")


@stock_hypercorn_fails(CANCELLED_CLOSE)
async def test_connection_close_answer_closes_the_connection(server: Server) -> None:
    await answered_then_closed(server, HUGE_BODY, b"")


@stock_hypercorn_fails(CANCELLED_CLOSE, every_run=False)
async def test_connection_close_answer_closes_the_connection_while_the_body_comes(
    server: Server
) -> None:
    await answered_then_closed(server, HUGE_BODY, b"{" * 1_000_000)


@EVERY_WEBSOCKET_PATH
@pytest.mark.parametrize(
    ("head", "body"),
    [
        pytest.param(request("/api/v1/users/update", "POST", JSON + b"Content-Length: 500000\r\n"),
                     b"{" * 500_000, id="unauthorized-with-its-body"),
        pytest.param(request("/api/v1/users/media/set", "POST",
                             b"Content-Type: multipart/form-data; boundary=x\r\n"
                             b"Transfer-Encoding: chunked\r\n"), b"10000\r\n" + b"x" * 65536,
                     id="unauthorized-chunked-upload"),
    ],
)
async def test_connection_close_answer_to_a_refused_body_closes_the_connection(
    server: Server, head: bytes, body: bytes
) -> None:
    await answered_then_closed(server, head, body)


async def answered_then_closed(server: Server, head: bytes, body: bytes) -> None:
    """The request is answered with `Connection: close`, and the connection closes at once (not
    after the read timeout), while the client may still be sending the body."""
    async with connection(port_of(server)) as stream:
        await stream.send_all(head)

        async def send_body() -> None:
            try:
                await stream.send_all(body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # closed while sending: what a refused body gets

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_body)
            answer = await read_to_end(stream)  # the close comes at once, not in 40 s
            nursery.cancel_scope.cancel()
    head_lines = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert head_lines[0].startswith(b"http/1.1 200")
    assert b"connection: close" in head_lines
    assert b'"isSuccess":false' in answer


@stock_hypercorn_fails(
    "a request body has no deadline: read_timeout bounds each read, so a body that stalls "
    "holds its connection until then, and one sent a byte at a time forever")
@SHORT_BODY_TIMEOUT
@pytest.mark.parametrize("trickle", [True, False], ids=["a-byte-at-a-time", "stalled"])
async def test_body_that_does_not_arrive_in_time_closes_the_connection(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture, trickle: bool
) -> None:
    head = request("/api/v1/users/login", "POST", JSON + b"Content-Length: 1000\r\n")
    with caplog.at_level(logging.INFO):
        async with connection(port_of(server)) as stream:
            await stream.send_all(head)
            started = trio.current_time()

            async def trickle_body() -> None:
                try:
                    for _ in range(1000):
                        await stream.send_all(b" ")
                        await trio.sleep(BODY_TIMEOUT / 10)  # the client's pace, not a wait
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                if trickle:
                    nursery.start_soon(trickle_body)
                assert await read_to_end(stream) == b""  # closed, and no answer was due
                nursery.cancel_scope.cancel()
            assert trio.current_time() - started >= BODY_TIMEOUT * 0.9
        await assert_still_serving(server, crowd)
    assert any(r.message.startswith("request body too slow") for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR or r.exc_info for r in caplog.records)


@EVERY_WEBSOCKET_PATH
@SHORT_BODY_TIMEOUT
async def test_body_arriving_in_parts_within_the_timeout_is_served(server: Server) -> None:
    body = b'{"phone": "9001234567", "password": "secret1"}'
    async with connection(port_of(server)) as stream:
        await stream.send_all(request("/api/v1/users/login", "POST",
                                      JSON + b"Content-Length: %d\r\n" % len(body)))
        for part in (body[:10], body[10:20], body[20:]):
            await trio.sleep(BODY_TIMEOUT / 10)  # the client's pace, not a wait
            await stream.send_all(part)
        answer = await first_bytes(stream)
    assert answer.startswith(b"HTTP/1.1 200")


@asynccontextmanager
async def shut_down_at_once(tmp_path: Path) -> AsyncIterator[int]:
    """A server (its port) that must stop at once when the block ends, not after its 60 s
    grace: no request or connection of the block may be left waiting."""
    config = make_config(tmp_path, body_timeout_seconds=BODY_TIMEOUT, shutdown_grace_seconds=60)
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(config, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        yield int((await nursery.start(run))[0].rsplit(":", 1)[1])
        stop.set()
        with trio.fail_after(DEADLINE):
            await stopped.wait()


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(b"zz\r\n", id="malformed-chunk"),
        pytest.param(b"", id="client-gone"),
        pytest.param(None, id="body-timeout"),
    ],
)
async def test_request_whose_connection_ends_mid_body_ends_too(
    tmp_path: Path, ending: bytes | None
) -> None:
    """The handler reading a body learns that its connection ended, however it ended. (The
    reader that saw the malformed chunk once cancelled itself before telling the handler.)"""
    async with shut_down_at_once(tmp_path) as port, connection(port) as stream:
        await stream.send_all(request("/api/v1/users/login", "POST",
                                      JSON + b"Transfer-Encoding: chunked\r\n",
                                      b"5\r\n{\"pho\r\n"))
        if ending:
            await stream.send_all(ending)
        if ending != b"":
            await read_to_end(stream)  # the server ends it: an error answer, or no answer


async def test_connection_reset_during_pipelined_answers_ends(tmp_path: Path) -> None:
    """A client that resets its connection while answers to its pipelined requests are being
    written: the failed write closes the connection. (It once only told the protocol, and the
    reader waited forever for the next request's turn.)"""
    async with shut_down_at_once(tmp_path) as port:
        for _ in range(AT_ONCE):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                              struct.pack("ii", 1, 0))  # close with a reset
            await stream.send_all(request("/swagger/doc.json") * 3)
            await first_bytes(stream)
            await stream.aclose()


async def test_a_fault_in_a_direct_sockets_writer_ends_that_connection_only(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct WebSocket's writer runs beside its connection, in the nursery of every
    connection: whatever it raises ends its own connection, with one warning, and the server
    goes on. (A member joining with `since` starts its writer at once.)"""
    async def planted(self: EventSession) -> None:
        raise RuntimeError("planted fault")

    _, event_id = await host_event(server)
    _, token = await token_for(server)
    with caplog.at_level(logging.INFO):
        monkeypatch.setattr(EventSession, "_write", planted)
        raw = await RawSocket.connect(port_of(server),
                                      resource(server, token, event_id, since="0"))
        async with raw.stream:
            await read_to_end(raw.stream)  # the server ends it
        monkeypatch.undo()
        await assert_still_serving(server, crowd)
    faults = [r for r in caplog.records if r.name == direct_websocket.__name__]
    assert [(r.levelno, r.message) for r in faults] == [(logging.WARNING, "connection failed")]
    assert faults[0].cause == "RuntimeError: planted fault"  # type: ignore[attr-defined]
    assert not any(r.levelno >= logging.ERROR or r.exc_info for r in caplog.records)
