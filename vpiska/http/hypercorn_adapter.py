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
   keep_alive_timeout, and holds a graceful shutdown for its full grace period. The timer is
   now a deadline on the connection's read (11); under another worker context than the
   adapter's, `VpiskaTCPServer` restarts hypercorn's timer shielded.

4. Ending the ping loop with the connection. hypercorn's WebSocket ping task sleeps a whole
   ping interval before it notices the stream closed, and the connection task waits for it:
   every closed WebSocket lingered up to WS_PING_SECONDS, and so did a graceful shutdown.
   The worker's pinger (15) holds no connection open; where it cannot serve (TLS, HTTP/2),
   `VpiskaWSStream` cancels hypercorn's ping loop as soon as the stream is closed. Neither
   sends the ping hypercorn sends the instant a socket is accepted.

5. Writing frames without a task switch (the fast write path). Sending one frame through
   ASGI costs a task wake-up, a lock and a shielded cancel scope; for a broadcast to N members
   that is N of each per line. `DirectSink` lets a member's frames go to its socket in one
   non-blocking write when nothing else is queued or being sent on that connection, and lets
   the member's writer send everything queued with one `send_all`. Frames are complete
   WebSocket frames (vpiska/http/outbox.py), written in order; wsproto keeps owning the
   handshake, control frames and the close.

6. Bytes that come before the handshake is answered. A client may send its first frame in the
   packet of its handshake, or keep sending after a refused one. hypercorn answers such bytes
   with a 400 at once, whatever the app is doing: written in the middle of the app's own
   answer, it made h11 raise LocalProtocolError and stopped the server (one request and one
   byte). `VpiskaWSStream` holds them, and the socket's reader with them, until the app has
   answered: an accepted socket then decodes them as its first frames, a refused one drops
   them and closes after the answer.

7. Nothing waits for an app that has finished. After an app has closed its WebSocket (or
   answered a request it did not read), bytes still arriving were queued for it on a bounded
   channel nobody read any more, and the socket's reader, then the task closing the
   connection, waited on it forever: the connection was never closed. `VpiskaWSStream` drops
   messages once the app has closed and does not queue the disconnect for a finished app;
   `VpiskaTCPServer` stops its reader when the connection is closed.

8. Oversized WebSocket messages refused by their frame headers (ws_limits.py), without reading
   their payload, and no permessage-deflate: `VpiskaWSStream` installs the bounded frame
   decoder; such a message, like any frame wsproto cannot parse, gets its close code and ends
   the connection, with no further byte fed to wsproto.

9. Closing when asked to close. A response with `Connection: close` (a request refused before
   its body was read) ends in the app task, which is being cancelled right then; hypercorn's
   close awaits there, was cancelled, and the socket stayed open until the read timeout.
   `VpiskaTCPServer` closes shielded.

10. A deadline for request bodies (BODY_TIMEOUT_SECONDS, `ServerConfig.body_timeout`). hypercorn's
   read_timeout bounds each read, so a body sent a byte a second held its connection (and its
   handler) forever. `VpiskaTCPServer` closes an HTTP/1.1 connection whose request body has
   not fully arrived within the deadline, counted from the request's head; a handler reading
   it sees the client disconnect and ends without an answer. (Quart's BODY_TIMEOUT applies
   only to `get_data` and form parsing, not to the streamed reads vpiska uses, and cannot
   close the connection.)

11. No task per request for the keep-alive timer. hypercorn stops its idle timer (a lock) when a
   request arrives and starts a new timer task (a lock and `nursery.start`) after each response:
   about an eighth of a small request's CPU. Here the timer is the deadline of the connection's
   read, moved when the connection turns idle or busy; `VpiskaWorkerContext` knows the idle
   connections, and its `terminated` (a shutdown) ends their reads at once, as hypercorn's timer
   did.

12. No lock or shielded scope for a send nobody competes with. Every write took the send lock
   and a shielded cancel scope. When the lock is free no other send is under way on the
   connection, so `VpiskaTCPServer.protocol_send` writes at once to the non-blocking socket;
   only what the socket did not take is sent under the lock, shielded, as before.

13. One send per response. hypercorn writes a response's head, its body and its end (an empty
   write, or the last chunk) as separate sends. `VpiskaH11Protocol` holds them and sends them
   together once the response ends (also an error response, or a refused WebSocket handshake);
   a body the app streams (`more_body`) goes out with each piece the app hands over, and held
   bytes are sent once they pass FLUSH_BYTES, so a large download is written in bounded pieces.
   The Date and Server headers are made once a second, not per response.

14. No task switch to pass an app its messages. hypercorn hands a request's body and its
   disconnect to the app over a memory channel whose `send` and `receive` each yield to the
   scheduler even when the message is there, and which weighs about 2 KiB (a WebSocket keeps
   it for its life). `VpiskaTaskGroup` gives each app an `_AppInbox` instead: the same bound
   and order, passing a message at once when it can and waiting as before when it cannot.

15. One ping task for all WebSockets. hypercorn starts a task per socket that sleeps and
   pings: about 4 KiB of every idle socket. `VpiskaWorkerContext.pinger` pings every socket of
   the worker once an interval from one task (started when there is a socket to ping, ended
   when there is none), writing the ping straight to the socket when nothing else is being
   sent on it, else from a short-lived task as hypercorn did.

16. A lighter reader. Each read went through trio's stream and socket layers (two context
   managers, a conflict detector) inside its own cancel scope. `VpiskaTCPServer` reads the
   non-blocking socket itself, waiting with `wait_readable` only when it is empty, under one
   cancel scope whose deadline is set while it reads: less CPU per request, and less memory
   per waiting connection.

17. Closing without a reset. When the server ends a connection (its WebSocket close, or a
   response with `Connection: close`) the peer may still be sending: a member flooding the
   room, a body the server refused unread. hypercorn closed the socket at once, and a socket
   closed with unread bytes, or that receives more, answers with a TCP reset; the peer's send
   then failed before it had read the close frame or the answer already on its way, and a
   flooder closed with 4009 saw 1006 (the reset won the race on a loaded machine). The
   connection is now closed as browsers and nginx expect: the end of the stream is sent, what
   the peer still sends is read and dropped until it closes too or LINGER_SECONDS pass, then
   the socket is closed. A shutdown ends these waits; those it starts itself (the sockets it
   closes, 1001, or 1012 when a cluster node hands its rooms over while the peers go on
   talking) last SHUTDOWN_LINGER_SECONDS at most: without them a peer sending a line as its
   socket closed got a reset and saw 1006 (the rolling-restart test, 2 runs in 10 under load).

18. WebSockets below hypercorn. A WebSocket handshake through h11, hypercorn's protocol and
   stream objects, an app task and its inbox cost ~0.67 ms of the core before the app saw it;
   trio alone answers one in ~0.17 ms. `VpiskaTCPServer.serve` reads a new connection's first
   bytes itself (at once if they are there, else under the keep-alive deadline of 11): a whole,
   ordinary upgrade request for one of `ServerConfig.direct_websocket_paths` is served by
   direct_websocket.py, in the connection's own task, keeping 1, 2, 4-8, 15 and 17; anything
   else goes to hypercorn with the bytes already read.

Any other fault raised while serving a connection ends that connection only
(connection_guard.py); that guard is installed with or without the adapter.

The adapter is installed only for the hypercorn versions it was written against
(`TESTED_HYPERCORN`), and only if wsproto's frame decoder is where (8) replaces it; otherwise
vpiska runs on hypercorn as it is (with the guard) and logs that it did. Tests run both ways.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import h11
import hypercorn.protocol
import hypercorn.protocol.h2
import hypercorn.protocol.h11
import hypercorn.trio.run
import hypercorn.trio.tcp_server
import outcome
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Body, Data, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.trio.tcp_server import MAX_RECV
from hypercorn.trio.worker_context import EventWrapper, TrioSingleTask, WorkerContext
from hypercorn.typing import (
    AppWrapper,
    ASGIReceiveEvent,
    ASGISendEvent,
    H11SendableEvent,
    Scope,
)
from hypercorn.utils import parse_socket_addr
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from vpiska import metrics
from vpiska.http.connection_guard import GuardedTCPServer
from vpiska.http.direct_websocket import DirectWebSocket, parse_upgrade
from vpiska.http.socket_writes import write_now
from vpiska.http.ws_limits import bound_messages, fits_wsproto
from vpiska.sink import SINK

log = logging.getLogger(__name__)

TESTED_HYPERCORN = frozenset({"0.18.0"})


# Longest a connection the server ends waits for its peer to stop sending (17).
LINGER_SECONDS = 2.0
# The same for a connection the server ends while it shuts down (17): a peer answers a close
# at once, and a shutdown's deadline is not these waits' to spend.
SHUTDOWN_LINGER_SECONDS = 0.5

class VpiskaWSStream(WSStream):
    _pings: trio.CancelScope | None = None
    _server: VpiskaTCPServer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True once the app has accepted or refused the handshake, or the stream closed: until
        # then bytes after the request wait for it (6), and so does the socket's reader, on
        # `_decision` (made only then: most clients wait for the answer).
        self._decided = False
        self._decision: trio.Event | None = None
        self._app_done = False

    async def handle(self, event: StreamEvent) -> None:
        if isinstance(event, Body | Data) and not self.closed and not self._decided:
            if self._decision is None:
                self._decision = trio.Event()
            await self._decision.wait()
        if isinstance(event, Body | Data) and not self.closed:
            if not self.handshake.accepted:
                return  # the app refused: the connection ends after its answer, unread (6)
        if isinstance(event, StreamClosed) and self._app_done:
            self.closed = True  # nobody is left to tell; telling could wait forever (7)
        else:
            await super().handle(event)
        if self.closed:
            self._decide()
            if self._pings is not None:
                self._pings.cancel()

    async def app_send(self, message: Any) -> None:
        if message is None:
            self._app_done = True
        await super().app_send(message)
        if self.state is not ASGIWebsocketState.HANDSHAKE:
            self._decide()

    def _decide(self) -> None:
        self._decided = True
        if self._decision is not None:
            self._decision.set()

    async def _accept(self, message: Any) -> None:
        # hypercorn 0.18.0's accept, with its ping task replaced by the worker's pinger (15).
        self.handshake.extensions = None  # no permessage-deflate (ws_limits.py)
        self.state = ASGIWebsocketState.CONNECTED
        status_code, headers, self.connection = self.handshake.accept(
            message.get("subprotocol"), message.get("headers", []))
        await self.send(Response(stream_id=self.stream_id, status_code=status_code,
                                 headers=headers))
        await self.config.log.access(self.scope, {"status": status_code, "headers": []},
                                     time.time() - self.start_time)
        # The reader is held until `_decided`, so no byte has reached the new connection yet.
        bound_messages(self.connection, self.config.websocket_max_message_size)
        server = _server_of(self)
        if self.config.websocket_ping_interval is not None:
            if server is not None and isinstance(self.context, VpiskaWorkerContext):
                self._server = server
                self.context.pinger(self.config.websocket_ping_interval).add(self)
            else:
                self.task_group.spawn(self._send_pings)
        sink = DirectSink.for_stream(self, server)
        if sink is not None:
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[SINK] = sink

    async def _send_pings(self) -> None:
        with trio.CancelScope() as self._pings:
            # hypercorn pings at once on accept: a send per handshake for a peer that has
            # just proved it is there. Start one interval later.
            await trio.sleep(self.config.websocket_ping_interval or 0)
            await super()._send_pings()

    def _ping(self) -> bool:
        """Ping the peer now, for the worker's pinger; False once the socket is done (15)."""
        if self.closed or self.connection.state is not ConnectionState.OPEN:
            return False
        data = self.connection.send(Ping())
        server = self._server
        written = 0
        if server is not None and not server.send_lock.locked():
            try:
                written = write_now(server._sock, data) if server._sock is not None else 0
            except trio.BrokenResourceError:
                written = 0  # the send below finds the connection broken and closes it
        if written < len(data):  # the socket is busy or full: a task sends it, as hypercorn did
            try:
                self.task_group.spawn(self._send_rest, data[written:])
            except RuntimeError:  # the connection's task group has ended: nothing to ping
                return False
        return True

    async def _send_rest(self, data: bytes) -> None:
        await self.send(Data(stream_id=self.stream_id, data=data))

    async def _handle_events(self) -> None:
        # hypercorn 0.18.0's loop, with three changes: a CloseConnection wsproto raises on its
        # own (state still OPEN) is sent to the peer and ends the connection (1, 8); so does a
        # message over the size bound; messages after the app closed are dropped (7).
        for event in self.connection.events():
            if isinstance(event, Message):
                if self.state is not ASGIWebsocketState.CONNECTED:
                    continue
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:  # a bound in characters; ws_limits.py's is in bytes
                    await self._fail(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                    await self.send(StreamClosed(stream_id=self.stream_id))
                    break
                if event.message_finished:
                    assert self.app_put is not None  # set when the app was started
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
                break

    async def _fail(self, event: CloseConnection) -> None:
        log.info("websocket failed", extra={"code": event.code, "cause": event.reason})
        try:
            await self._send_wsproto_event(CloseConnection(code=event.code))
        except LocalProtocolError:
            pass


class ServerConfig(HypercornConfig):
    """hypercorn's configuration and what the adapter adds to it."""

    # Longest a request body may take to arrive, from its request's head; then the connection
    # is closed (10). None: no bound.
    body_timeout: float | None = None
    # WebSocket paths served off the socket, below hypercorn (18); raw, as the request line has
    # them.
    direct_websocket_paths: frozenset[bytes] = frozenset()


class VpiskaTCPServer(GuardedTCPServer):
    _reading: trio.CancelScope | None = None
    _reader: trio.lowlevel.Task | None = None
    _first: bytes | None = None  # read before hypercorn's protocol was made (18)
    peer_address: tuple[str, int] | None = None  # of a direct WebSocket (18)
    local_address: tuple[str, int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The keep-alive idle timer is a deadline on the read (11), not a task.
        self._idle_deadline = math.inf
        self._read_until = math.inf  # the read's own deadline (read_timeout, body_timeout)
        self._receiving = False  # the reader is waiting for bytes: its deadline applies
        self._stopped = False  # the reader was stopped (7), not timed out
        self._closing: trio.Event | None = None  # set once the socket is closed (17)
        if isinstance(self.context, VpiskaWorkerContext):
            self.idle_task = _IdleDeadline(self)
        stream: Any = self.stream
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def serve(self) -> None:
        """A connection whose first read is an ordinary upgrade request to a direct WebSocket
        path is served by direct_websocket.py; any other by hypercorn, from the bytes already
        read (18)."""
        paths = self.config.direct_websocket_paths if isinstance(self.config, ServerConfig) \
            else frozenset()
        if self._sock is None or not paths:
            await super().serve()
            return
        first = await self._first_read()
        if not first:  # nothing within keep_alive_timeout, a shutdown, or the peer left
            await self._close_now()
            return
        upgrade = parse_upgrade(first, paths, self.config.h11_max_incomplete_size)
        if upgrade is None:
            self._first = first
            await super().serve()
            return
        sock = self._sock
        try:
            family = sock.family
            self.peer_address = parse_socket_addr(family, sock.getpeername())
            self.local_address = parse_socket_addr(family, sock.getsockname())
        except OSError:  # the peer is gone already (hypercorn's run passes these over too)
            await self._close_now()
            return
        await DirectWebSocket(self, *upgrade).serve(self.app)

    async def _first_read(self) -> bytes | None:
        """The connection's first bytes; None if none came within keep_alive_timeout (at once
        in a shutdown) or read_timeout, or the connection broke: the bound hypercorn's idle
        timer sets a new connection (11)."""
        ready = self.read_ready()  # most clients send their request with the connection
        if ready is not None:
            return ready
        self._idle(True)
        try:
            with trio.CancelScope() as reading:
                self._reading = reading
                self._read_until = trio.current_time() + (self.config.read_timeout or math.inf)
                reading.deadline = min(self._read_until, self._idle_deadline)
                self._receiving = True
                try:
                    return await self._receive()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return None
                finally:
                    self._receiving = False
            return None
        finally:
            self._idle(False)
            self._reading = None

    async def send_raw(self, data: bytes) -> bool:
        """Send `data` after everything sent before it; False if the connection broke (the
        peer reset it) or is closed. With no other send under way it is written at once, with
        no lock and no shielded scope (12); what the socket did not take is sent under the
        lock, shielded, as hypercorn sends."""
        if self._sock is not None and not self.send_lock.locked():
            try:
                written = write_now(self._sock, data)
            except trio.BrokenResourceError:
                return False
            if written == len(data):
                return True
            data = data[written:]
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                return False
        return True

    def read_ready(self) -> bytes | None:
        """What the socket holds now, without waiting (and without a deadline to set): None if
        nothing yet; b"" at the end of the stream, or if the connection broke or closed."""
        assert self._sock is not None
        try:
            return os.read(self._sock.fileno(), MAX_RECV)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """Date, Server and the other headers hypercorn adds to every response."""
        return _server_headers(self.config)

    def pinger(self, interval: float) -> _Pinger | None:
        """The worker's pinger of WebSockets (15), if the worker is the adapter's."""
        context = self.context
        return context.pinger(interval) if isinstance(context, VpiskaWorkerContext) else None

    def lifespan_state(self) -> dict[str, Any]:
        """A connection's copy of the app's lifespan state, as hypercorn gives each scope."""
        return dict(self.state)

    async def _read_data(self) -> None:
        # hypercorn 0.18.0's loop, with five changes: a WebSocket whose read times out (a peer
        # silent for two ping intervals, server.py) is counted as a keep-alive disconnect; a
        # request body must arrive within body_timeout (10); the loop ends when the connection
        # is closed, also if it was waiting for the app to take its bytes (7); an idle
        # keep-alive connection's read ends at its idle deadline (11); one cancel scope serves
        # all of it, and reads go to the socket itself (16).
        self._reader = trio.lowlevel.current_task()
        body_deadline = math.inf
        read_timeout = self.config.read_timeout or math.inf
        try:
            with trio.CancelScope() as reading:
                self._reading = reading
                while True:
                    self._read_until = min(trio.current_time() + read_timeout, body_deadline)
                    reading.deadline = min(self._read_until, self._idle_deadline)
                    self._receiving = True
                    try:
                        data, self._first = self._first or await self._receive(), None
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        break
                    finally:
                        self._receiving = False
                    reading.deadline = math.inf
                    received_at = trio.current_time()
                    if received_at >= body_deadline:  # a trickle: bytes keep coming, too slowly
                        self._timed_out(body_deadline)
                        await self._close_now()
                        break
                    await self.protocol.handle(RawData(data))
                    if data == b"":
                        break
                    if not self._receiving_body():
                        body_deadline = math.inf
                    elif body_deadline == math.inf:
                        body_deadline = received_at + (self._body_timeout() or math.inf)
            if reading.cancelled_caught and not self._stopped:  # a deadline passed in a read
                self._timed_out(body_deadline)
                await self._close_now()  # the peer sees the end now, not after the app's
        except trio.Cancelled:
            # The connection is cut (a shutdown past its deadline): a write waiting, shielded,
            # for a peer that stopped reading ends only with the socket, and the connection's
            # task group waits for it.
            await self._close_now()
            raise
        finally:
            self._idle(False)
        await self.protocol.handle(Closed())

    async def _receive(self) -> bytes:
        """What the socket has, waiting for it if need be; trio's `receive_some` without its
        layers (16). b"" at the end of the stream.

        Error handling: trio.ClosedResourceError once the socket is closed, also while waiting;
        trio.BrokenResourceError if the connection broke.
        """
        sock = self._sock
        if sock is None:
            return bytes(await self.stream.receive_some(MAX_RECV))
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError
            try:
                data: bytes | None = os.read(fd, MAX_RECV)
            except BlockingIOError:
                data = None  # waited for below: not in this handler, which would keep the error
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            if data is None:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            if not waited:  # a peer that always has more must not keep the others waiting
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _drain(self) -> None:
        """Read and drop what the peer sends until it closes, the connection breaks, or
        LINGER_SECONDS pass (17)."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                while await self._receive():
                    pass
            except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
                pass  # broken, closed, or another task reads it: nothing left to wait for

    def _idle(self, idle: bool) -> None:
        """The connection is between requests (or no longer): its read ends at keep_alive_timeout,
        at once if the server is shutting down (11)."""
        context = self.context
        if not isinstance(context, VpiskaWorkerContext):
            return
        if not idle:
            self._idle_deadline = math.inf
            context.idle_connections.discard(self)
        elif context.terminated.is_set():
            self._idle_deadline = -math.inf
        else:
            self._idle_deadline = trio.current_time() + self.config.keep_alive_timeout
            context.idle_connections.add(self)
        if self._receiving and self._reading is not None:
            self._reading.deadline = min(self._read_until, self._idle_deadline)

    def _close_if_idle(self) -> None:
        """The server is shutting down: an idle connection closes now."""
        self._idle_deadline = -math.inf
        if self._receiving and self._reading is not None:
            self._reading.deadline = -math.inf

    def _timed_out(self, body_deadline: float) -> None:
        if trio.current_time() >= body_deadline:
            log.info("request body too slow: connection closed",
                     extra={"body_timeout": self._body_timeout()})
        elif isinstance(getattr(self.protocol.protocol, "stream", None), WSStream):
            metrics.KEEP_ALIVE_DISCONNECTS.inc()

    def _receiving_body(self) -> bool:
        protocol = self.protocol.protocol
        return (isinstance(protocol, H11Protocol)
                and isinstance(protocol.connection, h11.Connection)
                and protocol.connection.their_state is h11.SEND_BODY)

    def _body_timeout(self) -> float | None:
        return self.config.body_timeout if isinstance(self.config, ServerConfig) else None

    async def _close_now(self, *, linger: bool = False) -> None:
        with trio.CancelScope(shield=True):
            await self._close(linger=linger)

    async def _close(self, *, linger: bool = False) -> None:
        """hypercorn's close (the end of the stream, then the socket), done once: a second
        caller waits for the first. `linger`: the server ends the connection, so what the peer
        still sends in between is read and dropped (17)."""
        if self._closing is not None:
            await self._closing.wait()
            return
        self._closing = trio.Event()
        try:
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError,
                    AttributeError):  # already gone, or a TLS stream: nothing to end
                pass
            context = self.context
            if (linger and self._sock is not None
                    and isinstance(context, VpiskaWorkerContext)):
                with trio.CancelScope() as lingering:
                    if context.terminated.is_set():  # a close of the shutdown's own (17)
                        lingering.deadline = trio.current_time() + SHUTDOWN_LINGER_SECONDS
                    else:
                        context.lingering.add(lingering)
                    try:
                        await self._drain()
                    finally:
                        context.lingering.discard(lingering)
        finally:
            try:
                await self.stream.aclose()  # closes the socket before its checkpoint
            finally:
                self._closing.set()

    async def _initiate_server_close(self) -> None:
        # The idle timer's close (keep_alive_timeout, or a shutdown) closed the socket under a
        # reader that could be waiting for its app, never to be woken (7): close like the rest.
        await self._close_connection()

    async def _close_connection(self) -> None:
        """Stop the reader, close the socket (reading what the peer still sends, 17), tell the
        protocol.

        Closing is what a protocol asks for last, often from an app task being cancelled right
        then (9). The reader may be waiting for an app that will never take its bytes or
        restart its cycle (7): it is stopped at once, or, when it is the task closing, at its
        next checkpoint, once it has told the protocol.
        """
        closing_reader = trio.lowlevel.current_task() is self._reader
        self._stopped = True
        if self._reading is not None and not closing_reader:
            self._reading.cancel()  # it stops waiting for the socket at once: the close reads it
        await self._close_now(linger=True)
        await self.protocol.handle(Closed())
        if self._reading is not None and closing_reader:
            self._reading.cancel()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if not await self.send_raw(event.data):
                await self._close_connection()  # a peer that reset the connection (7)
        elif isinstance(event, Updated) and not isinstance(self.idle_task, _IdleDeadline):
            if event.idle:  # hypercorn's timer task, restarted shielded (3)
                with trio.CancelScope(shield=True):
                    await self.idle_task.restart(self._task_group, self._idle_timeout)
            else:
                await self.idle_task.stop()
        elif isinstance(event, Closed):
            await self._close_connection()
        else:
            await super().protocol_send(event)


class _IdleDeadline(TrioSingleTask):
    """hypercorn's keep-alive timer as a deadline on the connection's read (11): restarting and
    stopping it start no task, take no lock and do not checkpoint."""

    def __init__(self, server: VpiskaTCPServer) -> None:
        self._server = server

    async def restart(self, task_group: Any, action: Any) -> None:
        self._server._idle(True)

    async def stop(self) -> None:
        self._server._idle(False)


class _Terminated(EventWrapper):
    """A worker's `terminated`: setting it also closes the idle connections (11) and ends the
    closes waiting for their peers (17), so that neither holds the shutdown."""

    def __init__(self, idle_connections: set[VpiskaTCPServer],
                 lingering: set[trio.CancelScope]) -> None:
        super().__init__()
        self._idle_connections = idle_connections
        self._lingering = lingering

    async def set(self) -> None:
        await super().set()
        for server in list(self._idle_connections):
            server._close_if_idle()
        for lingering in list(self._lingering):
            lingering.cancel()


class VpiskaWorkerContext(WorkerContext):
    """hypercorn's worker context, knowing which connections are idle (11) and which closes
    wait for their peers (17), with the pinger of its WebSockets (15)."""

    def __init__(self, max_requests: int | None) -> None:
        super().__init__(max_requests)
        self.idle_connections: set[VpiskaTCPServer] = set()
        self.lingering: set[trio.CancelScope] = set()  # closes waiting for their peers (17)
        self.terminated = _Terminated(self.idle_connections, self.lingering)
        self._pinger: _Pinger | None = None

    def pinger(self, interval: float) -> _Pinger:
        if self._pinger is None:
            self._pinger = _Pinger(interval)
        return self._pinger


class Pingable(Protocol):
    """A WebSocket the worker's pinger pings: hypercorn's stream or a direct one (18)."""

    def _ping(self) -> bool:
        """Ping the peer now; False once the socket is done."""


class _Pinger:
    """Pings every WebSocket of a worker once an interval, the first one interval after its
    accept, from one task (15). The task runs while there are sockets to ping.

    Resource handling: holds its sockets weakly; a closed one is forgotten at its next turn.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._slack = interval / 20  # sockets due this close together are pinged in one go
        self._due: deque[tuple[float, weakref.ref[Pingable]]] = deque()
        self._running = False

    def add(self, stream: Pingable) -> None:
        self._due.append((trio.current_time() + self._interval, weakref.ref(stream)))
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="vpiska websocket pinger")

    async def _run(self) -> None:
        try:
            while self._due:
                await trio.sleep_until(self._due[0][0])
                now = trio.current_time()
                while self._due and self._due[0][0] <= now + self._slack:
                    due, ref = self._due.popleft()
                    stream = ref()
                    if stream is not None and self._ping(stream):
                        self._due.append((max(due + self._interval, now), ref))
        finally:
            self._running = False

    @staticmethod
    def _ping(stream: Pingable) -> bool:
        try:
            return stream._ping()
        except Exception:  # one socket's fault is not the others'
            log.warning("websocket ping failed", exc_info=True)
            return False


class VpiskaTaskGroup(TaskGroup):
    """hypercorn's per-connection task group; an app's messages go through an `_AppInbox` (14)."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        inbox = _AppInbox(config.max_app_queue_size)
        assert self._nursery is not None
        self._nursery.start_soon(_handle, app, config, scope, inbox.get, send,
                                 trio.to_thread.run_sync, trio.from_thread.run)
        return inbox.put


class _AppInbox:
    """The messages for one app (at most `size` waiting), as hypercorn's memory channel was,
    without its weight (about 2 KiB a WebSocket) and without a task switch when a message can
    be passed at once (14).

    `put` waits while the inbox is full, `get` while it is empty; both in order of arrival, and
    both can be cancelled while they wait.
    """

    __slots__ = ("_items", "_size", "_getters", "_putters")

    def __init__(self, size: int) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._size = max(size, 1)
        self._getters: list[trio.lowlevel.Task] = []
        self._putters: list[tuple[trio.lowlevel.Task, ASGIReceiveEvent]] = []

    async def put(self, message: ASGIReceiveEvent) -> None:
        if self._getters:
            trio.lowlevel.reschedule(self._getters.pop(0), outcome.Value(message))
            return
        if len(self._items) < self._size:
            self._items.append(message)
            return
        waiting = (trio.lowlevel.current_task(), message)
        self._putters.append(waiting)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._putters.remove(waiting)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def get(self) -> ASGIReceiveEvent:
        if self._items:
            message = self._items.pop(0)
            if self._putters:  # room for the first waiting message
                task, waiting = self._putters.pop(0)
                self._items.append(waiting)
                trio.lowlevel.reschedule(task)
            return message
        task = trio.lowlevel.current_task()
        self._getters.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._getters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        given: ASGIReceiveEvent = await trio.lowlevel.wait_task_rescheduled(abort)
        return given


# The most bytes of a response held to be sent together; a longer or streamed body is sent in
# pieces of about this size, or as the app hands them over (13).
FLUSH_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Flush(StreamEvent):
    """Send what is held of the response now: the app streams its body (more_body)."""


class VpiskaHTTPStream(HTTPStream):
    async def app_send(self, message: ASGISendEvent | None) -> None:
        await super().app_send(message)
        if (message is not None and message["type"] == "http.response.body"
                and message.get("more_body", False) and not self.closed):
            await self.send(_Flush(stream_id=self.stream_id))


class VpiskaH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, writing a response in one send (13)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[bytes] = []
        self._held_bytes = 0

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, _Flush):
            await self._flush()
        elif isinstance(event, Response) and event.status_code >= 200:
            headers = [*event.headers, *_server_headers(self.config)]
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            await self._send_h11_event(h11.Response(headers=headers,
                                                    status_code=event.status_code))
        elif isinstance(event, Data) and self._held:
            self._hold(event.data)
            await self._flush()
        elif isinstance(event, Response) and event.status_code == 101:
            await super().stream_send(event)
            if isinstance(self.connection, H11WSConnection):
                # The upgrade is answered: h11 has nothing more to do on this connection, and
                # a WebSocket need not keep its request state for life (about 1.4 KiB).
                self.connection.h11_connection = _UPGRADED
        else:
            if self._held and isinstance(event, StreamClosed):
                await self._flush()
            await super().stream_send(event)

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if data:
            self._hold(data)
        kind = type(event)
        if kind is h11.Response or (kind is h11.Data and self._held_bytes < FLUSH_BYTES):
            return  # the rest of the response follows
        await self._flush()

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)

    async def _flush(self) -> None:
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held = []
            self._held_bytes = 0
            await self.send(RawData(data=data))


def _closed_h11() -> h11.Connection:
    """An h11 connection through which nothing can be sent any more: what stands for a
    WebSocket's once its upgrade is answered."""
    connection = h11.Connection(h11.SERVER)
    connection.send(h11.ConnectionClosed())
    return connection


_UPGRADED = _closed_h11()

_date_headers: dict[int, tuple[int, list[tuple[bytes, bytes]]]] = {}


def _server_headers(config: HypercornConfig) -> list[tuple[bytes, bytes]]:
    """`config.response_headers("h11")` (Date, Server, …), made once a second, not per response:
    the Date header counts whole seconds."""
    now = int(time.time())
    cached = _date_headers.get(id(config))
    if cached is None or cached[0] != now:
        cached = (now, config.response_headers("h11"))
        _date_headers[id(config)] = cached
    return cached[1]


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
    def for_stream(cls, stream: VpiskaWSStream, server: VpiskaTCPServer | None
                   ) -> DirectSink | None:
        sock = server._sock if server is not None else None
        return cls(stream, server, sock) if server is not None and sock is not None else None

    def write_now(self, data: bytes) -> int:
        if (self._stream.closed or self._server.send_lock.locked()
                or self._stream.connection.state is not ConnectionState.OPEN):
            return 0
        return write_now(self._sock, data)

    async def send_frames(self, data: bytes) -> None:
        if self._stream.connection.state is ConnectionState.OPEN:
            await self._server.protocol_send(RawData(data=data))

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        self._stream.task_group.spawn(job)


def _server_of(stream: VpiskaWSStream) -> VpiskaTCPServer | None:
    """The TCP server a WebSocket is written through, if it is the adapter's on a plain socket.
    The HTTP/1.1 protocol's send is the TCPServer's protocol_send; over TLS or HTTP/2 there is
    no plain socket to write to (members use the ASGI path, and pings hypercorn's task)."""
    protocol = getattr(stream.send, "__self__", None)
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    if isinstance(server, VpiskaTCPServer) and server._sock is not None:
        return server
    return None


def installed_hypercorn() -> str:
    return importlib.metadata.version("hypercorn")


def install(*, enabled: bool = True) -> bool:
    """Use the adapter if `enabled` and hypercorn is a tested version; True if in use.

    It swaps the classes hypercorn instantiates (its trio TCPServer, task group and worker
    context, its HTTP/1.1 protocol and that protocol's HTTPStream, and the WSStream of its
    HTTP/1.1 and HTTP/2 protocols), and swaps them back when not in use, so the choice can be
    made per server start. The connection guard (connection_guard.py) is installed either way.
    """
    version = installed_hypercorn()
    use = enabled and version in TESTED_HYPERCORN and fits_wsproto()
    stream_class = VpiskaWSStream if use else WSStream
    # The ignores: these are names hypercorn's modules import, not export (mypy --strict).
    hypercorn.protocol.h11.WSStream = stream_class  # type: ignore[attr-defined]
    hypercorn.protocol.h2.WSStream = stream_class  # type: ignore[attr-defined]
    hypercorn.protocol.h11.HTTPStream = (  # type: ignore[attr-defined]
        VpiskaHTTPStream if use else HTTPStream)
    hypercorn.protocol.H11Protocol = (  # type: ignore[attr-defined]
        VpiskaH11Protocol if use else H11Protocol)
    hypercorn.trio.run.TCPServer = (  # type: ignore[attr-defined]
        VpiskaTCPServer if use else GuardedTCPServer)
    hypercorn.trio.run.WorkerContext = (  # type: ignore[attr-defined]
        VpiskaWorkerContext if use else WorkerContext)
    hypercorn.trio.tcp_server.TaskGroup = (  # type: ignore[attr-defined]
        VpiskaTaskGroup if use else TaskGroup)
    if enabled and not use:
        log.warning("hypercorn adapter not used: written for hypercorn %s and wsproto's frame "
                    "decoder, found hypercorn %s", ", ".join(sorted(TESTED_HYPERCORN)), version)
    return use
