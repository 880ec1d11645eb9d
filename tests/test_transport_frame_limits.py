"""vpiska/transport/frame_limits.py: a message over the bound is refused by its frame headers,
on a bare wsproto connection (no socket)."""

from __future__ import annotations

import struct

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

from vpiska.transport.frame_limits import bound_messages, fits_wsproto

BOUND = 1000


def header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """A masked client frame's header (zero mask) for `length` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + b"\0\0\0\0"
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length) + b"\0\0\0\0"
    return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return header(opcode, len(payload), fin=fin) + payload


def received(data: bytes) -> list[Event]:
    connection = Connection(ConnectionType.SERVER)
    bound_messages(connection, BOUND)
    connection.receive_data(data)
    return list(connection.events())


def test_the_installed_wsproto_keeps_its_decoder_where_the_bound_replaces_it() -> None:
    assert fits_wsproto()


@pytest.mark.parametrize("data", [
    pytest.param(header(0x1, BOUND + 1), id="one-frame-header"),
    pytest.param(header(0x2, 2**62), id="absurd-length"),
    pytest.param(frame(0x1, b"a" * 600, fin=False) + frame(0x9, b"ping")
                 + header(0x0, 401, fin=False), id="fragments-adding-up"),
])
def test_a_message_over_the_bound_is_refused_at_its_header(data: bytes) -> None:
    events = received(data)
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == CloseReason.MESSAGE_TOO_BIG


def test_a_fragmented_message_within_the_bound_is_delivered() -> None:
    events = received(frame(0x1, b"a" * 600, fin=False) + frame(0x9, b"ping")
                      + frame(0x0, b"b" * 400))
    assert [type(event) for event in events] == [TextMessage, Ping, TextMessage]
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == "a" * 600 + "b" * 400


def test_the_count_starts_again_with_each_message() -> None:
    events = received(frame(0x1, b"a" * 800) + frame(0x1, b"b" * 800))
    assert [len(e.data) for e in events if isinstance(e, TextMessage)] == [800, 800]
