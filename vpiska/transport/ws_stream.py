"""hypercorn's WebSocket stream, failing frames properly and never waiting for a finished app.

What it changes in hypercorn 0.18's `WSStream`:

- **A frame wsproto cannot parse gets its close code.** wsproto reports invalid UTF-8 in a text
  message, a bad opcode, … as a CloseConnection with the RFC 6455 code (1007, 1002) while the
  connection is still OPEN; hypercorn then drops the TCP connection without sending that close
  frame. RFC 6455 §7.1.7 says the endpoint SHOULD send it, so the client learns why. So does a
  message over the size bound (frame_limits.py, and hypercorn's own bound in characters).
- **Bytes that come before the handshake is answered wait for the answer.** A client may send
  its first frame in the packet of its handshake, or keep sending after a refused one.
  hypercorn answers such bytes with a 400 at once, whatever the app is doing: written in the
  middle of the app's own answer, it made h11 raise LocalProtocolError and stopped the server
  (one request and one byte). Here they wait, and the socket's reader with them, until the app
  has answered: an accepted socket then decodes them as its first frames, a refused one drops
  them and closes after the answer.
- **Nothing waits for an app that has finished.** After an app has closed its WebSocket, bytes
  still arriving were queued for it on a bounded channel nobody read any more, and the
  socket's reader, then the task closing the connection, waited on it forever. Messages are
  dropped once the app has closed, and the disconnect is not queued for a finished app.
- **No ping task per socket, and no permessage-deflate.** On a plain socket the worker's pinger
  pings it (pinger.py); elsewhere (TLS, HTTP/2) hypercorn's ping loop runs, one interval after
  the accept, and is cancelled as soon as the stream closes instead of sleeping out its
  interval (which held every closed WebSocket, and a graceful shutdown, that long). The
  bounded frame decoder is installed at the accept (frame_limits.py).
- **Frames written straight to the socket.** On a plain socket the ASGI scope carries a
  DirectSink (direct_sink.py, vpiska/sink.py) for the member's frames.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from hypercorn.protocol.events import Body, Data, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from vpiska.sink import SINK
from vpiska.transport.direct_sink import DirectSink, PlainSocket
from vpiska.transport.frame_limits import bound_messages
from vpiska.transport.socket_io import write_now
from vpiska.transport.worker_context import VpiskaWorkerContext

log = logging.getLogger(__name__)


class VpiskaWSStream(WSStream):
    """hypercorn's WebSocket stream with the changes above."""

    _pings: trio.CancelScope | None = None  # hypercorn's ping loop, where it runs
    _plain: PlainSocket | None = None  # the connection's plain socket, once the upgrade is sent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True once the app has accepted or refused the handshake, or the stream closed: until
        # then bytes after the request wait for it, and so does the socket's reader, on
        # `_decision` (made only then: most clients wait for the answer).
        self._decided = False
        self._decision: trio.Event | None = None
        self._app_done = False

    def write_through(self, socket: PlainSocket) -> None:
        """The upgrade is answered on a plain TCP socket (h11_protocol.py): frames and pings
        may be written straight to it."""
        self._plain = socket

    async def handle(self, event: StreamEvent) -> None:
        if isinstance(event, Body | Data) and not self.closed and not self._decided:
            if self._decision is None:
                self._decision = trio.Event()
            await self._decision.wait()
        if isinstance(event, Body | Data) and not self.closed:
            if not self.handshake.accepted:
                return  # the app refused: the connection ends after its answer, unread
        if isinstance(event, StreamClosed) and self._app_done:
            self.closed = True  # nobody is left to tell; telling could wait forever
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
        # hypercorn 0.18.0's accept, with its ping task replaced by the worker's pinger.
        self.handshake.extensions = None  # no permessage-deflate (frame_limits.py)
        self.state = ASGIWebsocketState.CONNECTED
        status_code, headers, self.connection = self.handshake.accept(
            message.get("subprotocol"), message.get("headers", []))
        # The protocol hands over the plain socket, if there is one, as it sends the answer.
        await self.send(Response(stream_id=self.stream_id, status_code=status_code,
                                 headers=headers))
        await self.config.log.access(self.scope, {"status": status_code, "headers": []},
                                     time.time() - self.start_time)
        # The reader is held until `_decided`, so no byte has reached the new connection yet.
        bound_messages(self.connection, self.config.websocket_max_message_size)
        plain = self._plain
        if self.config.websocket_ping_interval is not None:
            if plain is not None and isinstance(self.context, VpiskaWorkerContext):
                self.context.pinger(self.config.websocket_ping_interval).add(self)
            else:
                self.task_group.spawn(self._send_pings)
        if plain is not None:
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[SINK] = DirectSink(self, plain)

    async def _send_pings(self) -> None:
        with trio.CancelScope() as self._pings:
            # hypercorn pings at once on accept: a send per handshake for a peer that has
            # just proved it is there. Start one interval later.
            await trio.sleep(self.config.websocket_ping_interval or 0)
            await super()._send_pings()

    def send_ping(self) -> bool:
        """Ping the peer now, for the worker's pinger; False once the socket is done."""
        if self.closed or self.connection.state is not ConnectionState.OPEN:
            return False
        data = self.connection.send(Ping())
        plain = self._plain
        written = 0
        if plain is not None and not plain.send_lock.locked():
            try:
                written = write_now(plain.sock, data)
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
        # own (state still OPEN) is sent to the peer and ends the connection; so does a
        # message over the size bound; messages after the app closed are dropped.
        for event in self.connection.events():
            if isinstance(event, Message):
                if self.state is not ASGIWebsocketState.CONNECTED:
                    continue
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:  # a bound in characters; frame_limits.py's is bytes
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
