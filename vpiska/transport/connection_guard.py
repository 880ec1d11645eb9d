"""No fault of one connection stops the server.

hypercorn runs each connection as a task in the server's nursery, so an exception that escapes
a connection's task cancels every other connection and ends the process. Below hypercorn, h11
and wsproto raise LocalProtocolError whenever hypercorn asks them for a transition the peer's
bytes have made impossible (an answer while another answer is being written, a frame after
the close, ...), and hypercorn 0.18 does not catch those. One request and one byte were enough
(tests/test_connection_faults.py).

`GuardedTCPServer` is hypercorn's TCPServer with `run()` — the connection task's one entry point —
wrapped around `serve()` (hypercorn's `run()`, or what the transport serves instead): whatever an
exception ends a connection with, that connection is closed and the fault is logged once, as a
warning with its cause, and the server goes on. The defects themselves are fixed at their root
in this package's other modules; the guard is what makes an unknown one cost a connection
instead of the server, with or without the rest of the transport (hypercorn_classes.py).

Error handling: trio.Cancelled, KeyboardInterrupt and SystemExit (anything not an Exception)
pass through untouched, also when they come in an exception group next to a fault: the group's
faults are logged and the rest is raised again.
"""

from __future__ import annotations

import logging
import traceback

import trio
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)


class GuardedTCPServer(TCPServer):
    """hypercorn's connection task, which ends its connection, not the server, on a fault.

    Resource handling: hypercorn's `run()` closes the socket in its `finally`; the guard closes
    it again (a no-op then) in case the fault came from that close itself.
    """

    async def run(self) -> None:
        try:
            await self.serve()
        except BaseException as raised:
            faults, rest = split_faults(raised)
            if not faults:
                raise
            log.warning("connection failed", extra={"cause": describe(faults),
                                                    "where": where(faults[0])})
            await trio.aclose_forcefully(self.stream)
            if rest is not None:
                raise rest from None

    async def serve(self) -> None:
        """The connection itself: hypercorn's `run()`."""
        await super().run()


def split_faults(raised: BaseException) -> tuple[list[Exception], BaseException | None]:
    """The Exceptions in `raised` (a group's leaves, flattened), and what must propagate: None,
    `raised` itself, or a group of its other leaves."""
    if isinstance(raised, BaseExceptionGroup):
        faults, rest = raised.split(Exception)
        return (_leaves(faults) if faults is not None else []), rest
    if isinstance(raised, Exception):
        return [raised], None
    return [], raised


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            found += _leaves(inner)
        else:
            found.append(inner)
    return found


def describe(faults: list[Exception]) -> str:
    return "; ".join(f"{type(fault).__name__}: {fault}" for fault in faults)


def where(fault: BaseException) -> str:
    """`file:line in function` of the innermost frame of hypercorn or vpiska that `fault` went
    through (h11's or wsproto's own frames say what was refused, not who asked)."""
    frames = traceback.extract_tb(fault.__traceback__)
    ours = [f for f in frames if "/hypercorn/" in f.filename or "/vpiska/" in f.filename]
    if not frames:
        return ""
    frame = (ours or frames)[-1]
    return f"{'/'.join(frame.filename.split('/')[-3:])}:{frame.lineno} in {frame.name}"
