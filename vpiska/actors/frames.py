"""The server's WebSocket frames: `prefix/payload` text, encoded once per broadcast.

JSON payloads keep the older backend's key order, and integral coordinates are written as
integers (`10`, not `10.0`) as Go's encoder wrote them, so clients that parse strictly see no
difference.
"""

from __future__ import annotations

import json
from typing import Any

from vpiska.domain import ChatMessage, Coordinates

CLOSE_EVENT = "closeEvent/"

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
                  coordinates: Coordinates) -> str:
    payload = {"eventId": event_id, "name": name, "address": address, "usersCount": users_count,
               "coordinates": coordinates_json(coordinates)}
    return "eventUpdated/" + _encode(payload)


def chat_message(message: ChatMessage) -> str:
    return "chatMessage/" + _encode(chat_json(message))


def media_added(media_id: str) -> str:
    return "mediaAdded/" + media_id


def media_removed(media_id: str) -> str:
    return "mediaRemoved/" + media_id
