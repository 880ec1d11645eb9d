"""Request bodies taken from hypercorn only as fast as the handler reads them.

Quart's ASGI connection puts each piece of a request body into the request's `Body` the moment
hypercorn hands it over, whether or not the handler has read the pieces before it. A handler
slower than its client (an upload spooled to disk a piece at a time) then lets the body pile up
in memory: twenty parallel 20 MiB uploads on loopback held tens of MiB at once. Here the
connection asks hypercorn for the next piece only while less than BUFFERED_BYTES wait unread;
past that, hypercorn's queue for the app fills and it stops reading the socket, so the rest of
the body waits in the client and in TCP, not in this process.

A handler that awaits the whole body at once (`await request.body`, `get_data`) lifts the bound
for its request: it asked for all of it in memory, and would otherwise wait for ever.

What the bound couples: a body now arrives as fast as its handler reads it, so
BODY_TIMEOUT_SECONDS (the transport's body deadline, vpiska/transport/tcp_server.py) bounds the
handler's reading too (an upload spooled to disk reads far faster than that needs); and while
the bound holds, a client's disconnect is seen once the handler reads on or answers, which
every handler does at once.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.wrappers import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest

# Unread body bytes past which no more are taken: one of hypercorn's reads (MAX_RECV).
BUFFERED_BYTES = 64 * 1024


class BoundedBody(TrioBody):
    def __init__(self, expected_content_length: int | None,
                 max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._bounded = True
        self._read = trio.Event()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._read.set()
        return data

    def __await__(self) -> Generator[Any, None, Any]:
        self._bounded = False
        self._read.set()
        return super().__await__()

    async def wait_for_room(self) -> None:
        """Return once the handler has read the body below BUFFERED_BYTES (or wants it all,
        or the body has failed)."""
        while self._bounded and self._must_raise is None and len(self._data) >= BUFFERED_BYTES:
            self._read = trio.Event()
            await self._read.wait()


class BoundedRequest(TrioRequest):
    body_class = BoundedBody


class ResponseCutShort(Exception):
    """A streamed response that cannot send all it announced (its source broke after the head
    was sent). Raised from the response's body, it ends the request without a traceback: the
    raiser has logged why, and the connection closes, so the client sees the body cut short."""


class BoundedBodyConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, taking body pieces as BoundedBody has room for them, and
    ending a request whose response was cut short (ResponseCutShort) quietly."""

    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, send: ASGISendCallable
    ) -> None:
        try:
            await super().handle_request(nursery, request, send)
        except ResponseCutShort:
            nursery.cancel_scope.cancel()

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            if isinstance(body, BoundedBody):
                await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()
