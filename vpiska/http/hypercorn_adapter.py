"""What vpiska needs from hypercorn below its public API, in one place, for pinned versions.

1. Failing a WebSocket properly. When wsproto cannot parse a client frame (invalid UTF-8 in a
   text message, a bad opcode, …) it reports a CloseConnection with the RFC 6455 code (1007,
   1002) while the connection is still OPEN; hypercorn 0.18 then drops the TCP connection
   without sending that close frame. RFC 6455 §7.1.7 says the endpoint SHOULD send it, so the
   client learns why. `VpiskaWSStream` sends it.

2. Surviving a close during a send. hypercorn's `_close` sends EOF without taking the send
   lock, so a WebSocket ping (its own task) can call `send_all` while EOF is in flight; trio
   raises BusyResourceError there, which hypercorn does not catch, and it escapes the
   connection task and stops the whole server. One client that sends an invalid frame right
   after connecting was enough (tests/test_websocket.py). `VpiskaTCPServer` treats it as the
   connection closing, as hypercorn already does for Broken/ClosedResourceError.

3. Closing idle keep-alive connections. After a response hypercorn restarts the connection's
   idle timer from the finishing app task; that task is being cancelled, so `nursery.start`
   never runs the timer: an idle HTTP connection is then never closed after
   keep_alive_timeout, and holds a graceful shutdown for its full grace period.
   `VpiskaTCPServer` restarts the timer shielded.

4. Ending the ping loop with the connection. hypercorn's WebSocket ping task sleeps a whole
   ping interval before it notices the stream closed, and the connection task waits for it:
   every closed WebSocket lingered up to WS_PING_SECONDS, and so did a graceful shutdown.
   `VpiskaWSStream` cancels the ping loop as soon as the stream is closed (and skips the
   ping hypercorn sends the instant a socket is accepted).

5. Writing frames without a task switch (the fast write path). Sending one frame through
   ASGI costs a task wake-up, a lock and a shielded cancel scope; for a broadcast to N members
   that is N of each per line. `DirectSink` lets a member's frames go to its socket in one
   non-blocking write when nothing else is queued or being sent on that connection, and lets
   the member's writer send everything queued with one `send_all`. Frames are complete
   WebSocket frames (vpiska/http/outbox.py), written in order; wsproto keeps owning the
   handshake, control frames and the close.

The adapter is installed only for the hypercorn versions it was written against
(`TESTED_HYPERCORN`); on any other version vpiska runs on hypercorn as it is and logs that it
did. Tests run both ways.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
from typing import Any

import hypercorn.protocol.h11
import hypercorn.protocol.h2
import hypercorn.trio.run
import trio
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from vpiska import metrics

log = logging.getLogger(__name__)

TESTED_HYPERCORN = frozenset({"0.18.0"})


SINK = "vpiska.direct_sink"  # the ASGI scope extension that carries a connection's DirectSink


class VpiskaWSStream(WSStream):
    _pings: trio.CancelScope | None = None

    async def _accept(self, message: Any) -> None:
        await super()._accept(message)
        sink = DirectSink.for_stream(self)
        if sink is not None:
            self.scope["extensions"][SINK] = sink

    async def _send_pings(self) -> None:
        with trio.CancelScope() as self._pings:
            # hypercorn pings at once on accept: a send per handshake for a peer that has
            # just proved it is there. Start one interval later.
            await trio.sleep(self.config.websocket_ping_interval or 0)
            await super()._send_pings()

    async def handle(self, event: Event) -> None:
        await super().handle(event)
        if self.closed and self._pings is not None:
            self._pings.cancel()

    async def _handle_events(self) -> None:
        # hypercorn 0.18.0's loop, with one change: a CloseConnection wsproto raises on its own
        # (state still OPEN) is sent to the peer before the stream closes.
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    await self._send_wsproto_event(
                        CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                    break
                if event.message_finished:
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                elif self.connection.state == ConnectionState.OPEN:
                    await self._fail(event)
                await self.send(StreamClosed(stream_id=self.stream_id))

    async def _fail(self, event: CloseConnection) -> None:
        log.info("websocket failed", extra={"code": event.code, "cause": event.reason})
        try:
            await self._send_wsproto_event(CloseConnection(code=event.code))
        except LocalProtocolError:
            pass


class VpiskaTCPServer(TCPServer):
    async def _read_data(self) -> None:
        # hypercorn 0.18.0's loop, with one change: a WebSocket whose read times out (a peer
        # silent for two ping intervals, server.py) is counted as a keep-alive disconnect.
        while True:
            try:
                with trio.fail_after(self.config.read_timeout or math.inf):
                    data = await self.stream.receive_some(MAX_RECV)
            except trio.TooSlowError:
                if isinstance(getattr(self.protocol.protocol, "stream", None), WSStream):
                    metrics.KEEP_ALIVE_DISCONNECTS.inc()
                break
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and event.idle:
            with trio.CancelScope(shield=True):
                await self.idle_task.restart(self._task_group, self._idle_timeout)
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                await self.protocol.handle(Closed())


class DirectSink:
    """Writes whole WebSocket frames to one connection, in order with hypercorn's own sends.

    Resource handling: owns nothing; it stops writing once the WebSocket is no longer OPEN or
    the socket is closed, and hypercorn closes the connection as usual.
    """

    def __init__(self, stream: VpiskaWSStream, server: VpiskaTCPServer,
                 sock: trio.socket.SocketType) -> None:
        self._stream = stream
        self._server = server
        self._sock = sock

    @classmethod
    def for_stream(cls, stream: VpiskaWSStream) -> DirectSink | None:
        # The HTTP/1.1 protocol's send is the TCPServer's protocol_send; over TLS or HTTP/2
        # there is no plain socket to write to, and members use the ASGI path.
        protocol = getattr(stream.send, "__self__", None)
        server = getattr(getattr(protocol, "send", None), "__self__", None)
        if not isinstance(server, VpiskaTCPServer):
            return None
        sock = getattr(server.stream, "socket", None)
        return cls(stream, server, sock) if isinstance(sock, trio.socket.SocketType) else None

    def write_now(self, data: bytes) -> int:
        """Write what the socket takes at once; 0 if another send is under way, the socket is
        full or the WebSocket is closing. The caller sends the rest with `send`.

        Error handling: trio.BrokenResourceError when the connection has broken (the peer
        reset it), so a vanished client is told apart from a slow one.
        """
        if (self._stream.closed or self._server.send_lock.locked()
                or self._stream.connection.state is not ConnectionState.OPEN):
            return 0
        fd = self._sock.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:  # the socket's buffer is full: `send` waits for room
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc

    async def send(self, data: bytes) -> None:
        if self._stream.connection.state is ConnectionState.OPEN:
            await self._server.protocol_send(RawData(data=data))


def sink_of(scope: dict[str, Any]) -> DirectSink | None:
    """The DirectSink of a WebSocket connection, if the adapter made one."""
    sink = scope.get("extensions", {}).get(SINK)
    return sink if isinstance(sink, DirectSink) else None


def installed_hypercorn() -> str:
    return importlib.metadata.version("hypercorn")


def install(*, enabled: bool = True) -> bool:
    """Use the adapter if `enabled` and hypercorn is a tested version; True if in use.

    It swaps the classes hypercorn instantiates (its trio TCPServer, and the WSStream of its
    HTTP/1.1 and HTTP/2 protocols), and swaps them back when not in use, so the choice can be
    made per server start.
    """
    version = installed_hypercorn()
    use = enabled and version in TESTED_HYPERCORN
    stream_class = VpiskaWSStream if use else WSStream
    hypercorn.protocol.h11.WSStream = stream_class  # type: ignore[misc]
    hypercorn.protocol.h2.WSStream = stream_class  # type: ignore[misc]
    hypercorn.trio.run.TCPServer = VpiskaTCPServer if use else TCPServer  # type: ignore[misc]
    if enabled and not use:
        log.warning("hypercorn adapter not used: written for hypercorn %s, found %s",
                    ", ".join(sorted(TESTED_HYPERCORN)), version)
    return use
