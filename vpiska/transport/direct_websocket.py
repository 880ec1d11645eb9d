"""WebSockets served straight off their sockets, below hypercorn.

Why: through hypercorn a WebSocket handshake cost ~0.67 ms of the core before the app saw it:
h11 parsing the request, a protocol, a stream and a handshake object, a task group, an app task
and its inbox, h11 again for the answer. trio alone answers one in ~0.17 ms. For a party's
crowd arriving at once that was the difference between a third and two thirds of Node's `ws`.

What: a connection whose first read holds a whole, ordinary upgrade request (upgrade.py) for
one of `ServerConfig.direct_websocket_paths` is served here. The ASGI app runs in the
connection's own task; its `receive` reads the socket and decodes frames with wsproto's frame
layer (with the bounded decoder, frame_limits.py), its `send` writes; the connection is its own
Sink (vpiska/sink.py). TLS connections and anything else go to hypercorn.

It keeps what the transport guarantees on hypercorn's path (ws_stream.py, tcp_server.py): the
peer's invalid frame or oversized message gets its close code; a close during a send ends the
connection, not the server; no ping task per socket, the worker's pinger pings it; frames are
written without a task switch; bytes sent with the handshake are the first frames of an
accepted socket and dropped for a refused one; nothing waits for an app that has finished; the
server's close lingers for the peer's last bytes. A peer silent for the read timeout is
dropped, as a keep-alive disconnect: the pinger finds it (at the first ping after the timeout),
so a read that waits sets no deadline; without pings nobody is dropped for silence.

The handshake's lifecycle is a `WebSocketState` (lifecycle.py); an app that answers before it
has received `websocket.connect` is not given it afterwards.

Memory: an idle member's socket is mostly what it keeps for its life, so it keeps nothing of
its handshake. The connection lets go of the ASGI scope (the request's head: headers, the
query string with its token, ~2.5 KiB) once the handshake is answered, calls the ASGI app
itself rather than through hypercorn's wrapper (a coroutine frame that held the scope), and
holds the frames decoded from one read in a list (an empty deque weighs 760 bytes), as
wsproto's Connection does its queue of events (`_NO_QUEUED_EVENTS`).

Resource handling: the connection's task runs the app; what the app starts beside it (its
writers, a ping the socket did not take at once) runs in the nursery of the server's
connections and ends with the socket, which is closed as soon as the app has returned.
"""

from __future__ import annotations

import http
import logging
import time
from base64 import b64encode
from collections import deque
from hashlib import sha1
from typing import TYPE_CHECKING, Any, Protocol, cast

import trio
from hypercorn.config import Config as HypercornConfig
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from vpiska import metrics
from vpiska.sink import SINK
from vpiska.transport.connection_guard import describe, where
from vpiska.transport.frame_limits import bound_messages
from vpiska.transport.lifecycle import WebSocketState
from vpiska.transport.pinger import Pinger
from vpiska.transport.socket_io import read_ready, write_now
from vpiska.transport.upgrade import Upgrade

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hypercorn.typing import WebsocketScope

log = logging.getLogger(__name__)

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_UNANSWERED = frozenset({WebSocketState.CONNECTING, WebSocketState.HANDSHAKE})
_ACCEPTED = WebSocketState.ACCEPTED  # read on every read: a global, not an enum's attribute
# What every wsproto Connection here has as its queue of events, which only
# `receive_data(None)` (the transport lost) fills and this module never calls: wsproto's own
# empty deque is 760 bytes of every socket. A deque of no length stays empty, shared.
_NO_QUEUED_EVENTS: deque[Event] = deque(maxlen=0)


class DirectConnection(Protocol):
    """What a direct WebSocket needs of its TCP connection (tcp_server.py)."""

    config: HypercornConfig
    send_lock: trio.Lock  # held while a send is under way
    peer_address: tuple[str, int] | None
    local_address: tuple[str, int] | None

    async def send_raw(self, data: bytes) -> bool:
        """Send `data` after everything sent before it; False if the connection is gone."""

    async def close_now(self, *, linger: bool = False) -> None:
        """Close the connection, reading what the peer still sends if `linger`."""

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """Date, Server and the other headers of every response."""

    def pinger(self, interval: float) -> Pinger | None:
        """The worker's pinger, if there is one."""

    def lifespan_state(self) -> dict[str, Any]:
        """A connection's copy of the app's lifespan state."""


class DirectWebSocket:
    """One WebSocket connection served off its socket: the ASGI app's `receive` and `send`, and
    the Sink of its frames (`write_now`, `send_frames`, `spawn`).

    The app runs in the connection's task, and `receive` reads the socket in that task: a
    member's socket is read only while its session asks for a frame, which is how the session
    already applies back-pressure.
    """

    def __init__(self, server: DirectConnection, sock: trio.socket.SocketType, upgrade: Upgrade,
                 rest: bytes, handshake_over: Callable[[], None] | None = None) -> None:
        self._server = server
        # Called once, when the app comes back for the first frame of the socket it accepted,
        # or has refused it or ended: the worker's count of handshakes in progress (admission.py).
        self._handshake_over = handshake_over
        self._sock = sock
        self._key = upgrade.key
        self._rest = rest  # bytes after the head: the first frames, if the app accepts
        # The app's scope, until the handshake is answered (see "Memory" above).
        self.scope: dict[str, Any] | None = _scope(server, upgrade)
        self._path = self.scope["path"]
        self._state = WebSocketState.CONNECTING
        # The app's own refusal while its body comes (RESPONDING): status, headers, body.
        self._refusal: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None
        self._connection: Connection | None = None
        self._events: list[Event] = []  # decoded and not yet received, the next one last
        self._parts: list[str | bytes] = []  # the message being received, if fragmented
        self._disconnect: dict[str, Any] | None = None  # what `receive` says from now on
        self._broken = False  # a write failed, or the peer fell silent: the peer is gone
        self._waiting_since: float | None = None  # when the waiting read began, while it waits
        self._silent = False  # the pinger found the peer silent for the read timeout
        self._nursery: trio.Nursery | None = None
        self._send_lock = server.send_lock
        self._started = time.time()

    async def serve(self, app: Callable[..., Awaitable[None]]) -> None:
        """Run the ASGI app on this connection, then close it.

        What the app starts beside itself (its writers, a ping the socket did not take at once)
        runs in the nursery of the server's connections, not one of this connection's own: a
        nursery per connection cost ~4 % of a handshake. Those tasks end with the socket, which
        is closed here as soon as the app has returned: a write waiting for a peer that stopped
        reading ends only with it.
        """
        self._nursery = trio.lowlevel.current_task().parent_nursery
        try:
            try:
                await app(self._typed_scope, self.receive, self.send)
            except Exception:
                log.exception("websocket app failed", extra={"path": self._path})
            await self._app_finished()
        finally:
            self._nursery = None
            self._end_handshake()
            await self._server.close_now(linger=not self._broken)

    def _end_handshake(self) -> None:
        if self._handshake_over is not None:
            handshake_over, self._handshake_over = self._handshake_over, None
            handshake_over()

    async def _app_finished(self) -> None:
        # What hypercorn does for an app that returns: a handshake it never answered is a 500;
        # a socket it left open is closed with 1011.
        if self._state is WebSocketState.ACCEPTED:
            if self._open:
                await self._send_close(CloseReason.INTERNAL_ERROR, None)
        elif self._state is not WebSocketState.REFUSED:
            await self._refuse(500, [(b"content-length", b"0")], [b""])

    @property
    def _typed_scope(self) -> WebsocketScope:
        assert self.scope is not None, "the handshake has been answered"
        return cast("WebsocketScope", self.scope)

    @property
    def _open(self) -> bool:
        return (not self._broken and self._connection is not None
                and self._connection.state is ConnectionState.OPEN)

    # The ASGI side.

    async def receive(self) -> dict[str, Any]:
        if self._state is WebSocketState.CONNECTING:
            self._state = WebSocketState.CONNECTING.advance(WebSocketState.HANDSHAKE)
            return {"type": "websocket.connect"}
        if self._handshake_over is not None and self._state is _ACCEPTED:
            self._end_handshake()  # the app is done with the handshake: it wants frames
        while True:
            if self._disconnect is not None:
                return self._disconnect
            if not self._events:
                await self._read()
                continue
            event = self._events.pop()
            if isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    data = self._parts[0] if len(self._parts) == 1 else \
                        type(event.data)().join(self._parts)
                    self._parts = []
                    if isinstance(event, TextMessage):
                        return {"type": "websocket.receive", "text": data, "bytes": None}
                    return {"type": "websocket.receive", "bytes": data, "text": None}
            elif isinstance(event, Ping):
                await self._write_event(event.response())
            elif isinstance(event, CloseConnection):
                await self._closed_by_peer(event)

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        state = self._state
        if kind == "websocket.send" and state is _ACCEPTED:
            if self._open:
                data = message.get("bytes")
                await self._write_event(TextMessage(data=message["text"]) if data is None
                                        else BytesMessage(data=bytes(data)))
        elif kind == "websocket.accept" and state in _UNANSWERED:
            await self._accept(message)
        elif kind == "websocket.http.response.start" and state in _UNANSWERED:
            self._state = state.advance(WebSocketState.RESPONDING)
            self._refusal = (int(message["status"]), list(message.get("headers", [])), [])
        elif kind == "websocket.http.response.body" and self._refusal is not None:
            status, headers, body = self._refusal
            body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._refusal = None
                await self._refuse(status, headers, body)
        elif kind == "websocket.close" and state in _UNANSWERED:
            await self._refuse(403, [(b"content-length", b"0")], [b""])
        elif kind == "websocket.close" and state is not WebSocketState.RESPONDING:
            if self._open:
                await self._send_close(int(message.get("code", CloseReason.NORMAL_CLOSURE)),
                                       message.get("reason"))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a direct WebSocket "
                               f"{state.value}")

    async def _accept(self, message: dict[str, Any]) -> None:
        self._state = self._state.advance(WebSocketState.ACCEPTED)
        accept = b64encode(sha1(self._key + _ACCEPT_GUID).digest())
        head = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-accept: ", accept, b"\r\n"]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            head += [b"sec-websocket-protocol: ", subprotocol.encode("latin-1"), b"\r\n"]
        for name, value in message.get("headers", ()):
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self._connection = Connection(ConnectionType.SERVER)  # no permessage-deflate
        self._connection._events = _NO_QUEUED_EVENTS
        config = self._server.config
        bound_messages(self._connection, config.websocket_max_message_size)
        await self._write(b"".join(head))
        await config.log.access(self._typed_scope, {"status": 101, "headers": []},
                                time.time() - self._started)
        if self._rest:
            self._feed(self._rest)
            self._rest = b""
        interval = config.websocket_ping_interval
        if interval is not None:
            pinger = self._server.pinger(interval)
            if pinger is not None:
                pinger.add(self)
        assert self.scope is not None
        self.scope["extensions"][SINK] = self
        self.scope = None  # the app has it: nothing of the handshake stays for the socket's life

    async def _refuse(self, status: int, headers: list[tuple[bytes, bytes]],
                      body: list[bytes]) -> None:
        """Answer the handshake with an HTTP response; the connection ends after it, and what
        the client sent after its request is dropped."""
        self._state = self._state.advance(WebSocketState.REFUSED)
        content = b"".join(body)
        names = {name.lower() for name, _ in headers}
        extra = [(b"connection", b"close")] if b"connection" not in names else []
        if b"content-length" not in names:
            extra.append((b"content-length", str(len(content)).encode()))
        try:
            phrase = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
        for name, value in (*headers, *extra, *self._server.response_headers()):
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"\r\n", content]
        await self._write(b"".join(lines))
        await self._server.config.log.access(self._typed_scope, {"status": status, "headers": []},
                                             time.time() - self._started)
        self._disconnect = {"type": "websocket.disconnect", "code": CloseReason.NORMAL_CLOSURE}
        self.scope = None

    # Frames in.

    async def _read(self) -> None:
        """Read what the peer sent into the frame decoder; at the end of the stream, a silence
        of the read timeout or a broken connection, the peer has disconnected.

        No deadline is set for a wait: the worker's pinger finds a peer silent for the read
        timeout (`send_ping`) and ends its wait. A deadline per read cost a cancel scope and a
        place in trio's deadline heap for every member waiting for its next frame. The wait is
        in this coroutine, not one of its own: an idle member's frames are held all its life.
        """
        data: bytes | None = b""
        if not self._broken and self._state is _ACCEPTED:
            data = read_ready(self._sock)
            if data is not None:  # a peer that always has more must not keep the others waiting
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                self._waiting_since = trio.current_time()
                try:
                    while data is None:
                        try:
                            await trio.lowlevel.wait_readable(self._sock)
                        except trio.ClosedResourceError:  # found silent, or the end
                            if self._silent:
                                metrics.KEEP_ALIVE_DISCONNECTS.inc()
                            data = b""
                        else:
                            data = read_ready(self._sock)
                finally:
                    self._waiting_since = None
        if data and self._connection is not None \
                and self._connection.state is not ConnectionState.CLOSED:
            self._feed(data)
        else:
            self._disconnect = {"type": "websocket.disconnect",
                                "code": CloseReason.ABNORMAL_CLOSURE}

    def _feed(self, data: bytes) -> None:
        assert self._connection is not None
        assert not self._events, "fed only once the events of the last read are received"
        self._connection.receive_data(data)
        events = list(self._connection.events())
        events.reverse()  # taken from the end: popping the first of a list moves all the others
        self._events = events

    async def _closed_by_peer(self, event: CloseConnection) -> None:
        """The peer closed, or sent what cannot be decoded (wsproto reports a CloseConnection
        with the reason's code while the connection is still OPEN): either way the app is
        told, and the peer gets the close frame it is owed."""
        assert self._connection is not None
        if self._connection.state is ConnectionState.REMOTE_CLOSING:
            await self._write_event(event.response())
        elif self._connection.state is ConnectionState.OPEN:
            log.info("websocket failed", extra={"code": event.code, "cause": event.reason})
            await self._send_close(event.code, None)
        self._events.clear()
        self._disconnect = {"type": "websocket.disconnect", "code": event.code}

    # Frames out.

    async def _send_close(self, code: int, reason: str | None) -> None:
        await self._write_event(CloseConnection(code=code, reason=reason))

    async def _write_event(self, event: Event) -> None:
        assert self._connection is not None
        try:
            data = self._connection.send(event)
        except LocalProtocolError:  # the connection is closing already
            return
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write `data` after everything written before it (tcp_server.py `send_raw`)."""
        if not self._broken and not await self._server.send_raw(data):
            self._broken = True

    def _write_now(self, data: bytes) -> int:
        assert self._sock is not None
        try:
            return write_now(self._sock, data)
        except trio.BrokenResourceError:
            self._broken = True
            return 0

    # The Sink of the app's frames (vpiska/sink.py).

    def write_now(self, data: bytes) -> int:
        if not self._open or self._send_lock.locked():
            return 0
        assert self._sock is not None
        return write_now(self._sock, data)

    async def send_frames(self, data: bytes) -> None:
        if self._open:
            await self._write(data)

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            raise RuntimeError("the connection has ended")
        self._nursery.start_soon(self._guarded, job)

    async def _guarded(self, job: Callable[[], Awaitable[None]]) -> None:
        """`job`, whose fault ends this connection, never the server's other connections (it
        runs in their nursery)."""
        try:
            await job()
        except Exception as fault:
            log.warning("connection failed", extra={"cause": describe([fault]),
                                                    "where": where(fault)})
            self._broken = True
            if self._sock is not None:
                trio.lowlevel.notify_closing(self._sock)

    # The worker's pinger (pinger.py).

    def send_ping(self) -> bool:
        """Ping the peer now; False once the socket is done. A peer whose read has waited for
        the read timeout is gone: its wait is ended instead, and the connection closes."""
        if not self._open or self._nursery is None:
            return False
        timeout = self._server.config.read_timeout
        if (self._waiting_since is not None and timeout is not None
                and trio.current_time() - self._waiting_since >= timeout):
            self._silent = self._broken = True
            assert self._sock is not None
            trio.lowlevel.notify_closing(self._sock)
            return False
        assert self._connection is not None
        data = self._connection.send(Ping())
        written = 0 if self._send_lock.locked() else self._write_now(data)
        if written < len(data) and not self._broken:
            rest = data[written:]
            self.spawn(lambda: self._write(rest))
        return not self._broken


def _scope(server: DirectConnection, upgrade: Upgrade) -> dict[str, Any]:
    """The ASGI scope hypercorn 0.18 makes for the same request (WSStream.handle)."""
    return {
        "type": "websocket",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": upgrade.path.decode("ascii"),
        "raw_path": upgrade.path,
        "query_string": upgrade.query_string,
        "root_path": server.config.root_path,
        "headers": upgrade.headers,
        "client": server.peer_address,
        "server": server.local_address,
        "state": server.lifespan_state(),
        "subprotocols": upgrade.subprotocols,
        "extensions": {"websocket.http.response": {}},
    }
