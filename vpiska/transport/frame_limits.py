"""A client's WebSocket message is refused by its frame headers, before its payload is read.

hypercorn bounds a message only once wsproto has decoded it into its buffer: a 10 MB frame was
read, unmasked, UTF-8 decoded and copied in full before its 1009 close, and its pieces were
freed only when the connection ended; 30 such frames took the server's RSS from 62 to 264 MB,
and it never came back. Here the decoder looks at each data frame's header and refuses the
message (wsproto's ParseFailed with 1009, MESSAGE_TOO_BIG) as soon as the header shows it over
the bound, whether one frame says so or the running total of a fragmented message: at most one
read's bytes of the payload are ever held. The WebSocket then sends the 1009 close, and the
connection ends without another byte fed to wsproto.

permessage-deflate is not offered back (hypercorn accepts it whenever a client asks): a frame's
header gives its compressed size only, and 64 KiB of deflate inflate to 64 MiB. The server's
own frames are written uncompressed anyway (vpiska/actors/frames.py).

wsproto builds its frame decoder inside its Connection, so the bounded one replaces it right
after the Connection is made, before it has seen a byte. `fits_wsproto()` checks that the
installed wsproto is built the way this relies on.
"""

from __future__ import annotations

from wsproto.connection import Connection, ConnectionType
from wsproto.frame_protocol import CloseReason, FrameDecoder, Opcode, ParseFailed


class BoundedFrameDecoder(FrameDecoder):
    """wsproto's frame decoder, refusing any message over `max_message_bytes` at its headers."""

    def __init__(self, decoder: FrameDecoder, max_message_bytes: int) -> None:
        super().__init__(decoder.client, decoder.extensions)
        self.max_message_bytes = max_message_bytes
        self._message_bytes = 0  # payload of the fragmented message so far

    def parse_header(self) -> bool:
        if not super().parse_header():
            return False
        header = self.header
        assert header is not None
        if header.opcode.iscontrol():  # at most 125 bytes, and may come between fragments
            return True
        total = header.payload_len
        if header.opcode is Opcode.CONTINUATION:
            total += self._message_bytes
        if total > self.max_message_bytes:
            raise ParseFailed(f"message of {total} bytes or more, over {self.max_message_bytes}",
                              CloseReason.MESSAGE_TOO_BIG)
        self._message_bytes = 0 if header.fin else total
        return True


def bound_messages(connection: Connection, max_message_bytes: int) -> None:
    """Make `connection` (new, no bytes received yet) refuse messages over the bound."""
    proto = connection._proto
    proto._frame_decoder = BoundedFrameDecoder(proto._frame_decoder, max_message_bytes)


def fits_wsproto() -> bool:
    """True if the installed wsproto keeps its frame decoder where `bound_messages` swaps it."""
    proto = getattr(Connection(ConnectionType.SERVER), "_proto", None)
    decoder = getattr(proto, "_frame_decoder", None)
    return type(decoder) is FrameDecoder and hasattr(decoder, "parse_header")
