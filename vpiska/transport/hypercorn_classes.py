"""Putting the transport's classes where hypercorn 0.18 looks for them, or hypercorn's own back.

hypercorn's trio worker instantiates its classes through names its modules import (its trio
TCPServer, task group and worker context, its HTTP/1.1 protocol and that protocol's HTTPStream,
the WSStream of its HTTP/1.1 and HTTP/2 protocols). `install` swaps those names, and swaps them
back when the transport is not used, so the choice can be made per server start. The transport
overrides private methods of those classes, so it is used only with the hypercorn versions it
was written against (`TESTED_HYPERCORN`) and only if wsproto's frame decoder is where
frame_limits.py replaces it; otherwise vpiska runs on hypercorn as it is, with the connection
guard (connection_guard.py), and logs that it did.
"""

from __future__ import annotations

import importlib.metadata
import logging

import hypercorn.protocol
import hypercorn.protocol.h2
import hypercorn.protocol.h11
import hypercorn.trio.run
import hypercorn.trio.tcp_server
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext

from vpiska.transport.connection_guard import GuardedTCPServer
from vpiska.transport.frame_limits import fits_wsproto
from vpiska.transport.h11_protocol import VpiskaH11Protocol, VpiskaHTTPStream
from vpiska.transport.task_group import VpiskaTaskGroup
from vpiska.transport.tcp_server import VpiskaTCPServer
from vpiska.transport.worker_context import VpiskaWorkerContext
from vpiska.transport.ws_stream import VpiskaWSStream

log = logging.getLogger(__name__)

TESTED_HYPERCORN = frozenset({"0.18.0"})


def installed_hypercorn() -> str:
    return importlib.metadata.version("hypercorn")


def install(*, enabled: bool = True) -> bool:
    """Use the transport if `enabled` and hypercorn is a tested version; True if in use.

    The connection guard (connection_guard.py) is installed either way.
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
