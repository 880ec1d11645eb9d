"""vpiska's transport: hypercorn 0.18's trio worker with its defects fixed and its per-request
and per-socket costs taken out, and event WebSockets served below it (docs/transport.md).

Laid out as hypercorn lays out `hypercorn/trio/`, one module per concern:

- hypercorn_classes.py: `install`, the transport's classes where hypercorn looks for them
- config.py: hypercorn's Config with the transport's settings
- worker_context.py: the worker's idle connections, lingering closes and pinger
- tcp_server.py: one connection's reader, writer and close
- connection_guard.py: a fault ends its connection, never the server
- task_group.py, app_inbox.py: an app's incoming messages without a task switch
- h11_protocol.py, server_headers.py: a response in one send
- ws_stream.py: hypercorn's WebSocket stream, failing frames properly
- direct_sink.py: a member's frames straight to the socket on hypercorn's path
- upgrade.py, direct_websocket.py: WebSockets served off their sockets
- frame_limits.py: oversized messages refused by their frame headers
- pinger.py: one task pings every WebSocket
- socket_io.py: reads and writes without waiting
- lifecycle.py: the connection's and the direct WebSocket's states

Only vpiska/server.py (the composition root) imports this package; the ASGI side knows only
vpiska/sink.py.
"""

from vpiska.transport.config import ServerConfig
from vpiska.transport.hypercorn_classes import TESTED_HYPERCORN, install, installed_hypercorn

__all__ = ["TESTED_HYPERCORN", "ServerConfig", "install", "installed_hypercorn"]
