"""A fault-injecting TCP proxy for tests: the network path between a node and Redis (or any
two peers), cut or turned into a black hole on demand.

    async with open_tcp_proxy("127.0.0.1", redis.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}"  # give this to the node instead of Redis's
        proxy.cut()      # every connection through it is reset; new ones are reset at once
        proxy.restore()  # new connections go through again
        proxy.freeze()   # connections stay open, but no byte moves either way
        proxy.thaw()     # the bytes held since the freeze are delivered, in order; flow resumes

Everything runs in the test's own trio run; faults take effect when the method returns (a cut
has sent its resets by then), so a test waits only for the peers to notice.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import trio

_CHUNK = 65536
# The longest `wait_for` waits: far longer than any fault takes to show on loopback.
WAIT_SECONDS = 15
# SO_LINGER on with a zero timeout: close() sends a TCP reset at once, which is how a dropped
# path looks to a peer (a plain close sends FIN: the other side hanging up on purpose).
_LINGER_ZERO = struct.pack("ii", 1, 0)


def _reset(stream: trio.SocketStream) -> None:
    with suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    # trio's close() first wakes any task blocked on the socket (ClosedResourceError there).
    stream.socket.close()


class _Connection:
    """One client connection and its connection to the target."""

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = trio.CancelScope()

    def drop(self) -> None:
        """Reset both sides and stop the pumps."""
        _reset(self.client)
        _reset(self.upstream)
        self.scope.cancel()


class TcpProxy:
    """Forwards every connection made to 127.0.0.1:`port` to `target_host`:`target_port`.

    Faults:
    - `cut()` resets every current connection (both sides get a TCP reset) and, until
      `restore()`, resets each new connection as soon as it is accepted. The port stays the
      proxy's, so a peer sees a failed connection, never someone else's server.
    - `freeze()` keeps every connection open but forwards nothing: each direction holds what it
      has read (at most one chunk; the rest waits in the kernel's buffers until the sender
      blocks). New connections are accepted and frozen too. `thaw()` delivers what was held,
      in order, and forwarding goes on, as when a network partition heals.
    A target that refuses the proxy's connection gets the client's connection reset.

    What tests can wait for (`wait_for`): `connections` (open now), `accepted` (ever, cut ones
    included) and `held` (bytes read and not yet delivered because of a freeze).

    Resource handling: `serve` owns the listening socket and every connection; cancelling it
    closes them all.
    """

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0  # known once `serve` has started
        self.accepted = 0
        self.held = 0
        self._connections: set[_Connection] = set()
        self._cut = False
        self._thawed = trio.Event()
        self._thawed.set()
        self._changed = trio.Event()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def url(self, scheme: str = "redis") -> str:
        """The proxy's address as a URL, e.g. `redis://127.0.0.1:PORT` for a node's REDIS_URL."""
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        self._cut = True
        for connection in self._connections:
            connection.drop()
        self._connections.clear()  # gone now, though their tasks are yet to unwind
        self._notify()

    def restore(self) -> None:
        self._cut = False
        self._notify()

    def freeze(self) -> None:
        if self._thawed.is_set():
            self._thawed = trio.Event()
        self._notify()

    def thaw(self) -> None:
        self._thawed.set()
        self._notify()

    async def wait_for(self, condition: Callable[[TcpProxy], bool]) -> None:
        """Return once `condition(self)` holds; trio.TooSlowError after WAIT_SECONDS (nest a
        `trio.fail_after` for a shorter bound)."""
        with trio.fail_after(WAIT_SECONDS):
            while not condition(self):
                await self._changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on 127.0.0.1 (an ephemeral port), report the port, forward until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        self._notify()
        if self._cut:
            _reset(client)
            return
        try:
            upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError:
            _reset(client)
            return
        connection = _Connection(client, upstream)
        if self._cut:  # cut while connecting to the target
            connection.drop()
            return
        self._connections.add(connection)
        self._notify()
        try:
            with connection.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, connection, client, upstream)
                    nursery.start_soon(self._pump, connection, upstream, client)
        finally:
            self._connections.discard(connection)
            self._notify()
            # Both directions ended (or were reset): nothing is left to deliver.
            client.socket.close()
            upstream.socket.close()

    async def _pump(self, connection: _Connection, source: trio.SocketStream,
                    sink: trio.SocketStream) -> None:
        """Copy `source` to `sink`, holding each chunk while the proxy is frozen. An orderly end
        is passed on as one (half-close); a reset or failure on either side resets both."""
        try:
            while data := await source.receive_some(_CHUNK):
                self.held += len(data)
                self._notify()
                try:
                    await self._thawed.wait()
                    await sink.send_all(data)
                finally:
                    self.held -= len(data)
                    self._notify()
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            connection.drop()


@asynccontextmanager
async def open_tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """A running TcpProxy to the target, stopped (every connection closed) on exit."""
    proxy = TcpProxy(target_host, target_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        yield proxy
        nursery.cancel_scope.cancel()
