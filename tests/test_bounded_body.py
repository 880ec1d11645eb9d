"""A request body is taken from the server only as fast as its handler reads it
(vpiska/http/bounded_body.py): the ASGI connection of the app, driven message by message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from quart import request
from quart_trio import QuartTrio

from vpiska.http.bounded_body import BUFFERED_BYTES, BoundedBodyConnection, BoundedRequest

PIECE = 64 * 1024  # what hypercorn hands over per read
PIECES = 16


def bounded_app() -> QuartTrio:
    """An app with vpiska's body handling and nothing else."""
    app = QuartTrio(__name__)
    app.request_class = BoundedRequest
    app.asgi_http_class = BoundedBodyConnection
    return app


def asgi(app: QuartTrio) -> Callable[..., Awaitable[None]]:
    """The app as an ASGI callable taking the plain dicts of these tests."""
    return app


class Client:
    """The server side of one request: hands the app its body a piece per `receive`, and counts
    how many pieces the app has taken."""

    def __init__(self) -> None:
        self.taken = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.taken == PIECES:
            await trio.sleep_forever()  # no disconnect: the client waits for its answer
        self.taken += 1
        return {"type": "http.request", "body": b"x" * PIECE, "more_body": self.taken < PIECES}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def scope(path: str) -> dict[str, Any]:
    return {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"test"), (b"transfer-encoding", b"chunked")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "extensions": {}}


async def test_a_body_is_taken_only_as_fast_as_the_handler_reads_it() -> None:
    app = bounded_app()
    read: list[int] = []
    next_read = trio.Semaphore(0)

    @app.post("/slow")
    async def slow() -> str:
        async for piece in request.body:
            read.append(len(piece))
            await next_read.acquire()
        return "done"

    client = Client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(asgi(app), scope("/slow"), client.receive, client.send)
        for _ in range(PIECES):
            await trio.testing.wait_all_tasks_blocked()
            # Taken but unread, or read at once: at most the bound, plus the piece that
            # crossed it (Quart alone takes all 16 pieces and hands them over as one).
            assert (client.taken * PIECE - sum(read)) <= BUFFERED_BYTES + PIECE
            assert max(read) <= BUFFERED_BYTES + PIECE
            next_read.release()
        await trio.testing.wait_all_tasks_blocked()
        assert sum(read) == PIECES * PIECE
        assert client.sent[-1] == {"type": "http.response.body", "body": b"",
                                   "more_body": False}
        nursery.cancel_scope.cancel()


async def test_a_handler_awaiting_the_whole_body_gets_all_of_it() -> None:
    app = bounded_app()

    @app.post("/whole")
    async def whole() -> str:
        return str(len(await request.get_data()))

    client = Client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(asgi(app), scope("/whole"), client.receive, client.send)
        await trio.testing.wait_all_tasks_blocked()
        assert client.taken == PIECES
        bodies = [m["body"] for m in client.sent if m["type"] == "http.response.body"]
        assert b"".join(bodies) == str(PIECES * PIECE).encode()
        nursery.cancel_scope.cancel()
