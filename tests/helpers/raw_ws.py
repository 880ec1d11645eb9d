"""A hand-rolled WebSocket client for what well-behaved libraries refuse to do: send invalid
frames, or never answer a ping."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import trio

from tests.helpers.clients import socket_url
from tests.helpers.member_client import MemberClient
from tests.helpers.server import Server


def resource(server: Server, token: str | None, event_id: str, **params: Any) -> str:
    """The request target of the live room's URL (socket_url), as RawSocket.connect takes it."""
    return socket_url(server, token, event_id, **params).split(server.ws_url, 1)[1]


class RawSocket:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self._sending = trio.Lock()  # a pong from the reading task and a line from the test

    @classmethod
    async def connect(cls, port: int, resource: str, *, receive_buffer: int | None = None,
                      extra_headers: bytes = b"") -> RawSocket:
        """An upgraded WebSocket; fails the test if the server refuses the upgrade.
        `extra_headers`: whole header lines to add to the request."""
        raw, status = await cls._upgrade(port, resource, receive_buffer, extra_headers)
        if status != 101:
            await raw.stream.aclose()
            raise AssertionError(f"upgrade refused with HTTP {status}")
        return raw

    @classmethod
    async def handshake_status(cls, port: int, resource: str) -> int:
        """The HTTP status the server answers an upgrade request with."""
        raw, status = await cls._upgrade(port, resource, None)
        await raw.stream.aclose()
        return status

    @classmethod
    async def _upgrade(cls, port: int, resource: str, receive_buffer: int | None,
                       extra_headers: bytes = b"") -> tuple[RawSocket, int]:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        raw = cls(trio.SocketStream(sock))
        key = base64.b64encode(os.urandom(16)).decode()
        await raw.stream.send_all(
            f"GET {resource} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n".encode() + extra_headers + b"\r\n")
        while b"\r\n\r\n" not in raw.buffer:
            raw.buffer += await raw.stream.receive_some(65536)
        head, raw.buffer = raw.buffer.split(b"\r\n\r\n", 1)
        return raw, int(head.split(b" ", 2)[1])

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        async with self._sending:
            await self.stream.send_all(header + mask + masked)

    async def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def next_frame(self) -> tuple[int, bytes]:
        first, second = await self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read(8))
        return first & 0x0F, await self._read(length)

    async def next_text(self) -> str:
        """The next text frame, past pings (stock hypercorn pings the moment it accepts)."""
        while True:
            opcode, payload = await self.next_frame()
            if opcode == 0x1:
                return payload.decode()
            if opcode == 0x8:
                raise AssertionError(f"closed ({payload[:2].hex()}) before a text frame")

    async def pings_until_closed(self) -> int:
        """Read frames until the server ends the connection; how many of them were pings."""
        pings = 0
        while True:
            try:
                opcode, _ = await self.next_frame()
            except EOFError:
                return pings
            pings += opcode == 0x9

    async def close_code(self) -> int:
        """Read frames until the server's close frame; its status code."""
        return (await self.texts_until_close())[1]

    async def texts_until_close(self) -> tuple[list[str], int]:
        """Read frames until the server's close frame: the text frames before it, and its
        status code."""
        texts: list[str] = []
        while True:
            opcode, payload = await self.next_frame()
            if opcode == 0x1:
                texts.append(payload.decode())
            elif opcode == 0x8:
                return texts, int(struct.unpack("!H", payload[:2])[0])


class RawMember(MemberClient):
    """A cheap member for crowd tests, over a RawSocket.

    trio-websocket costs ~20 ms of client CPU per connection, which made a 1,000-member test
    measure the test client; this one costs a fraction. It answers pings only when told to
    (`answer_pings`), so crowd tests run with a long ping interval. The pings it got are
    counted: each is the server's own word that one more ping interval has passed.
    """

    def __init__(self, raw: RawSocket, *, answer_pings: bool = False) -> None:
        super().__init__()
        self.raw = raw
        self.answer_pings = answer_pings
        self.pings = 0

    async def collect(self) -> None:
        close_code = None
        try:
            while True:
                opcode, payload = await self.raw.next_frame()
                if opcode == 0x8:
                    close_code = int(struct.unpack("!H", payload[:2])[0])
                    return
                if opcode == 0x9:
                    self.pings += 1
                    if self.answer_pings:
                        await self.raw.send_frame(0xA, payload)
                    self._changed_now()
                elif opcode == 0x1:
                    self._received(payload.decode())
        except (EOFError, trio.ClosedResourceError, trio.BrokenResourceError):
            return
        finally:
            self._ended(close_code)

    async def send(self, frame: str) -> None:
        await self.raw.send_frame(0x1, frame.encode())


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame with a zero mask (valid, and the payload stays readable)."""
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = struct.pack("!BB", first, 0x80 | len(payload))
    elif len(payload) < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, len(payload))
    return header + b"\0\0\0\0" + payload


async def until_closed(raw: RawSocket) -> None:
    """Read (and drop) frames until the server closes the TCP connection."""
    try:
        while True:
            await raw.next_frame()
    except (EOFError, trio.BrokenResourceError):
        return
