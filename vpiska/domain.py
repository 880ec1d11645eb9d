"""The records vpiska keeps, as the store hands them over: plain frozen values, no behaviour."""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from datetime import UTC, datetime

UUID4 = re.compile(
    r"^[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-4[a-fA-F0-9]{3}-[89abAB][a-fA-F0-9]{3}-[a-fA-F0-9]{12}$"
)


def new_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_now_ms() -> datetime:
    """Now, to the millisecond: what every store can keep of a moment (BSON dates hold ms)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# UTF-16 surrogate code points: JSON's "\\ud800" decodes to one, but no UTF-8 text (the wire,
# sqlite, BSON, our logs) can carry it. A str holding one is not text anyone can store or send.
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_id(value: str) -> bool:
    return UUID4.fullmatch(value) is not None


def is_text(value: str) -> bool:
    """True if `value` is a sequence of Unicode scalar values (no lone surrogates)."""
    return value.isascii() or _SURROGATE.search(value) is None


def is_place(coordinates: Coordinates) -> bool:
    """True if both coordinates are finite doubles: JSON has no NaN or Infinity."""
    return math.isfinite(coordinates.x) and math.isfinite(coordinates.y)


@dataclasses.dataclass(frozen=True)
class Coordinates:
    x: float
    y: float


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a valid token says the caller is (vpiska/auth.py reads it from the token): what a
    room knows of a member, without the token machinery."""

    user_id: str
    name: str
    image_id: str  # "" when the user has no image, as in the token


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    name: str
    phone: str
    password_hash: str
    image_id: str | None = None
    phone_code: str = "+7"


@dataclasses.dataclass(frozen=True)
class Media:
    id: str
    name: str
    content_type: str
    size: int
    last_modified: datetime


@dataclasses.dataclass(frozen=True)
class EventMedia:
    id: str
    content_type: str


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    user_id: str
    user_name: str
    user_image_id: str
    message: str
    # When the server stored the line (UTC, whole milliseconds); None for lines stored before
    # vpiska kept it. Not part of a line's equality: what a line says is who said what.
    sent_at: datetime | None = dataclasses.field(default=None, compare=False)
    # The id a v2 client gave the line (`chat/`), so a resend is stored once; None otherwise.
    client_id: str | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Event:
    id: str
    owner_id: str
    name: str
    address: str
    coordinates: Coordinates
    created_at: datetime
    is_open: bool = True
    media: tuple[EventMedia, ...] = ()
    # Users the host removed with `ban: true`: their handshakes to the event are refused until
    # it closes. Kept with the event so that every node and every later owner refuses them.
    banned: frozenset[str] = frozenset()
