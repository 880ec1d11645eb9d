"""hypercorn's HTTP/1.1 protocol, writing each response in one send.

hypercorn writes a response's head, its body and its end (an empty write, or the last chunk) as
separate sends, each taking the connection's send lock. `VpiskaH11Protocol` holds them and sends
them together once the response ends (also an error response, or a refused WebSocket
handshake); a body the app streams (`more_body`) goes out with each piece the app hands over,
and held bytes are sent once they pass FLUSH_BYTES, so a large download is written in bounded
pieces. The Date and Server headers come from server_headers.py.

Once a WebSocket upgrade is answered the protocol drops h11's request state (about 1.4 KiB a
socket, kept for life otherwise) and, on a plain TCP socket, hands the stream that socket, so
that its frames and pings are written straight to it (ws_stream.py, direct_sink.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h11
from hypercorn.events import RawData
from hypercorn.protocol.events import Data, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.typing import ASGISendEvent, H11SendableEvent

from vpiska.transport.direct_sink import PlainSocket
from vpiska.transport.server_headers import server_headers
from vpiska.transport.ws_stream import VpiskaWSStream

# The most bytes of a response held to be sent together; a longer or streamed body is sent in
# pieces of about this size, or as the app hands them over.
FLUSH_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Flush(StreamEvent):
    """Send what is held of the response now: the app streams its body (more_body)."""


class VpiskaHTTPStream(HTTPStream):
    """hypercorn's HTTP stream, telling the protocol to send a streamed body's held piece."""

    async def app_send(self, message: ASGISendEvent | None) -> None:
        await super().app_send(message)
        if (message is not None and message["type"] == "http.response.body"
                and message.get("more_body", False) and not self.closed):
            await self.send(_Flush(stream_id=self.stream_id))


class VpiskaH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, writing a response in one send."""

    # The connection's plain TCP socket, given by the TCP server before any byte is handled;
    # None over TLS.
    plain_socket: PlainSocket | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[bytes] = []
        self._held_bytes = 0

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, _Flush):
            await self._flush()
        elif isinstance(event, Response) and event.status_code >= 200:
            headers = [*event.headers, *server_headers(self.config)]
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
                # a WebSocket need not keep its request state for life.
                self.connection.h11_connection = _UPGRADED
                stream = self.stream
                if self.plain_socket is not None and isinstance(stream, VpiskaWSStream):
                    stream.write_through(self.plain_socket)
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
