"""Where a member's whole WebSocket frames go when the transport can write them itself.

The transport (vpiska/transport/) puts a `Sink` in a WebSocket's ASGI scope, under the `SINK`
extension, when the connection is a plain TCP socket it writes to: then a member's frames skip
the ASGI `send` and its task switch (vpiska/http/outbox.py). The ASGI side imports this module,
never the transport, which stays below ASGI and is known only to vpiska/server.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

SINK = "vpiska.direct_sink"  # the ASGI scope extension that carries a connection's Sink


class Sink(Protocol):
    """Writes whole WebSocket frames to one connection, in order with its other sends."""

    def write_now(self, data: bytes) -> int:
        """Write what the socket takes at once; 0 if another send is under way, the socket is
        full or the WebSocket is closing. The caller sends the rest with `send_frames`.

        Error handling: trio.BrokenResourceError when the connection has broken (the peer
        reset it), so a vanished client is told apart from a slow one.
        """

    async def send_frames(self, data: bytes) -> None:
        """Write `data` after everything written before it, waiting for room."""

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` as a task of the connection (it ends with the connection, if not before).

        Error handling: RuntimeError once the connection's tasks are ending.
        """


def sink_of(scope: Mapping[str, Any]) -> Sink | None:
    """The Sink of a WebSocket connection, if the transport gave it one."""
    return cast("Sink | None", scope.get("extensions", {}).get(SINK))
