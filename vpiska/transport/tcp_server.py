"""hypercorn's trio TCPServer: one connection's reader, writer and close.

What it changes in hypercorn 0.18's `TCPServer`:

- **Reads off the socket.** Each read went through trio's stream and socket layers inside its
  own cancel scope. The reader reads the non-blocking socket itself (socket_io.py), waiting with
  `wait_readable` only when it is empty, under one cancel scope whose deadline is set while it
  reads: less CPU per request, and less memory per waiting connection.
- **The keep-alive timer is a deadline on the read.** hypercorn stops its idle timer (a lock)
  when a request arrives and starts a new timer task (a lock and `nursery.start`) after each
  response: about an eighth of a small request's CPU. Worse, it restarts the timer from the
  finishing app task, which is being cancelled, so the timer never ran: an idle HTTP connection
  was never closed after keep_alive_timeout, and held a graceful shutdown for its full grace
  period. Here the deadline moves when the connection turns idle or busy; the worker context
  knows the idle connections, and a shutdown ends their reads at once (worker_context.py).
  Under another worker context, hypercorn's timer is restarted shielded.
- **A deadline for request bodies** (`ServerConfig.body_timeout`, BODY_TIMEOUT_SECONDS).
  hypercorn's read_timeout bounds each read, so a body sent a byte a second held its
  connection (and its handler) forever. An HTTP/1.1 connection whose request body has not fully
  arrived within the deadline, counted from the request's head, is closed; a handler reading it
  sees the client disconnect and ends without an answer.
- **A send nobody competes with takes no lock.** Every write took the send lock and a shielded
  cancel scope. When the lock is free no other send is under way, so `send_raw` writes at once
  to the socket; only what the socket did not take is sent under the lock, shielded.
- **A close during a send ends the connection, not the server.** hypercorn's close sends EOF
  without taking the send lock, so a ping (its own task) could call `send_all` while the EOF
  was in flight; trio raises BusyResourceError there, which hypercorn does not catch, and it
  stopped the whole server. One client sending an invalid frame right after connecting was
  enough. It is treated as the connection closing, like Broken/ClosedResourceError.
- **Closing when asked to close, and nothing waits for a finished app.** A response with
  `Connection: close` ends in the app task, which is being cancelled right then; hypercorn's
  close awaited there, was cancelled, and the socket stayed open until the read timeout. The
  close is shielded. A reader waiting for an app that will never take its bytes is stopped.
- **Closing without a reset.** When the server ends a connection (its WebSocket close, or a
  response with `Connection: close`) the peer may still be sending: a member flooding the room,
  a body the server refused unread. A socket closed with unread bytes, or that receives more,
  answers with a TCP reset; the peer's send then failed before it had read the close frame or
  the answer already on its way (a flooder closed with 4009 saw 1006). The connection is closed
  as browsers and nginx expect: the end of the stream is sent, what the peer still sends is read
  and dropped until it closes too or LINGER_SECONDS pass, then the socket is closed. A shutdown
  ends these waits; those it starts itself (its 1001 closes, or 1012 when a cluster node hands
  its rooms over) last SHUTDOWN_LINGER_SECONDS at most.
- **WebSockets below hypercorn.** A connection whose first read holds a whole, ordinary upgrade
  request for one of `ServerConfig.direct_websocket_paths` (upgrade.py) is served by
  direct_websocket.py in the connection's own task; anything else goes to hypercorn with the
  bytes already read. Past `ServerConfig.max_pending_handshakes` such handshakes in progress,
  a new one is answered 503 at once (admission.py).

The connection's lifecycle is a `ConnectionState` (lifecycle.py).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.tcp_server import MAX_RECV
from hypercorn.trio.worker_context import TrioSingleTask
from hypercorn.utils import parse_socket_addr

from vpiska import metrics
from vpiska.transport.admission import Admission
from vpiska.transport.config import ServerConfig
from vpiska.transport.connection_guard import GuardedTCPServer
from vpiska.transport.direct_sink import PlainSocket
from vpiska.transport.direct_websocket import DirectWebSocket
from vpiska.transport.h11_protocol import VpiskaH11Protocol
from vpiska.transport.lifecycle import ConnectionState
from vpiska.transport.pinger import Pinger
from vpiska.transport.server_headers import server_headers
from vpiska.transport.socket_io import read_ready, write_now
from vpiska.transport.upgrade import parse_upgrade
from vpiska.transport.worker_context import VpiskaWorkerContext

log = logging.getLogger(__name__)

# Longest a connection the server ends waits for its peer to stop sending.
LINGER_SECONDS = 2.0
# The same for a connection the server ends while it shuts down: a peer answers a close at
# once, and a shutdown's deadline is not these waits' to spend.
SHUTDOWN_LINGER_SECONDS = 0.5


class VpiskaTCPServer(GuardedTCPServer):
    """One connection, as hypercorn's TCPServer with the changes above.

    Resource handling: owns the connection's socket and closes it once (`close_now`), whoever
    asks first; a second caller waits for the first close to end.
    """

    # The reader's own: its cancel scope and task, and what it read before hypercorn's protocol
    # was made.
    _reading: trio.CancelScope | None = None
    _reader: trio.lowlevel.Task | None = None
    _first: bytes | None = None
    peer_address: tuple[str, int] | None = None  # of a direct WebSocket
    local_address: tuple[str, int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = ConnectionState.OPEN
        self._closed: trio.Event | None = None  # made when closing begins, set once closed
        # The keep-alive idle timer is a deadline on the read, not a task.
        self._idle_deadline = math.inf
        self._read_until = math.inf  # the read's own deadline (read_timeout, body_timeout)
        self._receiving = False  # the reader is waiting for bytes: its deadline applies
        if isinstance(self.context, VpiskaWorkerContext):
            self.idle_task = _IdleDeadline(self)
        stream: Any = self.stream
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def serve(self) -> None:
        """A connection whose first read is an ordinary upgrade request to a direct WebSocket
        path is served by direct_websocket.py, or refused at once past the bound on handshakes
        in progress (admission.py); any other by hypercorn, from the bytes already read."""
        paths = self.config.direct_websocket_paths if isinstance(self.config, ServerConfig) \
            else frozenset()
        if self._sock is None or not paths:
            await super().serve()
            return
        first = await self._first_read()
        if not first:  # nothing within keep_alive_timeout, a shutdown, or the peer left
            await self.close_now()
            return
        upgrade = parse_upgrade(first, paths, self.config.h11_max_incomplete_size)
        app = self.app
        if upgrade is None or not isinstance(app, ASGIWrapper):
            self._first = first
            await super().serve()
            return
        admission = self._admission()
        if admission is not None and not admission.admit():
            # The surplus of a storm: answered before anything.
            await self.send_raw(admission.refusal())
            await self.close_now(linger=True)
            return
        sock = self._sock
        try:
            family = sock.family
            self.peer_address = parse_socket_addr(family, sock.getpeername())
            self.local_address = parse_socket_addr(family, sock.getsockname())
        except OSError:  # the peer is gone already (hypercorn's run passes these over too)
            if admission is not None:
                admission.finished()
            await self.close_now()
            return
        handshake_over = None if admission is None else admission.finished
        websocket = DirectWebSocket(self, sock, *upgrade, handshake_over)
        # The request's bytes and head are the WebSocket's now, to keep what it needs of them:
        # this frame, waiting for the socket's whole life, keeps none.
        del first, upgrade
        # hypercorn's wrapper would be one more frame held for the socket's life.
        await websocket.serve(app.app)

    def _admission(self) -> Admission | None:
        """The worker's bound on handshakes in progress, if one is set."""
        limit = self.config.max_pending_handshakes if isinstance(self.config, ServerConfig) \
            else None
        context = self.context
        if limit is None or not isinstance(context, VpiskaWorkerContext):
            return None
        return context.admission(limit)

    async def _first_read(self) -> bytes | None:
        """The connection's first bytes; None if none came within keep_alive_timeout (at once
        in a shutdown) or read_timeout, or the connection broke: the bound hypercorn's idle
        timer sets a new connection."""
        assert self._sock is not None
        ready = read_ready(self._sock)  # most clients send their request with the connection
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
        no lock and no shielded scope; what the socket did not take is sent under the lock,
        shielded, as hypercorn sends."""
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

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """Date, Server and the other headers hypercorn adds to every response."""
        return server_headers(self.config)

    def pinger(self, interval: float) -> Pinger | None:
        """The worker's pinger of WebSockets, if the worker context is the transport's."""
        context = self.context
        return context.pinger(interval) if isinstance(context, VpiskaWorkerContext) else None

    def lifespan_state(self) -> dict[str, Any]:
        """A connection's copy of the app's lifespan state, as hypercorn gives each scope."""
        return dict(self.state)

    async def _read_data(self) -> None:
        # hypercorn 0.18.0's loop, with five changes: a WebSocket whose read times out (a peer
        # silent for two ping intervals, server.py) is counted as a keep-alive disconnect; a
        # request body must arrive within body_timeout; the loop ends when the connection is
        # closed, also if it was waiting for the app to take its bytes; an idle keep-alive
        # connection's read ends at its idle deadline; one cancel scope serves all of it, and
        # reads go to the socket itself.
        self._reader = trio.lowlevel.current_task()
        protocol = self.protocol.protocol
        if self._sock is not None and isinstance(protocol, VpiskaH11Protocol):
            protocol.plain_socket = PlainSocket(self._sock, self.send_lock, self.protocol_send)
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
                        await self.close_now()
                        break
                    await self.protocol.handle(RawData(data))
                    if data == b"":
                        break
                    if not self._receiving_body():
                        body_deadline = math.inf
                    elif body_deadline == math.inf:
                        body_deadline = received_at + (self._body_timeout() or math.inf)
            # A deadline passed in a read (not a close that stopped the reader).
            if reading.cancelled_caught and self._state is ConnectionState.OPEN:
                self._timed_out(body_deadline)
                await self.close_now()  # the peer sees the end now, not after the app's
        except trio.Cancelled:
            # The connection is cut (a shutdown past its deadline): a write waiting, shielded,
            # for a peer that stopped reading ends only with the socket, and the connection's
            # task group waits for it.
            await self.close_now()
            raise
        finally:
            self._idle(False)
        await self.protocol.handle(Closed())

    async def _receive(self) -> bytes:
        """What the socket has, waiting for it if need be; trio's `receive_some` without its
        layers. b"" at the end of the stream.

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
        LINGER_SECONDS pass."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                while await self._receive():
                    pass
            except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
                pass  # broken, closed, or another task reads it: nothing left to wait for

    def _idle(self, idle: bool) -> None:
        """The connection is between requests (or no longer): its read ends at keep_alive_timeout,
        at once if the server is shutting down."""
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

    def close_if_idle(self) -> None:
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

    async def close_now(self, *, linger: bool = False) -> None:
        """Close the connection, shielded: a close is often asked for by a task being
        cancelled right then. `linger`: see `_close`."""
        with trio.CancelScope(shield=True):
            await self._close(linger=linger)

    async def _close(self, *, linger: bool = False) -> None:
        """hypercorn's close (the end of the stream, then the socket), done once: a second
        caller waits for the first. `linger`: the server ends the connection, so what the peer
        still sends in between is read and dropped."""
        if self._closed is not None:
            await self._closed.wait()
            return
        self._state = self._state.advance(ConnectionState.CLOSING)
        closed = self._closed = trio.Event()
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
                    if context.terminated.is_set():  # a close of the shutdown's own
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
                self._state = self._state.advance(ConnectionState.CLOSED)
                closed.set()

    async def _initiate_server_close(self) -> None:
        # The idle timer's close (keep_alive_timeout, or a shutdown) closed the socket under a
        # reader that could be waiting for its app, never to be woken: close like the rest.
        await self._close_connection()

    async def _close_connection(self) -> None:
        """Stop the reader, close the socket (reading what the peer still sends), tell the
        protocol.

        Closing is what a protocol asks for last, often from an app task being cancelled right
        then. The reader may be waiting for an app that will never take its bytes or
        restart its cycle: it is stopped at once, or, when it is the task closing, at its
        next checkpoint, once it has told the protocol.
        """
        closing_reader = trio.lowlevel.current_task() is self._reader
        if self._state is ConnectionState.OPEN:
            self._state = ConnectionState.OPEN.advance(ConnectionState.STOPPING)
        if self._reading is not None and not closing_reader:
            self._reading.cancel()  # it stops waiting for the socket at once: the close reads it
        await self.close_now(linger=True)
        await self.protocol.handle(Closed())
        if self._reading is not None and closing_reader:
            self._reading.cancel()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if not await self.send_raw(event.data):
                await self._close_connection()  # a peer that reset the connection
        elif isinstance(event, Updated) and not isinstance(self.idle_task, _IdleDeadline):
            if event.idle:  # hypercorn's timer task, restarted shielded
                with trio.CancelScope(shield=True):
                    await self.idle_task.restart(self._task_group, self._idle_timeout)
            else:
                await self.idle_task.stop()
        elif isinstance(event, Closed):
            await self._close_connection()
        else:
            await super().protocol_send(event)


class _IdleDeadline(TrioSingleTask):
    """hypercorn's keep-alive timer as a deadline on the connection's read: restarting and
    stopping it start no task, take no lock and do not checkpoint."""

    def __init__(self, server: VpiskaTCPServer) -> None:
        self._server = server

    async def restart(self, task_group: Any, action: Any) -> None:
        self._server._idle(True)

    async def stop(self) -> None:
        self._server._idle(False)
