"""The JSON shapes of the wire contract, shared by HTTP answers and WebSocket frames.

One module, so an event's coordinates or a chat line look the same in `events/get`, in
`events/range` and in the `eventUpdated/` and `chatMessage/` frames. Key order is the older
backend's, and integral coordinates are written as integers (`10`, not `10.0`) as Go's encoder
wrote them, so clients that parse strictly see no difference.

Every encoder here refuses NaN and infinities (`allow_nan=False`): they are not JSON, and a
strict client parser would reject the whole answer. Values are validated where they come in
(vpiska/domain.py); a non-finite number reaching this module is a bug, and raises.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia

encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def number(value: float) -> float | int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def coordinates_json(c: Coordinates) -> dict[str, Any]:
    return {"x": number(c.x), "y": number(c.y)}


def chat_json(m: ChatMessage) -> dict[str, str]:
    return {"userId": m.user_id, "userName": m.user_name, "userImageId": m.user_image_id,
            "message": m.message}


def media_json(m: EventMedia) -> dict[str, str]:
    """An event's media as `eventResponse` lists it and as a `mediaAdded/` frame carries it:
    the older backend's MediaInfo, `id` then `contentType`."""
    return {"id": m.id, "contentType": m.content_type}


def chat_json_v2(m: ChatMessage, seq: int) -> dict[str, Any]:
    """A line as v2 shows it (API.md, "Lines with an identity"): `seq` is its 1-based place."""
    return {**chat_json(m), "seq": seq, "sentAt": None if m.sent_at is None else moment(m.sent_at)}


def moment(when: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`: `2026-12-07T10:00:00.123Z`."""
    utc = when.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def event_json(event: Event, users_count: int, chat: list[ChatMessage]) -> dict[str, Any]:
    """API.md's `eventResponse`."""
    return {
        "id": event.id,
        "ownerId": event.owner_id,
        "name": event.name,
        "address": event.address,
        "coordinates": coordinates_json(event.coordinates),
        "usersCount": users_count,
        "media": [media_json(m) for m in event.media],
        "chatMessages": [chat_json(line) for line in chat],
    }


def event_text(event: Event, users_count: int, chat: tuple[str, ...]) -> str:
    """API.md's `eventResponse` as JSON text, with chat lines already encoded (each one's
    JSON object text, as in its `chatMessage/` frame): nothing is encoded twice."""
    head = encode(event_json(event, users_count, []))
    assert head.endswith('"chatMessages":[]}')
    return f"{head[:-2]}{','.join(chat)}]}}"


def spot_text(event_id: str, name: str, x: float, y: float) -> tuple[str, str]:
    """An `events/range` entry as the JSON text before and after its usersCount, the one field
    that changes while the event stays put. Cached by value, so never stale: the entries of a
    busy map are encoded once, not on every request."""
    return _spot_text(event_id, name, x, y)


@functools.lru_cache(maxsize=1 << 16)
def _spot_text(event_id: str, name: str, x: float, y: float) -> tuple[str, str]:
    head = encode({"id": event_id, "name": name})
    tail = encode(coordinates_json(Coordinates(x, y)))
    return f'{head[:-1]},"usersCount":', f',"coordinates":{tail}}}'


def event_updated_json(event: Event, users_count: int) -> dict[str, Any]:
    """The payload of an `eventUpdated/` frame."""
    return {"eventId": event.id, "name": event.name, "address": event.address,
            "usersCount": users_count, "coordinates": coordinates_json(event.coordinates)}
