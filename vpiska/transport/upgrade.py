"""An ordinary WebSocket upgrade request, read off the socket without h11.

Through h11 and hypercorn's protocol and stream objects a WebSocket handshake cost ~0.67 ms of
the core before the app saw it; direct_websocket.py answers one in a fraction of that, and this
parser is where it starts. "Ordinary" means: `GET <path>[?query] HTTP/1.1`, one Host,
`Upgrade: websocket`, a Connection header naming upgrade, `Sec-WebSocket-Version: 13`, a key, no
body, every header line well formed. Anything else (a head split over reads, another path or
method, a malformed or unusual header) is left to hypercorn with the bytes already read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_REQUEST_LINE = re.compile(rb"GET (/[!-~]*) HTTP/1\.1\r\n")
# RFC 9110 §5.1, §5.5: a token, a colon, optional whitespace around a value of visible
# characters (and inner spaces), CRLF. Nothing else: no obs-fold, no control characters.
_HEADER_LINE = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[!-~\x80-\xff](?:[ \t!-~\x80-\xff]*[!-~\x80-\xff])?)?)[ \t]*\r\n")
# A header that changes how a request is read: such a request is left to h11.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"expect"})


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An ordinary WebSocket upgrade request, as read off the socket."""

    path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]  # names lowercased, as h11 gives them
    key: bytes
    subprotocols: list[str]


def parse_upgrade(data: bytes, paths: frozenset[bytes], max_head: int
                  ) -> tuple[Upgrade, bytes] | None:
    """The upgrade request at the start of `data` and the bytes after it, or None if `data`
    does not start with a whole, ordinary upgrade request for one of `paths` (hypercorn reads
    it then)."""
    end = data.find(b"\r\n\r\n", 0, max_head) + 2  # the head's last CRLF
    request = _REQUEST_LINE.match(data, 0, end) if end > 1 else None
    if request is None:
        return None
    path, _, query_string = request[1].partition(b"?")
    if path not in paths:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    upgrade = version = key = None
    connection: list[bytes] = []
    subprotocols: list[str] = []
    at = request.end()
    while at < end:
        # Anchored at each line: a search would try every offset of a bad line again
        # (seconds of CPU for one 16 KiB line).
        header = _HEADER_LINE.match(data, at, end)
        if header is None:
            return None
        at = header.end()
        name, value = header[1].lower(), header[2]
        headers.append((name, value))
        if name == b"host":
            hosts += 1
        elif name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection += (token.strip().lower() for token in value.split(b","))
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-protocol":
            subprotocols += (token.strip().decode("latin-1") for token in value.split(b","))
        elif name in _FRAMING:
            return None
    if (hosts != 1 or upgrade is None or upgrade.lower() != b"websocket"
            or b"upgrade" not in connection or version != b"13" or not key):
        return None
    return Upgrade(path, query_string, headers, key, subprotocols), data[end + 2:]
