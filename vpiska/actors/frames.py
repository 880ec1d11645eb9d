"""The server's WebSocket frames: `prefix/payload` text, encoded once per broadcast.

A broadcast hands one Frame to every member. Its `wire` form (the complete WebSocket frame:
header and UTF-8 payload) is built on first use and shared, so a frame for a thousand members
is encoded once, not a thousand times.

JSON payloads keep the older backend's key order, and integral coordinates are written as
integers (`10`, not `10.0`) as Go's encoder wrote them, so clients that parse strictly see no
difference.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from vpiska.domain import ChatMessage, Coordinates


class Frame:
    __slots__ = ("text", "_wire")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    def __repr__(self) -> str:
        return f"Frame({self.text[:60]!r})"

    @property
    def wire(self) -> bytes:
        """The frame as a server sends it: FIN + text opcode, unmasked length, payload."""
        if self._wire is None:
            payload = self.text.encode()
            size = len(payload)
            if size < 126:
                header = struct.pack("!BB", 0x81, size)
            elif size < 65536:
                header = struct.pack("!BBH", 0x81, 126, size)
            else:
                header = struct.pack("!BBQ", 0x81, 127, size)
            self._wire = header + payload
        return self._wire


CLOSE_EVENT = Frame("closeEvent/")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def number(value: float) -> float | int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def coordinates_json(c: Coordinates) -> dict[str, Any]:
    return {"x": number(c.x), "y": number(c.y)}


def chat_json(m: ChatMessage) -> dict[str, str]:
    return {"userId": m.user_id, "userName": m.user_name, "userImageId": m.user_image_id,
            "message": m.message}


def event_updated(event_id: str, name: str, address: str, users_count: int,
                  coordinates: Coordinates) -> Frame:
    payload = {"eventId": event_id, "name": name, "address": address, "usersCount": users_count,
               "coordinates": coordinates_json(coordinates)}
    return Frame("eventUpdated/" + _encode(payload))


def chat_message(message: ChatMessage) -> Frame:
    return Frame("chatMessage/" + _encode(chat_json(message)))


def media_added(media_id: str) -> Frame:
    return Frame("mediaAdded/" + media_id)


def media_removed(media_id: str) -> Frame:
    return Frame("mediaRemoved/" + media_id)
